-- Every place an item was seen. An item is keyed by its content (items.item_id), so the
-- same tile in two scenes (a scene acquired twice, a mosaic and its parts, uniform water
-- or cloud in different places) or the same report in two files is one item; before this
-- table it kept only the last place. A sighting is one (item, file, place in the file,
-- footprint): a georeferenced tile is where it is, so each footprint reaches the export.
CREATE TABLE item_sightings (
    sighting_id INTEGER PRIMARY KEY,
    item_id     TEXT NOT NULL REFERENCES items (item_id) ON DELETE CASCADE,
    source      TEXT NOT NULL,               -- the file (canonical path since this migration)
    locator     TEXT NOT NULL DEFAULT '',    -- 'tile x,y,w,h', 'row 12', 'line 3'; '' for a whole file
    geometry    TEXT NOT NULL DEFAULT '',    -- GeoJSON geometry in WGS84; '' when not georeferenced
    last_run_id INTEGER REFERENCES runs (run_id), -- the last run that saw the item here
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    UNIQUE (item_id, source, locator, geometry)
);
CREATE INDEX item_sightings_source ON item_sightings (source);
CREATE INDEX item_sightings_run ON item_sightings (last_run_id);

-- Existing items keep the one place they had, with the last run that saw them.
INSERT INTO item_sightings (item_id, source, locator, geometry, last_run_id, first_seen, last_seen)
SELECT i.item_id, i.source, COALESCE(i.locator, ''), COALESCE(i.geometry, ''),
       (SELECT MAX(p.run_id) FROM predictions p WHERE p.item_id = i.item_id),
       i.first_seen, i.last_seen
FROM items i;
