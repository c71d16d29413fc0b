//! Durable state: the database (SQLite, or PostgreSQL shared by several nodes), the in-memory
//! copy of every bucket, the one write path, and the repositories that hold every other SQL
//! statement.

pub mod availability;
pub mod bounds;
pub mod db;
pub mod devices;
pub mod expiry;
pub mod firmware;
pub mod keys;
pub mod pairing;
pub mod pg;
pub mod presets;
pub mod repos;
pub mod sql;
pub mod store;
mod writer;

pub use store::{Change, CommitError, Committed, Event, Origin, Outcome, Settings, Store, StoreError};
