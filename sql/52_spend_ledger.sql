-- The spend ledger (migration 0014, docs/spend-limits.md): chatd.spend_ledger
-- holds the recorded spend per (user, UTC day, organization), kept by
-- triggers in the same transaction as every write of
-- messages.total_cost_micros, whoever the writer is.
--
--   _spend_ledger_add          add a delta to one ledger row (upsert)
--   _spend_ledger_trigger      messages: INSERT, UPDATE OF total_cost_micros /
--                              created_at / chat_id, DELETE
--   _spend_ledger_chat_delete  chats: BEFORE DELETE subtracts the chat's
--                              messages (their cascade delete finds no chat)
--   rebuild_spend_ledger       recompute the ledger (or a day range) from
--                              the messages; owner-only
--
-- Concurrent cost writes of one user on one day serialize on one ledger row
-- for the rest of their transactions (docs/benchmarks.md measures it).

-- Adds p_micros and p_messages to the ledger row of the chat's owner and
-- organization on the UTC day of p_at. Nothing when p_micros is NULL (an
-- unpriced message). A chat that no longer exists adds nothing (see
-- _spend_ledger_chat_delete).
CREATE OR REPLACE FUNCTION chatd._spend_ledger_add(
    p_chat_id uuid,
    p_at timestamptz,
    p_micros bigint,
    p_messages integer
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF p_micros IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO chatd.spend_ledger AS l (user_id, day, organization_id, spent_micros, priced_messages)
    SELECT c.owner_id, (p_at AT TIME ZONE 'UTC')::date, c.organization_id, p_micros, p_messages
    FROM chatd.chats AS c
    WHERE c.id = p_chat_id
    ON CONFLICT (user_id, day, organization_id) DO UPDATE
        SET
            spent_micros = l.spent_micros + excluded.spent_micros,
            priced_messages = l.priced_messages + excluded.priced_messages;
END
$$;

-- Row trigger of chatd.messages: moves the old cost out of the ledger and
-- the new cost in. SECURITY DEFINER: the trigger is deferred to commit (see
-- below), which runs as the committing login (a worker or app role without
-- rights on the ledger), no longer inside the SECURITY DEFINER function that
-- wrote the message; a trigger function cannot be called directly. Soft deletes (deleted = true) do not fire it: they keep
-- their cost. An update that changes none of cost, created_at and chat_id
-- writes nothing.
CREATE OR REPLACE FUNCTION chatd._spend_ledger_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND OLD.total_cost_micros IS NOT DISTINCT FROM NEW.total_cost_micros
        AND OLD.created_at = NEW.created_at
        AND OLD.chat_id = NEW.chat_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM chatd._spend_ledger_add(OLD.chat_id, OLD.created_at, -OLD.total_cost_micros, -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM chatd._spend_ledger_add(NEW.chat_id, NEW.created_at, NEW.total_cost_micros, 1);
    END IF;
    RETURN NULL;
END
$$;

-- Deferred to commit (a constraint trigger, INITIALLY DEFERRED): every cost
-- write of a user on a day updates the same ledger row, and a row lock is
-- held until commit, so an immediate trigger made concurrent finishes of
-- one user wait for each other's whole transaction (a finish_turns batch of
-- 32 turns included). Deferred, the lock is taken at commit and held only
-- for the commit itself: dispatch of one busy user went from about 800 to
-- about 1,100 turns/s on the bench machine (docs/benchmarks.md). Still in
-- the writing transaction: the ledger and the messages commit together.
-- Within that transaction the ledger does not show the write until commit
-- (or SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE). Constraint
-- triggers cannot be CREATE OR REPLACEd: dropped and created again, in the
-- transaction that applies this file.
DROP TRIGGER IF EXISTS messages_spend_ledger ON chatd.messages;
CREATE CONSTRAINT TRIGGER messages_spend_ledger
AFTER INSERT OR DELETE OR UPDATE OF total_cost_micros, created_at, chat_id ON chatd.messages
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION chatd._spend_ledger_trigger();

-- Row trigger of chatd.chats, BEFORE DELETE: subtracts the spend of the
-- chat's priced messages, which the cascade then deletes (their own trigger
-- no longer finds the chat). chatd's own delete_chat is a soft delete; this
-- covers a DBA's hard delete. The deferred ledger writes of this transaction
-- run first (SET CONSTRAINTS ... IMMEDIATE fires them now, while the chat
-- still exists): a message priced earlier in the same transaction is added
-- before it is subtracted, instead of never added and still subtracted.
CREATE OR REPLACE FUNCTION chatd._spend_ledger_chat_delete()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE;
    UPDATE chatd.spend_ledger AS l
    SET
        spent_micros = l.spent_micros - d.spent,
        priced_messages = l.priced_messages - d.n
    FROM (
        SELECT (m.created_at AT TIME ZONE 'UTC')::date AS day, sum(m.total_cost_micros) AS spent, count(*) AS n
        FROM chatd.messages AS m
        WHERE m.chat_id = OLD.id AND m.total_cost_micros IS NOT NULL
        GROUP BY 1
    ) AS d
    WHERE l.user_id = OLD.owner_id AND l.organization_id = OLD.organization_id AND l.day = d.day;
    RETURN OLD;
END
$$;

CREATE OR REPLACE TRIGGER chats_spend_ledger_delete
BEFORE DELETE ON chatd.chats
FOR EACH ROW EXECUTE FUNCTION chatd._spend_ledger_chat_delete();

-- Recomputes the ledger from chatd.messages for the UTC days in
-- [p_from, p_to) (NULL: unbounded on that side; both NULL: everything), and
-- returns the number of ledger rows written. For restores and bulk loads
-- that bypass triggers, and for a batched backfill (one call per month).
-- Takes a SHARE ROW EXCLUSIVE lock on chatd.spend_ledger first, so cost
-- writes wait for it (and it for them) and none is lost or counted twice;
-- the messages are read by a later statement, after the lock. Refused under
-- REPEATABLE READ (its snapshot may predate the lock). p_from >= p_to is
-- CD007. Owner-only (sql/95_grants.sql).
CREATE OR REPLACE FUNCTION chatd.rebuild_spend_ledger(
    p_from date DEFAULT NULL,
    p_to date DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_from date := coalesce(p_from, '-infinity'::date);
    v_to date := coalesce(p_to, 'infinity'::date);
    v_rows bigint;
BEGIN
    IF v_from >= v_to THEN
        RAISE EXCEPTION 'invalid day range [%, %): the start must be before the end', p_from, p_to
        USING ERRCODE = 'CD007';
    END IF;
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'chatd.rebuild_spend_ledger cannot run under REPEATABLE READ'
        USING
            ERRCODE = 'invalid_transaction_state',
            HINT = 'Use READ COMMITTED (the default) or SERIALIZABLE.';
    END IF;
    LOCK TABLE chatd.spend_ledger IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM chatd.spend_ledger AS l WHERE l.day >= v_from AND l.day < v_to;
    INSERT INTO chatd.spend_ledger (user_id, day, organization_id, spent_micros, priced_messages)
    SELECT
        c.owner_id,
        (m.created_at AT TIME ZONE 'UTC')::date AS day,
        c.organization_id,
        sum(m.total_cost_micros) AS spent_micros,
        count(*) AS priced_messages
    FROM chatd.messages AS m
    INNER JOIN chatd.chats AS c ON m.chat_id = c.id
    WHERE
        m.total_cost_micros IS NOT NULL
        AND m.created_at >= (v_from::timestamp AT TIME ZONE 'UTC')
        AND m.created_at < (v_to::timestamp AT TIME ZONE 'UTC')
    GROUP BY 1, 2, 3;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

COMMENT ON FUNCTION chatd.rebuild_spend_ledger(date, date) IS
'Recomputes chatd.spend_ledger from the messages for the UTC days in [p_from, p_to) (NULL: unbounded); '
'returns the rows written. Locks the ledger against cost writes while it runs. Owner-only.';
