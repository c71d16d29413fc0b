//! Pure types and rules: serials, buckets and their wire forms, sync decisions, commands.

pub mod access;
pub mod bucket;
pub mod command;
pub mod device_body;
pub mod key;
pub mod lock;
pub mod preset;
pub mod schedule;
pub mod serial;
pub mod sync;
pub mod time;
pub mod v3;
