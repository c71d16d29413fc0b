//! The software version each thermostat reports, and the v3 profile it selects.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use super::sql::{Db, on_db};
use crate::domain::time::now_ms;
use crate::domain::v3::Profile;
use crate::domain::v3::profile::{self, Forced, Overrides, Reason, VersionSource};

/// Versions remembered at once: any caller can claim a serial at `/nest/entry`, so made-up
/// serials must not grow the table without end (a thermostat past it still gets its profile
/// from its request header or its device bucket).
const MAX_REPORTED: usize = 10_000;

/// Longest version string kept (real ones look like `4.3.3` or `5.9.4-5`).
const MAX_VERSION_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub version: String,
    pub source: VersionSource,
}

#[derive(sqlx::FromRow)]
struct Row {
    serial: String,
    software_version: String,
    source: String,
}

impl Row {
    fn into_reported(self) -> Option<(String, Reported)> {
        Some((self.serial, Reported { version: self.software_version, source: self.source.parse().ok()? }))
    }
}

pub struct Firmware {
    db: Db,
    forced: Forced,
    overrides: Overrides,
    reported: RwLock<HashMap<String, Reported>>,
    /// The profile last logged per serial, so each choice and each change is logged once.
    logged: Mutex<HashMap<String, Profile>>,
}

impl Firmware {
    pub async fn load(db: Db, forced: Forced, overrides: Overrides) -> anyhow::Result<Self> {
        let rows: Vec<Row> = on_db!(&db, pool => sqlx::query_as("SELECT serial, software_version, source FROM roost_firmware")
            .fetch_all(pool)
            .await)?;
        let reported = rows.into_iter().filter_map(Row::into_reported).collect();
        Ok(Self { db, forced, overrides, reported: RwLock::new(reported), logged: Mutex::new(HashMap::new()) })
    }

    /// Reads the stored report of `serial` again (another node may have stored a newer one).
    pub async fn reload(&self, serial: &str) -> Result<(), sqlx::Error> {
        let row: Option<Row> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT serial, software_version, source FROM roost_firmware WHERE serial = $1",
        )
        .bind(serial)
        .fetch_optional(pool)
        .await)?;
        if let (Some((serial, reported)), Ok(mut r)) = (row.and_then(Row::into_reported), self.reported.write()) {
            r.insert(serial, reported);
        }
        Ok(())
    }

    /// The stored report of `serial`.
    pub fn reported(&self, serial: &str) -> Option<Reported> {
        self.reported.read().ok()?.get(serial).cloned()
    }

    /// Stores a reported version unless a more trusted source already said otherwise (the entry
    /// form beats the request header). Writes only when something changed.
    pub async fn report(&self, serial: &str, version: &str, source: VersionSource) -> Result<(), sqlx::Error> {
        let version = version.trim();
        if version.is_empty() || version.len() > MAX_VERSION_LEN {
            return Ok(());
        }
        let new = Reported { version: version.to_string(), source };
        match self.reported(serial) {
            Some(old) if old == new || old.source > source => return Ok(()),
            Some(_) => {}
            // Bounded like the devices themselves: made-up serials cannot grow the table.
            None if self.reported.read().map_or(0, |r| r.len()) >= MAX_REPORTED => return Ok(()),
            None => {}
        }
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO roost_firmware (serial, software_version, source, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT(serial) DO UPDATE SET software_version = excluded.software_version, \
             source = excluded.source, updated_at = excluded.updated_at",
        )
        .bind(serial)
        .bind(&new.version)
        .bind(source.as_str())
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        tracing::info!(%serial, software_version = %new.version, source = source.as_str(), "thermostat software version");
        if let Ok(mut r) = self.reported.write() {
            r.insert(serial.to_string(), new);
        }
        Ok(())
    }

    /// The v3 profile of `serial`: its override, the forced profile, else the version it
    /// reported (stored, else `live_header`, else `bucket_version`, the device bucket's
    /// `current_version`), else 4.3. Logged when first chosen and whenever it changes.
    pub fn profile(&self, serial: &str, live_header: Option<&str>, bucket_version: Option<&str>) -> Profile {
        let stored = self.reported(serial);
        let reported = stored
            .as_ref()
            .map(|r| (r.version.as_str(), r.source))
            .or(live_header.map(|v| (v, VersionSource::Header)))
            .or(bucket_version.map(|v| (v, VersionSource::DeviceBucket)));
        let (chosen, reason) = profile::select(serial, self.forced, &self.overrides, reported);
        if let Ok(mut logged) = self.logged.lock() {
            if logged.insert(serial.to_string(), chosen) != Some(chosen) {
                tracing::info!(
                    %serial,
                    profile = chosen.as_str(),
                    reason = reason.as_str(),
                    software_version = reported.map(|(v, _)| v),
                    "v3 profile selected"
                );
            }
        }
        if reason == Reason::Unknown {
            tracing::debug!(%serial, "no software version known: v3 profile 4.3");
        }
        chosen
    }

    /// Removes what is stored about a deleted device.
    pub async fn forget(&self, serial: &str) -> Result<(), sqlx::Error> {
        on_db!(&self.db, pool => sqlx::query("DELETE FROM roost_firmware WHERE serial = $1").bind(serial).execute(pool).await.map(|r| r.rows_affected()))?;
        self.forget_cached(serial);
        Ok(())
    }

    /// Drops what this process remembers of a deleted device.
    pub fn forget_cached(&self, serial: &str) {
        if let Ok(mut r) = self.reported.write() {
            r.remove(serial);
        }
        if let Ok(mut l) = self.logged.lock() {
            l.remove(serial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = crate::state::db::open(&dir.path().join("t.sqlite")).await.unwrap();
        (dir, Db::Sqlite(pool))
    }

    #[tokio::test]
    async fn reports_are_ranked_stored_and_reloaded() {
        let (_dir, pool) = open().await;
        let f = Firmware::load(pool.clone(), Forced::Auto, Overrides::default()).await.unwrap();
        let s = "02AA01AC12345678";
        assert_eq!(f.profile(s, None, None), Profile::V43, "unknown: 4.3");
        assert_eq!(f.profile(s, None, Some("4.0.6")), Profile::V40, "the device bucket's version");
        f.report(s, "4.0.6", VersionSource::Header).await.unwrap();
        f.report(s, "4.3.3", VersionSource::Entry).await.unwrap();
        f.report(s, "4.0.6", VersionSource::Header).await.unwrap();
        assert_eq!(f.reported(s), Some(Reported { version: "4.3.3".into(), source: VersionSource::Entry }));
        assert_eq!(f.profile(s, Some("4.0.6"), Some("4.0.6")), Profile::V43, "the entry form wins");
        f.report(s, "  ", VersionSource::Entry).await.unwrap();
        assert_eq!(f.reported(s).unwrap().version, "4.3.3", "blank reports are ignored");

        let again = Firmware::load(pool.clone(), Forced::Auto, Overrides::default()).await.unwrap();
        assert_eq!(again.reported(s), f.reported(s), "survives a restart");
        let forced = Firmware::load(pool.clone(), Forced::All(Profile::V40), "SIM0000000000001:4.3".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(forced.profile(s, None, None), Profile::V40);
        assert_eq!(forced.profile("SIM0000000000001", None, Some("4.0.6")), Profile::V43);

        f.forget(s).await.unwrap();
        let after = Firmware::load(pool, Forced::Auto, Overrides::default()).await.unwrap();
        assert_eq!(after.reported(s), None);
    }
}
