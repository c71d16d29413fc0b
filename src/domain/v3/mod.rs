//! The v3 transport of firmware 4.3.3 and 4.0.6 (spec `v3-firmware.md`): its bodies parsed
//! into the entries every dialect shares, and its responses rendered per firmware profile.
//! No sync rule lives here: what to write, send or hold is the sync engine's decision.

pub mod json;
pub mod parse;
pub mod profile;
pub mod render;

pub use profile::{Profile, Shape};
