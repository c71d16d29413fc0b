//! Durable state: SQLite, the in-memory copy of every bucket, the one write path, and the
//! repositories that hold every other SQL statement.

pub mod availability;
pub mod bounds;
pub mod db;
pub mod devices;
pub mod expiry;
pub mod firmware;
pub mod keys;
pub mod pairing;
pub mod presets;
pub mod repos;
pub mod store;
mod writer;

pub use store::{Change, CommitError, Committed, Event, Origin, Outcome, Settings, Store, StoreError};
