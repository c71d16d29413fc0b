//! Durable state: SQLite, the in-memory copy of every bucket, and the one write path.

pub mod availability;
pub mod bounds;
pub mod db;
pub mod devices;
pub mod firmware;
pub mod keys;
pub mod pairing;
pub mod presets;
pub mod store;
mod writer;

pub use store::{Applied, Change, Event, Op, Origin, Outcome, Store, StoreError};
