-- Undo 0001: drop the whole chatd schema. Repeatable definitions in sql/
-- live in this schema too and go with it; the migrator forgets their
-- checksums so the next `chatd migrate` re-applies them.

DROP SCHEMA chatd CASCADE;
