//! A subscribe held open: it waits for the committed changes of its device and asks the sync
//! engine ([`HoldState::push`]) which of them must go out. Every dialect holds this way; only
//! what it writes when woken differs.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::bucket::Bucket;
use crate::domain::sync::{Committed, HoldState};
use crate::hub::Subscription;

pub struct Held {
    subscription: Subscription,
    hold: HoldState,
    shutdown: CancellationToken,
}

impl Held {
    /// `subscription` must have been registered before the state `hold` was planned against
    /// was read, so no change committed in between is missed.
    pub fn new(subscription: Subscription, hold: HoldState, shutdown: CancellationToken) -> Self {
        Self { subscription, hold, shutdown }
    }

    pub fn serial(&self) -> &str {
        self.subscription.serial()
    }

    /// The buckets to push once a change for this device must go out; `None` when the hold
    /// ends first: at `until`, at shutdown, or when the hub ended this subscribe (a newer one
    /// of the same device took its place, or the device was deleted).
    pub async fn next_push(&mut self, until: Instant) -> Option<Vec<(String, Arc<Bucket>)>> {
        loop {
            let change = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep_until(until) => return None,
                change = self.subscription.rx.next() => change?,
            };
            let mut changes = vec![change];
            while let Ok(more) = self.subscription.rx.try_recv() {
                changes.push(more);
            }
            let committed: Vec<Committed<'_>> =
                changes.iter().map(|c| Committed { origin: c.origin, buckets: &c.buckets }).collect();
            let pushed = self.hold.push(&committed);
            if !pushed.is_empty() {
                return Some(pushed);
            }
        }
    }
}
