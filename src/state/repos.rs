//! Repositories: every SQL statement outside the one write path (buckets, pending commands and
//! the journal, written by `writer`) and the pairing tables (`pairing`).

use serde::Serialize;

use super::sql::{Db, on_db};
use super::store::StoreError;
use crate::domain::time::now_ms;

/// Journal rows kept for event-stream replay.
const JOURNAL_KEEP: i64 = 100_000;
/// Most points one history request returns.
pub const MAX_POINTS: i64 = 20_000;

/// One history sample: what the chart draws.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Point {
    pub at: i64,
    pub current_temperature: Option<f64>,
    pub target_temperature: Option<f64>,
    pub target_temperature_low: Option<f64>,
    pub target_temperature_high: Option<f64>,
    pub humidity: Option<f64>,
    pub mode: Option<String>,
    pub heating: bool,
    pub cooling: bool,
    pub fan: bool,
    /// Auxiliary or emergency heat (heat pumps); also counted in `heating`.
    pub aux: bool,
}

/// `roost_history`: temperature and heating samples per thermostat.
pub struct History {
    db: Db,
}

impl History {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn record(&self, serial: &str, point: &Point) -> Result<(), StoreError> {
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO roost_history (serial, at_ms, current_temperature, target_temperature, target_temperature_low,
             target_temperature_high, humidity, mode, heating, cooling, fan, aux)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(serial)
        .bind(point.at)
        .bind(point.current_temperature)
        .bind(point.target_temperature)
        .bind(point.target_temperature_low)
        .bind(point.target_temperature_high)
        .bind(point.humidity)
        .bind(&point.mode)
        .bind(point.heating)
        .bind(point.cooling)
        .bind(point.fan)
        .bind(point.aux)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Points of a serial since `since` (ms), oldest first.
    pub async fn points(&self, serial: &str, since: i64) -> Result<Vec<Point>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT at_ms AS at, current_temperature, target_temperature, target_temperature_low, target_temperature_high,
             humidity, mode, heating, cooling, fan, aux FROM roost_history WHERE serial = $1 AND at_ms >= $2
             ORDER BY at_ms LIMIT $3",
        )
        .bind(serial)
        .bind(since)
        .bind(MAX_POINTS)
        .fetch_all(pool)
        .await)?)
    }

    /// The last point of a serial before `at` (ms): what held when a time window starts.
    pub async fn point_before(&self, serial: &str, at: i64) -> Result<Option<Point>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT at_ms AS at, current_temperature, target_temperature, target_temperature_low, target_temperature_high,
             humidity, mode, heating, cooling, fan, aux FROM roost_history WHERE serial = $1 AND at_ms < $2
             ORDER BY at_ms DESC LIMIT 1",
        )
        .bind(serial)
        .bind(at)
        .fetch_optional(pool)
        .await)?)
    }

    /// Removes history older than `days` and journal rows beyond what replay keeps. Returns
    /// how many history rows went.
    pub async fn prune(&self, days: f64) -> Result<u64, StoreError> {
        let cutoff = now_ms() - (days * 86_400_000.0) as i64;
        let history = on_db!(&self.db, pool => {
            let history =
                sqlx::query("DELETE FROM roost_history WHERE at_ms < $1").bind(cutoff).execute(pool).await?.rows_affected();
            sqlx::query("DELETE FROM roost_changes WHERE id <= (SELECT MAX(id) FROM roost_changes) - $1")
                .bind(JOURNAL_KEEP)
                .execute(pool)
                .await?;
            history
        });
        Ok(history)
    }
}

/// `weather`: upstream answers cached per location.
pub struct WeatherCache {
    db: Db,
}

impl WeatherCache {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
    }

    /// When the cached answer was fetched (ms) and its JSON text.
    pub async fn get(&self, postal: &str, country: &str) -> Result<Option<(i64, Option<String>)>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT \"fetchedAt\", data FROM weather WHERE \"postalCode\" = $1 AND country = $2",
        )
        .bind(postal)
        .bind(country)
        .fetch_optional(pool)
        .await)?)
    }

    /// Stores an answer, keeping the `keep` most recently fetched locations.
    pub async fn put(&self, postal: &str, country: &str, data: &str, keep: i64) -> Result<(), StoreError> {
        on_db!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO weather (\"postalCode\", country, \"fetchedAt\", data) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (\"postalCode\", country) DO UPDATE SET \"fetchedAt\" = excluded.\"fetchedAt\", data = excluded.data",
            )
            .bind(postal)
            .bind(country)
            .bind(now_ms())
            .bind(data)
            .execute(pool)
            .await?;
            sqlx::query(
                "DELETE FROM weather WHERE (\"postalCode\", country) NOT IN
                 (SELECT \"postalCode\", country FROM weather ORDER BY \"fetchedAt\" DESC LIMIT $1)",
            )
            .bind(keep)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

/// `integrations`: settings clients hand over (the reference keeps its MQTT broker here).
pub struct Integrations {
    db: Db,
}

impl Integrations {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
    }

    /// The newest enabled MQTT configuration (JSON text).
    pub async fn mqtt(&self) -> Result<Option<String>, StoreError> {
        let config: Option<Option<String>> = on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT config FROM integrations WHERE type = 'mqtt' AND enabled = 1 ORDER BY \"updatedAt\" DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await)?;
        Ok(config.flatten())
    }

    /// Stores `user`'s MQTT configuration. Returns whether it was new.
    pub async fn set_mqtt(&self, user: &str, config: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let existed: Option<i64> = on_db!(&self.db, pool => {
            let existed: Option<i64> =
                sqlx::query_scalar("SELECT \"createdAt\" FROM integrations WHERE \"userId\" = $1 AND type = 'mqtt'")
                    .bind(user)
                    .fetch_optional(pool)
                    .await?;
            sqlx::query(
                "INSERT INTO integrations (\"userId\", type, enabled, config, \"createdAt\", \"updatedAt\") VALUES ($1, 'mqtt', 1, $2, $3, $4)
                 ON CONFLICT (\"userId\", type) DO UPDATE SET enabled = 1, config = excluded.config, \"updatedAt\" = excluded.\"updatedAt\"",
            )
            .bind(user)
            .bind(config)
            .bind(now)
            .bind(now)
            .execute(pool)
            .await?;
            existed
        });
        Ok(existed.is_none())
    }
}

/// One journaled change, as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct JournalRow {
    pub id: i64,
    pub serial: String,
    pub origin: String,
    pub object_keys: String,
    pub created_at: i64,
    pub event: Option<String>,
    pub detail: Option<String>,
}

/// Reads `roost_changes` (the writer appends to it).
pub struct JournalReader {
    db: Db,
}

impl JournalReader {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
    }

    /// The lowest and highest id kept.
    pub async fn bounds(&self) -> Result<(Option<i64>, Option<i64>), StoreError> {
        Ok(
            on_db!(&self.db, pool => sqlx::query_as("SELECT MIN(id), MAX(id) FROM roost_changes").fetch_one(pool).await)?,
        )
    }

    /// Every change after `id`, in order.
    pub async fn after(&self, id: i64) -> Result<Vec<JournalRow>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT id, serial, origin, object_keys, created_at, event, detail FROM roost_changes WHERE id > $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(pool)
        .await)?)
    }
}
