-- Commands a thermostat has not confirmed yet, one record (JSON) per bucket: which fields wait,
-- the thermostat's last reported values (what expiry writes back), and what was sent.
CREATE TABLE roost_pending (
    serial TEXT NOT NULL,
    object_key TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (serial, object_key)
);
