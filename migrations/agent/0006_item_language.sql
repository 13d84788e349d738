-- The language a report is written in (ISO 639-3, src/language.rs), detected when the
-- report is stored; NULL for tiles and for reports too short or mixed to tell. Reports
-- stored before this migration are detected again the next time they are analysed.
ALTER TABLE items ADD COLUMN language TEXT;
CREATE INDEX items_language ON items (language) WHERE language IS NOT NULL;
