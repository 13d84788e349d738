-- Drift windows broken down by the detected language of their items (src/drift.rs):
-- JSON [{"language": "hat", "items": 30, "novel": 2}, ...]; '[]' for tiles and for windows
-- scored before this migration.
ALTER TABLE drift_windows ADD COLUMN languages TEXT NOT NULL DEFAULT '[]';
