//! Black-box tests over real HTTP: roost on port 0 with a fresh database (SQLite, or PostgreSQL
//! with `ROOST_TEST_POSTGRES`), driven the way a thermostat drives it.

mod access;
mod bad_input;
mod cluster;
mod commands;
mod control;
mod delivery;
mod detached;
mod events;
mod exhaustion;
mod helpers;
mod history;
mod logs;
mod metrics;
mod mqtt;
mod mqtt_support;
mod pairing;
mod persistence;
mod presets;
mod prometheus;
mod put;
mod routes;
mod security;
mod setup;
mod subscribe;
mod tls;
mod v1;
mod v3;
mod v3_sync;
