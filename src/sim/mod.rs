//! A simulated thermostat that behaves like a flashed Nest on the wire: it boots through entry,
//! uploads its full state, keeps a subscribe open, applies pushes, acknowledges setpoints, and
//! PUTs its own changes. Tests, demos and the load benchmark drive roost through it.

pub mod bench;
pub mod cli;
pub mod device;
pub mod fixture;
pub mod fleet;
pub mod observe;
mod stamped;
pub mod v3;

pub use crate::http_client as http;
pub use device::{Thermostat, ThermostatState};
pub use v3::{V3State, V3Thermostat};
