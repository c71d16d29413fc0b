//! Fan-out of committed changes: wake-ups for held subscribes of a serial, and a bounded
//! feed for other consumers (event stream, MQTT, history).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_channel::mpsc;
use tokio::sync::broadcast;

use crate::state::Change;

/// Pushes a held subscribe may have queued before it is considered stuck and ended.
const SUBSCRIBE_QUEUE: usize = 16;
/// Changes buffered for feed consumers; one that falls further behind is told it lagged.
const FEED_CAPACITY: usize = 4096;

struct Held {
    id: u64,
    tx: mpsc::Sender<Arc<Change>>,
}

/// Changes are delivered in id order even though their commits finish on different threads,
/// so an event-stream client resuming from id N has seen everything up to N.
struct Sequencer {
    next: i64,
    waiting: BTreeMap<i64, Arc<Change>>,
}

/// A change id that never arrives (its commit task died) holds later ones back at most this far.
const MAX_OUT_OF_ORDER: usize = 1024;

pub struct Hub {
    order: Mutex<Sequencer>,
    held: Mutex<HashMap<String, VecDeque<Held>>>,
    next_id: AtomicU64,
    max_per_serial: usize,
    feed: broadcast::Sender<Arc<Change>>,
}

/// A registered subscribe. Dropping it unregisters it.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<Change>>,
    id: u64,
    serial: String,
    hub: Arc<Hub>,
}

impl Subscription {
    pub fn serial(&self) -> &str {
        &self.serial
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.serial, self.id);
    }
}

impl Hub {
    pub fn new(max_per_serial: usize) -> Arc<Self> {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Arc::new(Self {
            order: Mutex::new(Sequencer { next: 1, waiting: BTreeMap::new() }),
            held: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_per_serial: max_per_serial.max(1),
            feed,
        })
    }

    /// The id the next committed change will carry (set once the journal is read).
    pub fn start_ids_at(&self, next: i64) {
        if let Ok(mut order) = self.order.lock() {
            order.next = next;
        }
    }

    /// Registers a held subscribe for `serial`. Past the per-device limit the oldest is ended
    /// (its queue closes, so it finishes with the terminal chunk).
    pub fn subscribe(self: &Arc<Self>, serial: &str) -> Subscription {
        // One per held subscribe, thousands at once: this channel allocates per message rather
        // than a block up front, about 200 bytes against tokio's 800. Its capacity counts
        // one slot for the sender.
        let (tx, rx) = mpsc::channel(SUBSCRIBE_QUEUE - 1);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut held) = self.held.lock() {
            let list = held.entry(serial.to_string()).or_default();
            while list.len() >= self.max_per_serial {
                list.pop_front();
            }
            list.push_back(Held { id, tx });
        }
        Subscription { rx, id, serial: serial.to_string(), hub: self.clone() }
    }

    fn remove(&self, serial: &str, id: u64) {
        if let Ok(mut held) = self.held.lock() {
            if let Some(list) = held.get_mut(serial) {
                list.retain(|h| h.id != id);
                if list.is_empty() {
                    held.remove(serial);
                }
            }
        }
    }

    /// Held subscribes of one serial.
    pub fn held_count(&self, serial: &str) -> usize {
        self.held.lock().map(|h| h.get(serial).map_or(0, VecDeque::len)).unwrap_or(0)
    }

    /// All held subscribes, and how many serials have at least one.
    pub fn held_totals(&self) -> (usize, usize) {
        self.held.lock().map(|h| (h.values().map(VecDeque::len).sum(), h.len())).unwrap_or((0, 0))
    }

    /// Ends every held subscribe of a serial (used when the device is deleted).
    pub fn end_serial(&self, serial: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(serial);
        }
    }

    /// The id of the last change delivered in order (0 before any).
    pub fn last_delivered(&self) -> i64 {
        self.order.lock().map_or(0, |order| order.next - 1)
    }

    pub fn feed(&self) -> broadcast::Receiver<Arc<Change>> {
        self.feed.subscribe()
    }

    /// Publishes a committed change, in id order.
    pub fn publish(&self, change: Arc<Change>) {
        let Ok(mut order) = self.order.lock() else { return };
        if change.id < order.next {
            // Already past it (only after a stall was skipped): deliver rather than drop.
            self.deliver(change);
            return;
        }
        order.waiting.insert(change.id, change);
        if order.waiting.len() > MAX_OUT_OF_ORDER {
            if let Some(first) = order.waiting.keys().next().copied() {
                tracing::warn!(missing = order.next, "a change never arrived; delivering later ones");
                order.next = first;
            }
        }
        loop {
            let next = order.next;
            let Some(change) = order.waiting.remove(&next) else { break };
            order.next += 1;
            self.deliver(change);
        }
    }

    /// Publishes a change all of whose predecessors were published already (the PostgreSQL
    /// follower reads them in id order), so ids missing from the journal are not waited for.
    pub fn publish_next(&self, change: Arc<Change>) {
        if let Ok(mut order) = self.order.lock() {
            order.next = order.next.max(change.id);
        }
        self.publish(change);
    }

    /// A device's own writes are not pushed back to it; a held subscribe whose queue is full is
    /// ended so it resubscribes and catches up by timestamps.
    fn deliver(&self, change: Arc<Change>) {
        if change.origin.wakes_device() && !change.buckets.is_empty() {
            if let Ok(mut held) = self.held.lock() {
                if let Some(list) = held.get_mut(&change.serial) {
                    list.retain_mut(|h| h.tx.try_send(change.clone()).is_ok());
                    if list.is_empty() {
                        held.remove(&change.serial);
                    }
                }
            }
        }
        let _ = self.feed.send(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::bucket::Bucket;
    use crate::domain::sync::Origin;
    use futures_util::StreamExt;

    fn change(serial: &str, id: i64, origin: Origin) -> Arc<Change> {
        let bucket = Bucket { revision: id, timestamp: id, value: Default::default(), updated_at: id };
        Arc::new(Change {
            id,
            serial: serial.to_string(),
            origin,
            buckets: vec![(format!("shared.{serial}"), Arc::new(bucket))],
            pending: Vec::new(),
            deleted: false,
            event: None,
            at_ms: id,
        })
    }

    #[tokio::test]
    async fn a_held_subscribe_queues_sixteen_pushes_and_is_ended_at_the_seventeenth() {
        let hub = Hub::new(4);
        let mut held = hub.subscribe("A");
        for id in 1..=SUBSCRIBE_QUEUE as i64 {
            hub.publish(change("A", id, Origin::Command));
        }
        assert_eq!(hub.held_count("A"), 1, "sixteen queued pushes keep it held");
        hub.publish(change("A", 17, Origin::Command));
        assert_eq!(hub.held_count("A"), 0, "the seventeenth ends it");
        let mut ids = Vec::new();
        while let Some(change) = held.rx.next().await {
            ids.push(change.id);
        }
        assert_eq!(ids, (1..=16).collect::<Vec<_>>(), "what was queued arrives, then the end");
    }

    #[tokio::test]
    async fn a_device_write_does_not_wake_its_own_subscribe_and_others_serials_are_apart() {
        let hub = Hub::new(4);
        let mut a = hub.subscribe("A");
        let mut b = hub.subscribe("B");
        hub.publish(change("A", 1, Origin::Device));
        hub.publish(change("B", 2, Origin::Command));
        assert!(a.rx.try_recv().is_err(), "the device's own write is not pushed back");
        assert_eq!(b.rx.next().await.map(|c| c.id), Some(2));
    }
}
