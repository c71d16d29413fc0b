//! PostgreSQL (`DATABASE_URL=postgres://…`): one database that several roost nodes share.
//!
//! Every decision that must hold across nodes is taken inside a PostgreSQL transaction:
//! - a write to a thermostat's state locks its row in `roost_devices` (`FOR UPDATE`) and plans
//!   against state that is current under that lock (`commit`);
//! - change ids come from the counter row `roost_change_counter`, updated inside the committing
//!   transaction, so ids follow commit order: once id N is visible, every lower id is too, and
//!   an event stream never skips one that is still in flight;
//! - the device limit is counted under an advisory lock (`claim_device`);
//! - `NOTIFY` (sent at commit) wakes every node's follower, which reads the new journal rows
//!   and fans them out locally (`follow`);
//! - one node, holding an advisory lock on a dedicated connection, runs what must happen once
//!   per change rather than once per node: MQTT and the history recorder (`leader`).

pub(crate) mod commit;
pub mod follow;
pub mod leader;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use super::store::StoreError;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per node (the listener and the leader hold one more each).
const POOL_SIZE: u32 = 16;

/// The shared database, and the names this deployment uses in it. Several deployments may
/// share one database in different schemas (`search_path`): channel and lock keys are derived
/// from the schema, so they never wake or block each other.
pub struct Cluster {
    pub pool: PgPool,
    options: PgConnectOptions,
    /// `NOTIFY` channel of committed changes.
    pub channel: String,
    /// Advisory lock held by the leader.
    leader_key: i64,
    /// Advisory lock serialising new claims under the device limit.
    devices_key: i64,
}

/// What a commit reads under the serial's row lock.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeviceRow {
    /// Bumped (from the sequence `roost_generation`) by every write of the thermostat's state: a node
    /// whose copy carries the same value holds current state.
    pub generation: i64,
    /// Versions given to a device that lists bare keys (JSON `{"key": [revision, timestamp]}`).
    pub sent: Option<String>,
    pub structure_sent: bool,
    pub counted: bool,
    /// Taken from the sequence under the lock: the `generation` a write in this transaction
    /// gives the row (unused when nothing is written).
    pub next_generation: i64,
}

impl Cluster {
    /// Connects, applies the migrations and reads the schema's names. Errors never repeat the
    /// URL (it may hold a password).
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a usable PostgreSQL URL: {e}"))?
            .application_name("roost");
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .context("connecting to PostgreSQL (DATABASE_URL)")?;
        let schema: Option<String> =
            sqlx::query_scalar("SELECT current_schema()").fetch_one(&pool).await.context("reading the schema")?;
        let schema = schema.context(
            "PostgreSQL has no schema to create roost's tables in: the search_path of DATABASE_URL names none that exists",
        )?;
        MIGRATOR.run(&pool).await.context("applying database migrations")?;
        super::db::purge_corrupted_keys(&super::sql::Db::Postgres(pool.clone())).await?;
        // The first subscribe after a start carries the structure bucket (`DeviceState`): a
        // node starting counts as a start for every thermostat.
        sqlx::query(
            "UPDATE roost_devices SET structure_sent = FALSE, generation = nextval('roost_generation') WHERE structure_sent",
        )
        .execute(&pool)
        .await?;
        let (leader_key, devices_key, channel_key): (i64, i64, i64) = sqlx::query_as(
            "SELECT hashtext('roost.leader.' || $1)::bigint, hashtext('roost.devices.' || $1)::bigint,
                    hashtext('roost.changes.' || $1)::bigint",
        )
        .bind(&schema)
        .fetch_one(&pool)
        .await?;
        tracing::info!(%schema, "PostgreSQL storage");
        Ok(Self { pool, options, channel: format!("roost_changes_{:x}", channel_key as u32), leader_key, devices_key })
    }

    /// A connection outside the pool (the listener, the leader's lock).
    pub(crate) fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// Counts `serial` toward the device limit if it counts already or there is room.
    pub async fn claim_device(&self, serial: &str, max: usize) -> Result<bool, StoreError> {
        let counted: Option<bool> = sqlx::query_scalar("SELECT counted FROM roost_devices WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?;
        if counted == Some(true) {
            return Ok(true);
        }
        let mut tx = self.pool.begin().await?;
        let claimed = self.claim_device_in(&mut tx, serial, max).await?;
        if claimed {
            tx.commit().await?;
        }
        Ok(claimed)
    }

    /// The claim inside a caller's transaction, under the serial's row lock and the limit's
    /// advisory lock (held to the end of the transaction, so two nodes never both take the
    /// last place).
    pub(crate) async fn claim_device_in(
        &self,
        tx: &mut PgConnection,
        serial: &str,
        max: usize,
    ) -> Result<bool, sqlx::Error> {
        if lock_device(tx, serial).await?.counted {
            return Ok(true);
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(self.devices_key).execute(&mut *tx).await?;
        let held: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM roost_devices WHERE counted").fetch_one(&mut *tx).await?;
        if usize::try_from(held).unwrap_or(usize::MAX) >= max {
            return Ok(false);
        }
        sqlx::query("UPDATE roost_devices SET counted = TRUE WHERE serial = $1").bind(serial).execute(&mut *tx).await?;
        Ok(true)
    }

    pub async fn release_device(&self, serial: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE roost_devices SET counted = FALSE WHERE serial = $1")
            .bind(serial)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Serials that count toward the device limit.
    pub async fn counted_devices(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT serial FROM roost_devices WHERE counted").fetch_all(&self.pool).await?)
    }

    /// Whether `serial` counts toward the device limit.
    pub async fn counts(&self, serial: &str) -> Result<bool, StoreError> {
        let counted: Option<bool> = sqlx::query_scalar("SELECT counted FROM roost_devices WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?;
        Ok(counted == Some(true))
    }
}

/// Locks the thermostat's row for the rest of the transaction, creating it first if needed.
pub(crate) async fn lock_device(conn: &mut PgConnection, serial: &str) -> Result<DeviceRow, sqlx::Error> {
    const LOCK: &str =
        "SELECT generation, sent, structure_sent, counted, nextval('roost_generation') AS next_generation
         FROM roost_devices WHERE serial = $1 FOR UPDATE";
    if let Some(row) = sqlx::query_as(LOCK).bind(serial).fetch_optional(&mut *conn).await? {
        return Ok(row);
    }
    // A concurrent delete can remove the row between the insert and the lock: try again.
    for _ in 0..3 {
        sqlx::query("INSERT INTO roost_devices (serial) VALUES ($1) ON CONFLICT (serial) DO NOTHING")
            .bind(serial)
            .execute(&mut *conn)
            .await?;
        if let Some(row) = sqlx::query_as(LOCK).bind(serial).fetch_optional(&mut *conn).await? {
            return Ok(row);
        }
    }
    Err(sqlx::Error::RowNotFound)
}
