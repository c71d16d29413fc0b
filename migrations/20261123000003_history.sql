-- Samples of what the web UI charts: temperatures, setpoints and when heating or cooling ran.
CREATE TABLE roost_history (
    serial TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    current_temperature REAL,
    target_temperature REAL,
    target_temperature_low REAL,
    target_temperature_high REAL,
    humidity REAL,
    mode TEXT,
    heating INTEGER NOT NULL DEFAULT 0,
    cooling INTEGER NOT NULL DEFAULT 0,
    fan INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_roost_history_serial_at ON roost_history (serial, at_ms);
