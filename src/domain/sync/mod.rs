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
//! - `send` empty: nothing newer — **hold** (headers out, no body) until a push or the hold
//!   timeout.
//! - `send` not empty: **send now**, in order. With [`Batch::One`] it holds at most one bucket
//!   and `more` says others are newer too; they go out on the device's next polls (each poll
//!   plans again against what the device then lists). What `send` holds is recorded as sent by
//!   the same commit.
//! - `hold` ([`HoldState`]) decides pushes while the response is held.
//!
//! ## Pushes → [`HoldState::push`]
//! A held response receives each committed change of its device (oldest first; several may be
//! queued) and asks `push`: an empty result means "not for this device, keep holding"; a
//! non-empty one means "wake": the objects dialect writes them as one chunk; a v3 response
//! whose headers are already out ends with an empty body (the tickle) so the device
//! resubscribes and gets the bucket as an immediate answer; one without headers answers with
//! the first bucket. Whatever a held response actually **sends** it reports with a
//! [`SentRequest`] before writing it, so acknowledgements are counted and bare-key devices are
//! not sent the same version twice. A device's own writes never wake it.
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
pub use push::{Committed, HoldState};
pub use put::{PutReply, PutRequest, Receipt};
pub use server::{
    CommandRefusal, CommandReply, CommandRequest, DeleteRequest, DialogRequest, EntryRequest, ExpireRequest,
    ListingRequest, NotifyRequest, PairRequest, RecordRequest, SentRequest, pairing_buckets, pairing_keys,
    structure_id,
};
pub use subscribe::{Batch, Listed, Scope, SubscribeReply, SubscribeRequest};
pub use version::{Version, server_is_newer};
