-- Roles and ownership (DESIGN.md section 9, docs/security.md).
--
--   chatd_owner      NOLOGIN; owns schema chatd and every object in it, so
--                    SECURITY DEFINER functions run as chatd_owner, never as
--                    the (possibly superuser) role that ran the migration
--   chatd_worker     NOLOGIN; EXECUTE on the worker functions only
--   chatd_app        NOLOGIN; EXECUTE on the application functions only
--   chatd_reporting  NOLOGIN; SELECT on the spend reporting views only
--
-- Roles are cluster-global: they survive `chatd migrate down 0` (which drops
-- schema chatd) and are shared by every chatd database of the cluster. Login
-- roles are made members of these: CREATE ROLE w LOGIN IN ROLE chatd_worker.
--
-- The migrating role creates the missing roles when it may (superuser or
-- CREATEROLE); otherwise the migration stops and names the statements a DBA
-- must run (docs/security.md). It must be a member of chatd_owner (or a
-- superuser) to hand the objects over and to re-apply sql/ later; a
-- CREATEROLE migrator grants itself that membership. Grants: 95_grants.sql.

DO $roles$
DECLARE
    v_roles CONSTANT text [] := ARRAY['chatd_owner', 'chatd_worker', 'chatd_app', 'chatd_reporting'];
    v_role text;
    v_may_create boolean;
    v_missing text [] := '{}';
BEGIN
    SELECT r.rolsuper OR r.rolcreaterole INTO v_may_create
    FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user;

    FOREACH v_role IN ARRAY v_roles LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = v_role);
        IF NOT v_may_create THEN
            v_missing := v_missing || v_role;
            CONTINUE;
        END IF;
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            RAISE NOTICE 'chatd: created role %', v_role;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            -- another database of this cluster migrating at the same time
            -- created it first: roles are cluster-global
            NULL;
        END;
    END LOOP;

    IF cardinality(v_missing) > 0 THEN
        RAISE EXCEPTION 'chatd: role(s) % do not exist and % may not create roles', v_missing, current_user
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'chatd needs the NOLOGIN roles chatd_owner, chatd_worker, chatd_app and '
                      || 'chatd_reporting, and the migrating role must be a member of chatd_owner.',
                  HINT = format(
                      'A DBA runs once per cluster (docs/security.md): %s GRANT chatd_owner TO %I; '
                      || 'then run chatd migrate again.',
                      (SELECT string_agg(format('CREATE ROLE %I NOLOGIN;', m), ' ') FROM unnest(v_missing) AS m),
                      current_user
                  );
    END IF;

    -- A superuser role would turn every SECURITY DEFINER function (owner) or
    -- every connection (worker, app) into a superuser: refuse.
    SELECT string_agg(r.rolname, ', ') INTO v_role
    FROM pg_catalog.pg_roles AS r
    WHERE r.rolname = ANY (v_roles) AND (r.rolsuper OR r.rolbypassrls);
    IF v_role IS NOT NULL THEN
        RAISE EXCEPTION 'chatd: role(s) % must not be SUPERUSER or BYPASSRLS', v_role
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('A DBA runs: ALTER ROLE %s NOSUPERUSER NOBYPASSRLS;', v_role);
    END IF;

    -- The migrator must be able to act as chatd_owner: to hand objects over
    -- now and to CREATE OR REPLACE them (owned by chatd_owner) later.
    IF NOT pg_catalog.pg_has_role(current_user, 'chatd_owner', 'USAGE') THEN
        BEGIN
            EXECUTE format('GRANT chatd_owner TO %I', current_user);
            RAISE NOTICE 'chatd: granted chatd_owner to %', current_user;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'chatd: % must be a member of chatd_owner to migrate', current_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('A DBA runs: GRANT chatd_owner TO %I;', current_user);
        END;
    END IF;
END
$roles$;

-- Hand schema chatd and everything in it to chatd_owner. Runs on every
-- apply of sql/, so objects (re)created since, by migrations or by the
-- files above, are handed over too. Owned sequences and row types follow
-- their table; array types follow their element type.
DO $owner$
DECLARE
    v_sql text;
BEGIN
    IF (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'chatd')
        <> 'chatd_owner'::regrole THEN
        ALTER SCHEMA chatd OWNER TO chatd_owner;
    END IF;

    FOR v_sql IN
        SELECT format(
            'ALTER %s %s OWNER TO chatd_owner',
            CASE c.relkind
                WHEN 'v' THEN 'VIEW'
                WHEN 'm' THEN 'MATERIALIZED VIEW'
                WHEN 'S' THEN 'SEQUENCE'
                WHEN 'f' THEN 'FOREIGN TABLE'
                ELSE 'TABLE'
            END,
            c.oid::regclass
        )
        FROM pg_catalog.pg_class AS c
        WHERE
            c.relnamespace = 'chatd'::regnamespace
            AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
            AND c.relowner <> 'chatd_owner'::regrole
            -- a sequence owned by a column changes owner with its table
            AND NOT (c.relkind = 'S' AND EXISTS (
                SELECT 1 FROM pg_catalog.pg_depend AS d
                WHERE
                    d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
            ))
        UNION ALL
        SELECT format(
            'ALTER %s %s OWNER TO chatd_owner',
            CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
            p.oid::regprocedure
        )
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'chatd'::regnamespace AND p.proowner <> 'chatd_owner'::regrole
        UNION ALL
        SELECT format(
            'ALTER %s %s OWNER TO chatd_owner',
            CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
            t.oid::regtype
        )
        FROM pg_catalog.pg_type AS t
        WHERE
            t.typnamespace = 'chatd'::regnamespace
            AND t.typowner <> 'chatd_owner'::regrole
            -- row types of tables and views follow their relation
            AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = t.typrelid) = 'c')
            -- array and multirange types follow their element or range type
            AND t.typtype <> 'm'
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type AS e WHERE e.typarray = t.oid)
        UNION ALL
        SELECT format('ALTER OPERATOR %s OWNER TO chatd_owner', o.oid::regoperator)
        FROM pg_catalog.pg_operator AS o
        WHERE o.oprnamespace = 'chatd'::regnamespace AND o.oprowner <> 'chatd_owner'::regrole
    LOOP
        EXECUTE v_sql;
    END LOOP;
END
$owner$;
