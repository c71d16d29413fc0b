//! The follower: every node's changes, this node's included, reach the hub (held subscribes,
//! event streams, MQTT, history) through here, in id order. A commit wakes the follower of its
//! own node directly and every other node's by `NOTIFY`; the follower then reads the journal
//! past the last id it published. Because ids are handed out in commit order (see `pg`), what it
//! reads is never overtaken by a change still in flight, and a stream resumed on any node with
//! `Last-Event-ID` misses nothing. Another node's change is applied to this node's copy of the
//! thermostat's state before it is published, so a subscribe registered before it reads the
//! state either sees the change or is woken by it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::commit::{Body, parse_body};
use crate::domain::sync::{Event, Origin};
use crate::state::store::{Change, GENERATION_UNKNOWN, Store};

/// A lost notification (the listening connection dropped) delays a change at most this long.
const POLL: Duration = Duration::from_secs(1);
/// Journal rows read per query.
const BATCH: i64 = 512;

/// Called for each change another node made, after it was applied to this node's copy and
/// before it is published (to refresh what this node remembers beside the buckets).
pub type RemoteObserver = Arc<dyn Fn(Arc<Change>) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct Follower {
    cursor: Mutex<Cursor>,
    wake: Notify,
}

struct Cursor {
    /// The last id published.
    published: i64,
    /// Changes this node committed that are not published yet, and who waits for that.
    local: BTreeMap<i64, (Arc<Change>, oneshot::Sender<()>)>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    serial: String,
    origin: String,
    created_at: i64,
    event: Option<String>,
    detail: Option<String>,
    body: Option<String>,
}

impl Follower {
    pub(crate) fn new(published: i64) -> Arc<Self> {
        Arc::new(Self { cursor: Mutex::new(Cursor { published, local: BTreeMap::new() }), wake: Notify::new() })
    }

    /// A change this node committed: published with the others, in id order. The receiver
    /// hears once it is (at once when the journal brought it first and it is out already).
    pub(crate) fn committed(&self, change: Arc<Change>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut cursor) = self.cursor.lock() {
            if change.id > cursor.published {
                cursor.local.insert(change.id, (change, tx));
            }
        }
        self.wake.notify_one();
        rx
    }

    /// Follows the journal until `shutdown`.
    pub(crate) fn spawn(
        self: Arc<Self>,
        store: Arc<Store>,
        cluster: Arc<Cluster>,
        observer: Option<RemoteObserver>,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(listen(cluster.clone(), self.clone(), shutdown.clone()));
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.catch_up(&store, &cluster, observer.as_ref()).await {
                    tracing::warn!(error = %e, "could not read the change journal; retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
    }

    /// Publishes every change past the last one published.
    async fn catch_up(
        &self,
        store: &Store,
        cluster: &Cluster,
        observer: Option<&RemoteObserver>,
    ) -> Result<(), sqlx::Error> {
        loop {
            let after = self.cursor.lock().map_or(i64::MAX, |c| c.published);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, serial, origin, created_at, event, detail, body FROM roost_changes
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(BATCH)
            .fetch_all(&cluster.pool)
            .await?;
            let full = rows.len() as i64 == BATCH;
            for row in rows {
                let id = row.id;
                let mine = match self.cursor.lock() {
                    Ok(mut cursor) => cursor.local.remove(&id),
                    Err(_) => return Ok(()),
                };
                let waiter = match mine {
                    Some((change, published)) => {
                        store.hub.publish_next(change);
                        Some(published)
                    }
                    None => {
                        // Another node's change, or this node's read from the journal before its
                        // commit handed it over.
                        let change = Arc::new(apply_remote(store, row));
                        if let Some(observer) = observer {
                            observer(change.clone()).await;
                        }
                        store.hub.publish_next(change);
                        None
                    }
                };
                // Only once the change is published may its commit answer: a commit that handed
                // it over meanwhile is told here (and its copy is not published again).
                let late = match self.cursor.lock() {
                    Ok(mut cursor) => {
                        cursor.published = id;
                        let late = cursor.local.remove(&id);
                        cursor.local.retain(|other, _| *other > id);
                        late
                    }
                    Err(_) => return Ok(()),
                };
                for published in waiter.into_iter().chain(late.map(|(_, published)| published)) {
                    let _ = published.send(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// Holds a `LISTEN` connection and wakes the follower on every notification (and after the
/// connection was lost, when notifications may have been missed).
async fn listen(cluster: Arc<Cluster>, follower: Arc<Follower>, shutdown: CancellationToken) {
    let mut listener = loop {
        let attempt = async {
            let mut l = PgListener::connect_with(&cluster.pool).await?;
            l.listen(&cluster.channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            l = attempt => match l {
                Ok(l) => break l,
                Err(e) => tracing::warn!(error = %e, "cannot LISTEN for changes yet; polling the journal meanwhile"),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            n = listener.try_recv() => match n {
                Ok(Some(_)) => follower.wake.notify_one(),
                // Reconnected: notifications may have been lost meanwhile.
                Ok(None) => follower.wake.notify_one(),
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the LISTEN connection; reconnecting");
                    follower.wake.notify_one();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
            },
        }
    }
}

/// Another node's change: applied to this node's copy (when it is not newer already) and
/// turned into the change the hub publishes.
fn apply_remote(store: &Store, row: Row) -> Change {
    let body = row.body.as_deref().and_then(parse_body);
    let Row { id, serial, origin, created_at, event, detail, .. } = row;
    let origin = parse_origin(&origin);
    let event = event.as_deref().and_then(static_kind).map(|kind| Event {
        kind,
        detail: detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default(),
    });
    let Some(Body { prev, generation, mut delta, visible }) = body else {
        tracing::warn!(%serial, change = id, "a journal row without a readable body; the copy is read again at the next write");
        if let Some(slot) = store.slot(&serial) {
            slot.generation.store(GENERATION_UNKNOWN, Ordering::Release);
        }
        return Change {
            id,
            serial,
            origin,
            buckets: Vec::new(),
            pending: Vec::new(),
            deleted: false,
            event,
            at_ms: created_at,
        };
    };
    let slot = store.slot_or_create(&serial);
    let buckets = match slot.state.write() {
        Ok(mut state) => {
            let have = slot.generation();
            if generation > have || have == GENERATION_UNKNOWN {
                delta.apply(&mut state);
                // A copy that missed changes (those that write no journal row) is read again
                // before its next decision; what readers see is right either way.
                slot.generation.store(if prev == have { generation } else { GENERATION_UNKNOWN }, Ordering::Release);
            }
            if origin == Origin::Notify {
                state.buckets.iter().map(|(k, b)| (k.clone(), b.clone())).collect()
            } else {
                delta.writes.clone()
            }
        }
        Err(_) => delta.writes.clone(),
    };
    Change { id, serial, origin, buckets, pending: visible, deleted: delta.delete, event, at_ms: created_at }
}

fn parse_origin(origin: &str) -> Origin {
    match origin {
        "device" => Origin::Device,
        "command" => Origin::Command,
        "pairing" => Origin::Pairing,
        "notify" => Origin::Notify,
        _ => Origin::Server,
    }
}

/// Event kinds are a fixed vocabulary (`Event::kind` is static).
fn static_kind(kind: &str) -> Option<&'static str> {
    ["command", "availability", "pairing"].into_iter().find(|k| *k == kind)
}
