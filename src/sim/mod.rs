//! A simulated thermostat that behaves like a flashed Nest on the wire: it boots through entry,
//! uploads its full state, keeps a subscribe open, applies pushes, acknowledges setpoints, and
//! PUTs its own changes. Tests, demos and the load benchmark drive roost through it.

pub mod bench;
pub mod cli;
pub mod device;

pub use crate::http_client as http;
pub use device::{Thermostat, ThermostatState};
