-- The preset (away or eco) last asked for a structure: both enter the same manual eco on the
-- thermostat, so the buckets alone cannot tell them apart.
CREATE TABLE roost_presets (
    structure TEXT PRIMARY KEY NOT NULL,
    preset TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
-- Auxiliary / emergency heat ran (heat pumps), for runtime per stage.
ALTER TABLE roost_history ADD COLUMN aux INTEGER NOT NULL DEFAULT 0;
