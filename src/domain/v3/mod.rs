//! The v3 transport of firmware 4.3.3 and 4.0.6 (spec `v3-firmware.md`): its responses rendered
//! per firmware profile (its bodies are parsed by `domain::device_body`, like every dialect's).
//! No sync rule lives here: what to write, send or hold is the sync engine's decision.

pub mod json;
pub mod profile;
pub mod render;

pub use profile::{Profile, Shape};
