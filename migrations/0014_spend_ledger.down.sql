-- Undo 0014: the spend ledger, its trigger and its functions (sql/52_spend_ledger.sql).
DROP TRIGGER IF EXISTS messages_spend_ledger ON chatd.messages;
DROP TRIGGER IF EXISTS chats_spend_ledger_delete ON chatd.chats;
DROP FUNCTION IF EXISTS chatd._spend_ledger_trigger();
DROP FUNCTION IF EXISTS chatd._spend_ledger_chat_delete();
DROP FUNCTION IF EXISTS chatd._spend_ledger_add(uuid, timestamptz, bigint, integer);
DROP FUNCTION IF EXISTS chatd.rebuild_spend_ledger(date, date);
-- the two spend views read the ledger; sql/ recreates them on the next apply
DROP VIEW chatd.spend_by_user;
DROP VIEW chatd.spend_by_organization;
DROP TABLE chatd.spend_ledger;
