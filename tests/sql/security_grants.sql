-- Catalog tests of the grant model (sql/90_roles.sql, sql/95_grants.sql,
-- docs/security.md): roles, ownership, table and function privileges,
-- pinned search_path. Every check runs over the whole catalog, so a new
-- table, view or function fails here until its privileges were reviewed.
BEGIN;
SELECT plan(22);

-- The classification of every function in schema chatd: who may EXECUTE it
-- besides chatd_owner. A new function fails "every function is classified"
-- below: add it here, and to sql/95_grants.sql when chatd_worker,
-- chatd_app or chatd_reporting must call it ('owner' = internal, nobody
-- but chatd_owner).
CREATE TEMP TABLE expected_fn (signature text PRIMARY KEY, audience text NOT NULL);
INSERT INTO expected_fn (signature, audience) VALUES
-- worker interface (sql/40_worker.sql, 45_recovery.sql, 70_worker_settings.sql)
('chatd.acquire_chats(text,integer)', 'worker'),
('chatd.commit_tool_step(uuid,bigint,jsonb,jsonb,text,bigint)', 'worker'),
('chatd.commit_tool_results(uuid,bigint,jsonb)', 'worker'),
('chatd.turn_compaction(text,uuid,bigint,boolean,bigint)', 'worker'),
('chatd.commit_summary(uuid,bigint,bigint,jsonb,jsonb,text,bigint)', 'worker'),
('chatd.turn_history(text,uuid,bigint,bigint,integer)', 'worker'),
('chatd.heartbeat(text,uuid[],bigint[])', 'worker'),
('chatd.publish_parts(uuid,bigint,integer,jsonb)', 'worker'),
('chatd.finish_turn(uuid,bigint,jsonb,jsonb,text,bigint,jsonb,text)', 'worker'),
('chatd.finish_turns(jsonb)', 'worker'),
('chatd.save_interrupted_turn(uuid,bigint,jsonb,jsonb,text,bigint)', 'worker'),
('chatd.record_failure(uuid,bigint,jsonb,bigint)', 'worker'),
('chatd.release_chats(text,uuid[])', 'worker'),
('chatd.recover_stale_chats()', 'worker'),
('chatd.janitor()', 'worker'),
('chatd.worker_settings()', 'worker'),
-- application interface (sql/20_app_chats.sql, 22_app_delete.sql, 25_app_queue.sql, 30_snapshot.sql, 50_spend.sql)
('chatd.create_chat(uuid,uuid,jsonb,uuid,text,text,uuid,uuid,chatd.client_type,jsonb,text[],boolean)', 'app'),
('chatd.send_message(uuid,uuid,jsonb,text,uuid,jsonb)', 'app'),
('chatd.submit_tool_results(uuid,uuid,jsonb)', 'app'),
('chatd.interrupt_chat(uuid,uuid)', 'app'),
('chatd.edit_message(uuid,uuid,bigint,jsonb,uuid)', 'app'),
('chatd.delete_queued_message(uuid,uuid,bigint)', 'app'),
('chatd.promote_queued_message(uuid,uuid,bigint)', 'app'),
('chatd.archive_chat(uuid,uuid)', 'app'),
('chatd.unarchive_chat(uuid,uuid)', 'app'),
('chatd.set_chat_title(uuid,uuid,text)', 'app'),
('chatd.delete_chat(uuid,uuid)', 'app'),
('chatd.get_chat_snapshot(uuid,uuid,bigint,integer,boolean)', 'app'),
('chatd.get_messages_before(uuid,uuid,bigint,integer)', 'app'),
('chatd.get_stream_parts(uuid,uuid[],bigint[],integer[],integer)', 'app'),
('chatd.list_chats(uuid,uuid,boolean,integer,timestamp with time zone,uuid)', 'app'),
('chatd.usage_limit_status(uuid,uuid)', 'app'),
('chatd.list_models(uuid)', 'app'),
-- owner only: guards and triggers (sql/10_guards.sql, 15_notify.sql)
('chatd.status_transitions()', 'owner'),
('chatd.transition_allowed(chatd.chat_status,chatd.chat_status)', 'owner'),
('chatd.chats_guard()', 'owner'),
('chatd.chats_version()', 'owner'),
('chatd.chats_notify()', 'owner'),
('chatd.messages_notify()', 'owner'),
('chatd.queue_notify()', 'owner'),
('chatd.stream_parts_notify()', 'owner'),
-- owner only: internal helpers
('chatd._content(jsonb)', 'owner'),
('chatd._usable_model(uuid)', 'owner'),
('chatd._authorized_chat(uuid,uuid,boolean)', 'owner'),
('chatd._chat_channel(uuid)', 'owner'),
('chatd._user_channel(uuid)', 'owner'),
('chatd._short_error(jsonb)', 'owner'),
('chatd._error_hint(jsonb)', 'owner'),
('chatd._message_page(uuid,bigint,boolean,integer,bigint,boolean)', 'owner'),
('chatd._messages_after(uuid,bigint,boolean)', 'owner'),
('chatd._running_parts(uuid,bigint,boolean)', 'owner'),
('chatd._message_json(chatd.messages)', 'owner'),
('chatd._versioned_by_this_xact(xid,timestamp with time zone)', 'owner'),
('chatd._touch_chat(uuid)', 'owner'),
('chatd._lock_subtree(chatd.chats)', 'owner'),
('chatd._start_turn(uuid,uuid,bigint)', 'owner'),
('chatd._last_message_id(uuid)', 'owner'),
('chatd._turn_reset(chatd.chats,chatd.chat_status,boolean,jsonb,uuid,bigint,integer,integer,jsonb,timestamp with time zone)', 'owner'),
('chatd._enqueue(uuid,uuid,jsonb,uuid)', 'owner'),
('chatd._model_json(uuid)', 'owner'),
('chatd._worker_alive(text)', 'owner'),
('chatd._fenced_chat(uuid,bigint,text,text,text)', 'owner'),
('chatd._insert_turn_messages(chatd.chats,jsonb,jsonb,text,bigint,jsonb,chatd.message_visibility,text)', 'owner'),
('chatd._chat_error(jsonb)', 'owner'),
('chatd._check_worker_login(text)', 'owner'),
('chatd._fail_disabled_model_chats()', 'owner'),
('chatd._usage_tokens(uuid,jsonb)', 'owner'),
('chatd._reply_values(chatd.chats,jsonb,jsonb,bigint,text)', 'owner'),
('chatd._promote_queue_head(uuid)', 'owner'),
-- reporting: called by the spend views, which run functions as the reader
('chatd.resolve_spend_limit(uuid,uuid)', 'reporting'),
('chatd.spend_period_bounds(chatd.spend_period,timestamp with time zone)', 'reporting'),
-- reporting: the health report of `chatd check` (sql/60_health.sql)
('chatd.health()', 'reporting'),
-- owner only: spend internals (sql/50_spend.sql); admit_spend is called by
-- the application functions, usage_limit_status is the app's read
('chatd.message_cost_micros(uuid,bigint,bigint,bigint,bigint)', 'owner'),
('chatd.spend_in_period(uuid,timestamp with time zone,timestamp with time zone,uuid)', 'owner'),
('chatd.admit_spend(uuid,uuid)', 'owner'),
('chatd._max_tokens()', 'owner'),
('chatd._usage_limit_status(uuid,uuid)', 'owner'),
('chatd._lock_admissions(uuid[])', 'owner'),
('chatd._spend_limits_enabled()', 'owner'),
('chatd._spend_refusal(uuid,uuid,bigint)', 'owner'),
('chatd._usage_limit_error(jsonb)', 'owner'),
-- owner only: the spend ledger (sql/52_spend_ledger.sql); rebuild_spend_ledger
-- is run by a DBA after a restore or a bulk load
('chatd._spend_ledger_add(uuid,timestamp with time zone,bigint,integer)', 'owner'),
('chatd.rebuild_spend_ledger(date,date)', 'owner'),
('chatd._spend_ledger_trigger()', 'owner'),
('chatd._spend_ledger_chat_delete()', 'owner'),
-- owner only: administration, for the CLI run by a member of chatd_owner (sql/80_admin.sql)
('chatd._admin_is_uuid(text)', 'owner'),
('chatd.admin_resolve_identity(text,text,boolean)', 'owner'),
('chatd.admin_upsert_provider(text,chatd.provider_kind,text,text,boolean,text,boolean,text)', 'owner'),
('chatd.admin_upsert_model(text,text,text,integer,integer,numeric,numeric,numeric,numeric,boolean,boolean,integer,boolean)', 'owner'),
('chatd.admin_set_usage_limits(boolean,bigint,chatd.spend_period,boolean)', 'owner'),
('chatd.admin_set_user_limit(text,bigint)', 'owner'),
('chatd.admin_set_group_limit(text,text,bigint)', 'owner'),
-- owner only: MCP servers (sql/82_admin_mcp.sql); tool helpers (sql/35_tools.sql)
('chatd.admin_upsert_mcp_server(text,text,text,text,boolean)', 'owner'),
('chatd.admin_list_mcp_servers()', 'owner'),
('chatd.admin_remove_mcp_server(text)', 'owner'),
('chatd.admin_set_model_mcp_servers(text,text[])', 'owner'),
('chatd._tool_definitions(jsonb)', 'owner'),
('chatd._mcp_server_names(text[])', 'owner'),
('chatd._pending_tool_calls(uuid)', 'owner'),
('chatd._tool_results(uuid,jsonb,text[])', 'owner'),
('chatd._cancel_pending_calls(chatd.chats,text)', 'owner'),
('chatd._tool_loop_next(uuid)', 'owner'),
('chatd._turn_tools(uuid)', 'owner'),
-- sub-agents (sql/34_agents.sql), the stop of a turn (20_app_chats.sql), snapshot children and child hints
('chatd._spawn_agent_tool()', 'owner'),
('chatd._agent_depth(uuid)', 'owner'),
('chatd._agents_allowed(chatd.chats)', 'owner'),
('chatd._spawn_refusal(chatd.chats,jsonb,integer)', 'owner'),
('chatd._spawn_agents(chatd.chats,bigint)', 'owner'),
('chatd._agent_answer(uuid)', 'owner'),
('chatd.chats_agent_answer()', 'owner'),
('chatd._interrupt_agents(uuid)', 'owner'),
('chatd._stop_turn(chatd.chats,text)', 'owner'),
('chatd._children_json(uuid)', 'owner'),
('chatd._child_payload(chatd.chats)', 'owner'),
('chatd._newest_page(uuid,bigint,integer,bigint)', 'owner'),
-- context windows (sql/38_context.sql)
('chatd._message_tokens(chatd.message_role,jsonb,bigint,bigint)', 'owner'),
('chatd._context_window(uuid)', 'owner'),
('chatd.messages_tokens()', 'owner');

-- Every grantee of an ACL (NULL = the built-in default) except the owner.
CREATE TEMP TABLE fn AS
SELECT
    p.oid::regprocedure::text AS signature,
    p.prosecdef,
    p.proconfig,
    array(
        SELECT coalesce(nullif(a.grantee, 0)::regrole::text, 'PUBLIC')
        FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a
        WHERE a.grantee <> p.proowner
        ORDER BY 1
    ) AS grantees
FROM pg_proc AS p
WHERE p.pronamespace = 'chatd'::regnamespace;

-- roles -----------------------------------------------------------------------
SELECT is(
    (
        SELECT array_agg(r.rolname ORDER BY r.rolname)
        FROM pg_roles AS r
        WHERE
            r.rolname IN ('chatd_owner', 'chatd_worker', 'chatd_app', 'chatd_reporting')
            AND NOT r.rolsuper AND NOT r.rolbypassrls AND NOT r.rolcreaterole AND NOT r.rolcreatedb
    ),
    ARRAY['chatd_app', 'chatd_owner', 'chatd_reporting', 'chatd_worker']::name[],
    'the four chatd roles exist, none SUPERUSER, BYPASSRLS, CREATEROLE or CREATEDB'
);
SELECT ok(
    NOT (
        SELECT r.rolcanlogin
        FROM pg_roles AS r
        WHERE r.rolname = 'chatd_owner'
    ),
    'chatd_owner cannot log in (SECURITY DEFINER functions run as it)'
);
SELECT is(
    (
        SELECT array_agg(x.r ORDER BY x.r)
        FROM unnest(ARRAY['chatd_worker', 'chatd_app', 'chatd_reporting']) AS x (r)
        WHERE
            pg_has_role(x.r, 'chatd_owner', 'MEMBER')
            OR EXISTS (
                SELECT 1
                FROM unnest(ARRAY['chatd_worker', 'chatd_app', 'chatd_reporting']) AS y (r)
                WHERE y.r <> x.r AND pg_has_role(x.r, y.r, 'MEMBER')
            )
    ),
    NULL,
    'worker, app and reporting roles are members of neither chatd_owner nor each other'
);

-- ownership -------------------------------------------------------------------
SELECT is(
    (
        SELECT n.nspowner::regrole::text
        FROM pg_namespace AS n
        WHERE n.nspname = 'chatd'
    ),
    'chatd_owner',
    'schema chatd is owned by chatd_owner'
);
CREATE TEMP TABLE owned AS
SELECT
    c.oid::regclass::text AS what,
    c.relowner AS owner
FROM pg_class AS c
WHERE c.relnamespace = 'chatd'::regnamespace
UNION ALL
SELECT
    p.oid::regprocedure::text,
    p.proowner
FROM pg_proc AS p
WHERE p.pronamespace = 'chatd'::regnamespace
UNION ALL
SELECT
    t.oid::regtype::text,
    t.typowner
FROM pg_type AS t
WHERE t.typnamespace = 'chatd'::regnamespace
UNION ALL
SELECT
    o.oid::regoperator::text,
    o.oprowner
FROM pg_operator AS o
WHERE o.oprnamespace = 'chatd'::regnamespace;
SELECT is(
    array(
        SELECT o.what
        FROM owned AS o
        WHERE o.owner <> 'chatd_owner'::regrole
        ORDER BY 1
    ),
    '{}'::text[],
    'every table, view, sequence, index, function, type and operator in chatd is owned by chatd_owner '
    || '(not by the migrating role: a superuser-owned SECURITY DEFINER function is an escalation)'
);

-- tables, views, sequences ----------------------------------------------------
CREATE TEMP TABLE rel_grants AS
SELECT
    c.oid::regclass::text AS rel,
    c.relkind,
    a.grantee,
    a.privilege_type
FROM pg_class AS c
CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) AS a
WHERE
    c.relnamespace = 'chatd'::regnamespace
    AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    AND a.grantee <> c.relowner
UNION ALL
SELECT
    c.oid::regclass::text,
    c.relkind,
    a.grantee,
    a.privilege_type
FROM pg_class AS c
CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('s', c.relowner))) AS a
WHERE
    c.relnamespace = 'chatd'::regnamespace
    AND c.relkind = 'S'
    AND a.grantee <> c.relowner;
SELECT is(
    array(
        SELECT g.rel || ': ' || coalesce(nullif(g.grantee, 0)::regrole::text, 'PUBLIC') || ' ' || g.privilege_type
        FROM rel_grants AS g
        WHERE NOT (g.relkind = 'v' AND g.grantee = 'chatd_reporting'::regrole AND g.privilege_type = 'SELECT')
        ORDER BY 1
    ),
    '{}'::text[],
    'no table, sequence or view of chatd grants anything to anyone but its owner '
    || '(views: SELECT to chatd_reporting); review a new table''s grants in sql/95_grants.sql'
);
SELECT is(
    array(
        SELECT c.oid::regclass::text || '.' || a.attname
        FROM pg_attribute AS a
        INNER JOIN pg_class AS c ON a.attrelid = c.oid
        WHERE c.relnamespace = 'chatd'::regnamespace AND a.attacl IS NOT NULL
        ORDER BY 1
    ),
    '{}'::text[],
    'no column-level grants in chatd'
);
SELECT is(
    array(
        SELECT r.r || ' ' || c.oid::regclass::text
        FROM pg_class AS c
        CROSS JOIN unnest(ARRAY['chatd_worker', 'chatd_app', 'chatd_reporting', 'public']) AS r (r)
        WHERE
            c.relnamespace = 'chatd'::regnamespace
            AND c.relkind IN ('r', 'p', 'm', 'S', 'f')
            AND CASE
                WHEN c.relkind = 'S'
                    THEN has_sequence_privilege(r.r, c.oid, 'SELECT,UPDATE,USAGE')
                ELSE has_table_privilege(r.r, c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
                    OR has_any_column_privilege(r.r, c.oid, 'SELECT,INSERT,UPDATE,REFERENCES')
            END
        ORDER BY 1
    ),
    '{}'::text[],
    'chatd_worker, chatd_app, chatd_reporting and PUBLIC have no privilege on any chatd table or sequence'
);
SELECT is(
    array(
        SELECT r.r || ' ' || c.oid::regclass::text
        FROM pg_class AS c
        CROSS JOIN unnest(ARRAY['chatd_worker', 'chatd_app', 'public']) AS r (r)
        WHERE
            c.relnamespace = 'chatd'::regnamespace
            AND c.relkind = 'v'
            AND has_table_privilege(r.r, c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
        ORDER BY 1
    ),
    '{}'::text[],
    'the spend views (cross-tenant reports) are not readable by chatd_worker, chatd_app or PUBLIC'
);
SELECT is(
    array(
        SELECT c.relname::text
        FROM pg_class AS c
        WHERE
            c.relnamespace = 'chatd'::regnamespace
            AND c.relkind = 'v'
            AND NOT has_table_privilege('chatd_reporting', c.oid, 'SELECT')
        ORDER BY 1
    ),
    '{}'::text[],
    'chatd_reporting may SELECT every spend view'
);

-- schemas ---------------------------------------------------------------------
SELECT is(
    array(
        SELECT r.r || ' ' || p.p
        FROM unnest(ARRAY['chatd_worker', 'chatd_app', 'chatd_reporting', 'public']) AS r (r)
        CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) AS p (p)
        WHERE has_schema_privilege(r.r, 'chatd', p.p)
        ORDER BY 1
    ),
    ARRAY['chatd_app USAGE', 'chatd_reporting USAGE', 'chatd_worker USAGE'],
    'schema chatd: USAGE for the three roles, CREATE for none, nothing for PUBLIC'
);
SELECT is(
    array(
        SELECT r.r
        FROM unnest(ARRAY['chatd_worker', 'chatd_app', 'chatd_reporting', 'public']) AS r (r)
        WHERE
            has_schema_privilege(r.r, 'chatd_meta', 'USAGE,CREATE')
            OR EXISTS (
                SELECT 1
                FROM pg_class AS c
                WHERE
                    c.relnamespace = 'chatd_meta'::regnamespace
                    AND c.relkind = 'r'
                    AND has_table_privilege(r.r, c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE')
            )
        ORDER BY 1
    ),
    '{}'::text[],
    'the migration ledger (chatd_meta) is out of reach of the chatd roles and PUBLIC'
);

-- functions -------------------------------------------------------------------
SELECT is(
    array(
        SELECT f.signature
        FROM fn AS f
        WHERE f.signature NOT IN (SELECT e.signature FROM expected_fn AS e)
        ORDER BY 1
    ),
    '{}'::text[],
    'every function in chatd is classified: add a new function to expected_fn in '
    || 'tests/sql/security_grants.sql (worker, app, reporting or owner) and grant it in sql/95_grants.sql if needed'
);
SELECT is(
    array(
        SELECT e.signature
        FROM expected_fn AS e
        WHERE e.signature NOT IN (SELECT f.signature FROM fn AS f)
        ORDER BY 1
    ),
    '{}'::text[],
    'every classified function exists (update tests/sql/security_grants.sql after a rename or signature change)'
);
SELECT is(
    array(
        SELECT f.signature || ' -> ' || array_to_string(f.grantees, ',')
        FROM fn AS f
        INNER JOIN expected_fn AS e ON f.signature = e.signature
        WHERE
            f.grantees
            IS DISTINCT FROM (CASE WHEN e.audience = 'owner' THEN '{}'::text[] ELSE ARRAY['chatd_' || e.audience] END)
        ORDER BY 1
    ),
    '{}'::text[],
    'every function is executable by exactly chatd_owner and its audience (worker, app, reporting or nobody else; '
    || 'never PUBLIC)'
);
SELECT is(
    array(
        SELECT r.r || ' ' || f.signature
        FROM fn AS f
        INNER JOIN expected_fn AS e ON f.signature = e.signature
        CROSS JOIN unnest(ARRAY['chatd_worker', 'chatd_app', 'chatd_reporting']) AS r (r)
        WHERE has_function_privilege(r.r, f.signature, 'EXECUTE') <> (r.r = 'chatd_' || e.audience)
        ORDER BY 1
    ),
    '{}'::text[],
    'has_function_privilege agrees for every role (no EXECUTE through PUBLIC or inheritance)'
);
SELECT is(
    array(
        SELECT f.signature
        FROM fn AS f
        INNER JOIN expected_fn AS e ON f.signature = e.signature
        WHERE e.audience IN ('worker', 'app') AND NOT f.prosecdef
        ORDER BY 1
    ),
    '{}'::text[],
    'every worker and application function is SECURITY DEFINER (the roles cannot touch tables)'
);
SELECT is(
    array(
        SELECT f.signature
        FROM fn AS f
        WHERE
            f.prosecdef
            AND NOT coalesce(f.proconfig @> ARRAY['search_path=pg_catalog, chatd, pg_temp'], FALSE)
        ORDER BY 1
    ),
    '{}'::text[],
    'every SECURITY DEFINER function pins search_path = pg_catalog, chatd, pg_temp (pg_temp last: '
    || 'an unlisted pg_temp is searched first)'
);
SELECT is(
    array(
        SELECT f.signature
        FROM fn AS f
        WHERE
            NOT EXISTS (
                SELECT 1
                FROM unnest(f.proconfig) AS c (setting)
                WHERE
                    c.setting LIKE 'search_path=pg_catalog, %pg_temp'
                    AND c.setting NOT LIKE '%public%'
                    AND c.setting NOT LIKE '%$user%'
            )
        ORDER BY 1
    ),
    '{}'::text[],
    'every function in chatd pins search_path: pg_catalog first, pg_temp last, never public or $user'
);

-- defaults --------------------------------------------------------------------
SET LOCAL ROLE chatd_owner;
CREATE FUNCTION chatd.zz_security_probe() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE TYPE chatd.zz_security_probe_t AS ENUM ('a');
RESET ROLE;
SELECT ok(
    NOT has_function_privilege('public', 'chatd.zz_security_probe()', 'EXECUTE')
    AND NOT has_function_privilege('chatd_app', 'chatd.zz_security_probe()', 'EXECUTE')
    AND NOT has_function_privilege('chatd_worker', 'chatd.zz_security_probe()', 'EXECUTE'),
    'a function chatd_owner creates later is executable by nobody else (default privileges)'
);
SELECT ok(
    NOT has_type_privilege('public', 'chatd.zz_security_probe_t', 'USAGE'),
    'a type chatd_owner creates later is not usable by PUBLIC (default privileges)'
);
SELECT is(
    array(
        SELECT t.oid::regtype::text
        FROM pg_type AS t
        WHERE
            t.typnamespace = 'chatd'::regnamespace
            AND t.typtype IN ('e', 'd')
            AND t.typname <> 'zz_security_probe_t'
            AND EXISTS (
                SELECT 1
                FROM aclexplode(coalesce(t.typacl, acldefault('T', t.typowner))) AS a
                WHERE a.grantee = 0
            )
        ORDER BY 1
    ),
    '{}'::text[],
    'no chatd enum or domain is usable by PUBLIC'
);

SELECT * FROM finish();
ROLLBACK;
