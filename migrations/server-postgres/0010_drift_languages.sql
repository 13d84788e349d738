-- Drift windows broken down by the language of their items, as agents send them
-- (protocol::LanguageDrift): JSON [{"language": "hat", "items": 30, "novel": 2}, ...];
-- '[]' for tiles and for windows from agents older than the field.
ALTER TABLE drift_windows ADD COLUMN languages TEXT NOT NULL DEFAULT '[]';
