-- 0014 spend ledger (issue 15): recorded spend per (user, organization, UTC
-- day), so admission (chatd.admit_spend), usage_limit_status and the spend
-- views sum at most 31 day rows of a user instead of every message of the
-- period. The trigger chatd.messages_spend_ledger (sql/52_spend_ledger.sql)
-- keeps it in the same transaction as any write of
-- messages.total_cost_micros; chatd.rebuild_spend_ledger() recomputes it
-- from the messages (restores, bulk loads that bypass triggers).
--
-- user_id and organization_id are the owner and organization of the
-- message's chat; day is the UTC date of messages.created_at (spend belongs
-- to the period in which the message was created). Soft-deleted messages
-- keep their cost; a hard delete (chat deletion by cascade) subtracts it.
-- Rows are never removed by the trigger: a day whose spend went back to 0
-- keeps a zero row (harmless to every sum).
CREATE TABLE chatd.spend_ledger (
    user_id uuid NOT NULL,
    day date NOT NULL,
    organization_id uuid NOT NULL,
    spent_micros numeric NOT NULL DEFAULT 0,
    priced_messages bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, organization_id)
);

-- the spend views read one period of every organization. The table was
-- created just above and is empty: nothing to block, no CONCURRENTLY needed.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX spend_ledger_day_idx ON chatd.spend_ledger (day, organization_id);

-- Backfill. This statement reads the messages once and holds no lock
-- stronger than ACCESS SHARE on chatd.messages (writers proceed; the ledger
-- trigger does not exist yet inside this migration, it is created when sql/
-- is applied right after). On a large table a DBA may instead run this
-- migration with the INSERT removed and, once chatd is up, run
-- `SELECT chatd.rebuild_spend_ledger();` (or chatd.rebuild_spend_ledger(from,
-- to) per month, oldest first), which rebuilds the given day range under a
-- short per-range lock. Until then admission reads a ledger that lacks the
-- old rows: spend is under-counted, never over-counted.
INSERT INTO chatd.spend_ledger (user_id, day, organization_id, spent_micros, priced_messages)
SELECT
    c.owner_id,
    (m.created_at AT TIME ZONE 'UTC')::date AS day,
    c.organization_id,
    sum(m.total_cost_micros) AS spent_micros,
    count(*) AS priced_messages
FROM chatd.messages AS m
INNER JOIN chatd.chats AS c ON m.chat_id = c.id
WHERE m.total_cost_micros IS NOT NULL
GROUP BY 1, 2, 3;
