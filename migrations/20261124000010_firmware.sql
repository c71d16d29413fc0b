-- The software version each thermostat reported and where it was read (entry form or request
-- header): it picks the v3 response profile, and must survive a restart because a thermostat
-- calls /nest/entry only when it boots.
CREATE TABLE IF NOT EXISTS roost_firmware (
    serial TEXT PRIMARY KEY NOT NULL,
    software_version TEXT NOT NULL,
    source TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
