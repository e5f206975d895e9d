-- Grants (DESIGN.md section 9, docs/security.md). Runs after 90_roles.sql
-- on every apply of sql/, and reconciles: every privilege of PUBLIC and of
-- the chatd roles on schema chatd's objects is revoked, then exactly the
-- intended ones are granted again. So a new function or table is reachable
-- by nobody but chatd_owner until it is listed here; a function dropped
-- from a list loses its grant on the next migrate.
--
-- Neither chatd_worker nor chatd_app has any privilege on any table: every
-- read and write goes through the SECURITY DEFINER functions below, which
-- run as chatd_owner with a pinned search_path. Internal helpers (chatd._*),
-- trigger functions, the spend internals (admit_spend, resolve_spend_limit,
-- ...) and the admin_* functions of the CLI are executable by chatd_owner
-- only. tests/sql/security_grants.sql holds the same classification and
-- fails on any function that is not classified.

REVOKE ALL ON SCHEMA chatd FROM public;
GRANT USAGE ON SCHEMA chatd TO chatd_worker, chatd_app, chatd_reporting;

REVOKE ALL ON ALL TABLES IN SCHEMA chatd FROM public, chatd_worker, chatd_app, chatd_reporting;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA chatd FROM public, chatd_worker, chatd_app, chatd_reporting;
REVOKE ALL ON ALL ROUTINES IN SCHEMA chatd FROM public, chatd_worker, chatd_app, chatd_reporting;

-- Objects chatd_owner itself creates later (say, a migration that runs SET
-- ROLE chatd_owner) start with no PUBLIC privileges either. Per-schema
-- default privileges can only add, so these are chatd_owner's global ones.
ALTER DEFAULT PRIVILEGES FOR ROLE chatd_owner REVOKE EXECUTE ON FUNCTIONS FROM public;
ALTER DEFAULT PRIVILEGES FOR ROLE chatd_owner REVOKE USAGE ON TYPES FROM public;

DO $grants$
DECLARE
    -- sql/35_tools.sql, 38_context.sql, 40_worker.sql, 45_recovery.sql, 70_worker_settings.sql
    v_worker CONSTANT text [] := ARRAY[
        'acquire_chats', 'turn_history', 'heartbeat', 'publish_parts', 'finish_turn', 'finish_turns', 'save_interrupted_turn',
        'record_failure', 'release_chats', 'recover_stale_chats', 'janitor', 'worker_settings',
        'commit_tool_step', 'commit_tool_results', 'turn_compaction', 'commit_summary'
    ];
    -- sql/20_app_chats.sql, 22_app_delete.sql, 25_app_queue.sql, 30_snapshot.sql, 32_app_models.sql, 35_tools.sql, 50_spend.sql
    v_app CONSTANT text [] := ARRAY[
        'create_chat', 'send_message', 'interrupt_chat', 'edit_message', 'delete_queued_message',
        'promote_queued_message', 'archive_chat', 'unarchive_chat', 'set_chat_title', 'delete_chat',
        'get_chat_snapshot', 'get_messages_before', 'get_stream_parts', 'list_chats', 'usage_limit_status', 'list_models',
        'submit_tool_results'
    ];
    -- Functions the spend views call: a view runs its functions with the
    -- privileges of the reader, not of the view's owner (sql/50_spend.sql)
    -- (sql/50_spend.sql), and the health report of `chatd check` (sql/60_health.sql)
    v_reporting_fn CONSTANT text [] := ARRAY['spend_period_bounds', 'resolve_spend_limit', 'health'];
    -- sql/55_spend_views.sql: cross-tenant reports, so not chatd_app's
    v_reporting CONSTANT text [] := ARRAY[
        'spend_current_period', 'spend_by_organization', 'spend_by_user', 'spend_by_model',
        'models_without_prices'
    ];
    v_sql text;
    v_name text;
BEGIN
    -- Enum types: USAGE for the chatd roles only (arguments such as
    -- 'api'::chatd.client_type), nothing for PUBLIC.
    FOR v_sql IN
        SELECT format(
            'REVOKE ALL ON TYPE %1$s FROM PUBLIC; GRANT USAGE ON TYPE %1$s TO chatd_worker, chatd_app, chatd_reporting',
            t.oid::regtype
        )
        FROM pg_catalog.pg_type AS t
        WHERE
            t.typnamespace = 'chatd'::regnamespace
            AND t.typtype IN ('e', 'd')
    LOOP
        EXECUTE v_sql;
    END LOOP;

    FOR v_sql IN
        SELECT format(
            'GRANT EXECUTE ON FUNCTION %s TO %s',
            p.oid::regprocedure,
            CASE
                WHEN p.proname = ANY (v_worker) THEN 'chatd_worker'
                WHEN p.proname = ANY (v_app) THEN 'chatd_app'
                ELSE 'chatd_reporting'
            END
        )
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'chatd'::regnamespace AND p.proname = ANY (v_worker || v_app || v_reporting_fn)
    LOOP
        EXECUTE v_sql;
    END LOOP;

    FOREACH v_name IN ARRAY v_worker || v_app || v_reporting_fn LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_proc AS p
            WHERE p.pronamespace = 'chatd'::regnamespace AND p.proname = v_name
        ) THEN
            RAISE WARNING 'chatd grants: function chatd.% is listed in sql/95_grants.sql but does not exist', v_name;
        END IF;
    END LOOP;

    FOREACH v_name IN ARRAY v_reporting LOOP
        IF to_regclass('chatd.' || v_name) IS NULL THEN
            RAISE WARNING 'chatd grants: view chatd.% is listed in sql/95_grants.sql but does not exist', v_name;
        ELSE
            EXECUTE format('GRANT SELECT ON chatd.%I TO chatd_reporting', v_name);
        END IF;
    END LOOP;
END
$grants$;
