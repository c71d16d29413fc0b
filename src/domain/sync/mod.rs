//! The sync engine: the protocol's rules as pure planners, with no I/O. A reviewer can read
//! this module and know what roost does with every device request.
//!
//! # Contract
//!
//! A **request** (`PutRequest`, `SubscribeRequest`, `CommandRequest`, …) says what a caller
//! wants; it is a [`Planner`]. The store runs [`Planner::plan`] under the device's write lock
//! against its current [`DeviceState`] and a [`Context`] (clock, storage bounds, expiry), and commits
//! the returned [`Plan`] whole: the buckets in [`Plan::writes`] (revision and timestamp
//! already computed, [`version`]), the pending-command records, one journaled change with its
//! optional [`Event`]. Only after the commit is the change published and the plan's
//! [`Plan::reply`] handed back. A refusal writes nothing.
//!
//! Dialects (objects; v3 for firmware 4.3.3 and 4.0.6) only parse requests into these types and
//! render replies; they hold no sync rule.
//!
//! ## PUT → [`PutReply`]
//! One [`Receipt`] per entry that carried a value, in request order: the version to tell the
//! device, the [`Outcome`], and `behind` when the server holds a command the device has not
//! confirmed (the version is then just below the server's, so the command still reaches it).
//! `bucket` is the bucket as stored, for dialects that echo it. A PUT never wakes the device's
//! own held subscribes.
//!
//! ## Subscribe → [`SubscribeReply`]
//! - `send` empty: nothing newer — **hold** until a push or the hold timeout (the objects
//!   dialect and 4.3.3 send their headers at once; 4.0.6 gets nothing until there is data).
//! - `send` not empty: **send now**, in order. With [`Batch::One`] (v3) it holds at most one
//!   bucket and `more` says others are newer too; they go out on the device's next polls (each
//!   poll plans again against what the device then lists). What `send` holds is recorded as
//!   sent by the same commit. With [`Scope::Listed`] (v3) only listed keys are ever sent.
//! - A device listing bare keys (4.3.3) holds what it was last sent ([`DeviceState::sent`]):
//!   the first contact sends each bucket once, a PUT receipt counts as given for a bucket sent
//!   before, and polling again confirms what was sent.
//! - `hold` ([`HoldState`]) decides pushes while the response is held.
//!
//! ## Pushes → [`HoldState::push`]
//! A held response receives each committed change of its device (oldest first; several may be
//! queued) and asks `push`: an empty result means "not for this device, keep holding"; a
//! non-empty one means "wake". The objects dialect writes them as one chunk and keeps the
//! response open [`BATCH_WINDOW`] for further chunks. A v3 response whose headers are out
//! (4.3.3) ends with an empty body (the tickle) and records nothing: the device resubscribes
//! and gets the bucket as an immediate answer. One without headers (4.0.6) answers with the
//! first bucket alone. Whatever a held response actually **sends** it reports with a
//! [`SentRequest`] before writing it, so acknowledgements are counted and bare-key devices are
//! not sent the same version twice. A device's own writes never wake it.
//!
//! ## Restart and listing
//! `/nest/entry` is a restart ([`EntryRequest`]): what a bare-key device was given is
//! forgotten, and the buckets the answer carries inline (4.3.3's user and structure) count as
//! sent. A listing that carries values (4.0.6, [`ListingRequest`]) counts as sent too.
//!
//! ## Delivery
//! Commands stay pending until the thermostat confirms them; see [`delivery`].

pub mod bounds;
pub mod delivery;
pub mod plan;
pub mod push;
pub mod put;
mod report;
pub mod server;
pub mod subscribe;
pub mod version;

#[cfg(test)]
mod tests;

pub use delivery::{Expiry, Pending, PendingField};
pub use plan::{Buckets, Context, DeviceState, Event, Origin, Outcome, PendingMap, PendingUpdate, Plan, Planner};
pub use push::{BATCH_WINDOW, Committed, HoldState};
pub use put::{PutReply, PutRequest, Receipt};
pub use server::{
    CommandRefusal, CommandReply, CommandRequest, DeleteRequest, DialogRequest, EntryRequest, ExpireRequest,
    ListingRequest, NotifyRequest, PairRequest, RecordRequest, SentRequest, pairing_buckets, pairing_keys,
    structure_id,
};
pub use subscribe::{Batch, Listed, Scope, SubscribeReply, SubscribeRequest};
pub use version::{Version, server_is_newer};
