//! Leadership among the nodes sharing one database: whoever holds a session-level advisory
//! lock on a dedicated connection leads. The lock goes with the connection, so when the leader
//! dies (or loses the database) another node takes over at its next attempt.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// How often a follower tries for the lock, and the leader checks that it still holds it.
const CHECK: Duration = Duration::from_secs(1);

/// Campaigns until `shutdown`; the receiver says whether this node leads right now. The first
/// attempt is made before this returns, so a node that starts alone leads before it serves a
/// request (what it commits is then published to MQTT and recorded from the first change).
pub async fn spawn(cluster: Arc<Cluster>, shutdown: CancellationToken) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let mut first = match PgConnection::connect_with(cluster.options()).await {
        Ok(mut conn) => {
            match try_lock(&mut conn, cluster.leader_key).await {
                Ok(true) => {
                    tx.send_replace(true);
                    tracing::info!("this node leads: it publishes MQTT and records history for every node");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not try for the leadership yet; retrying"),
            }
            Some(conn)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach PostgreSQL to take part in leadership; retrying");
            None
        }
    };
    tokio::spawn(async move {
        let mut warned = first.is_none();
        loop {
            let conn = match first.take() {
                Some(conn) => Ok(conn),
                None => PgConnection::connect_with(cluster.options()).await,
            };
            match conn {
                Ok(conn) => {
                    warned = false;
                    campaign(conn, cluster.leader_key, &tx, &shutdown).await;
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot reach PostgreSQL to take part in leadership; retrying");
                }
                Err(_) => {}
            }
            if tx.send_replace(false) {
                tracing::warn!("no longer the leader: MQTT and history stop here until this node leads again");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CHECK) => {}
            }
        }
    });
    rx
}

async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(conn).await
}

/// Tries for the lock on `conn` and holds it while the connection lives. Returns when the
/// connection failed, or at shutdown (closing the connection releases the lock at once).
async fn campaign(mut conn: PgConnection, key: i64, tx: &watch::Sender<bool>, shutdown: &CancellationToken) {
    loop {
        let check = async {
            if *tx.borrow() {
                sqlx::query("SELECT 1").execute(&mut conn).await.map(|_| true)
            } else {
                try_lock(&mut conn, key).await
            }
        };
        match check.await {
            Ok(true) => {
                if !tx.send_replace(true) {
                    tracing::info!("this node leads: it publishes MQTT and records history for every node");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "lost the leadership connection");
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = conn.close().await;
                return;
            }
            _ = tokio::time::sleep(CHECK) => {}
        }
    }
}
