//! Owners (which user a thermostat is paired to) and entry keys (the 7-character pairing codes).

use std::collections::HashMap;
use std::sync::RwLock;

use sqlx::SqlitePool;

use crate::domain::time::now_ms;

/// The user that owns devices adopted without pairing, and that the web UI registers as.
pub const DEFAULT_USER: &str = "homeassistant";
/// The thermostat refuses a code that expires sooner than this.
pub const MIN_CODE_VALIDITY_MS: i64 = 30 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Paired,
    /// Has an unclaimed, unexpired entry key: may subscribe so pairing can complete.
    Pending,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EntryKey {
    pub code: String,
    pub serial: String,
    #[sqlx(rename = "createdAt")]
    pub created_at: i64,
    #[sqlx(rename = "expiresAt")]
    pub expires_at: i64,
    #[sqlx(rename = "claimedBy")]
    pub claimed_by: Option<String>,
    #[sqlx(rename = "claimedAt")]
    pub claimed_at: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClaimError {
    #[error("Invalid, expired, or already claimed entry key")]
    Invalid,
}

pub struct Pairing {
    pool: SqlitePool,
    owners: RwLock<HashMap<String, String>>,
}

impl Pairing {
    pub async fn load(pool: SqlitePool) -> anyhow::Result<Self> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT serial, \"userId\" FROM \"deviceOwners\"").fetch_all(&pool).await?;
        sqlx::query("INSERT OR IGNORE INTO users (\"clerkId\", email, \"createdAt\") VALUES (?, ?, ?)")
            .bind(DEFAULT_USER)
            .bind(format!("{DEFAULT_USER}@local"))
            .bind(now_ms())
            .execute(&pool)
            .await?;
        Ok(Self { pool, owners: RwLock::new(rows.into_iter().collect()) })
    }

    pub fn owner(&self, serial: &str) -> Option<String> {
        self.owners.read().ok()?.get(serial).cloned()
    }

    pub fn owned_serials(&self) -> Vec<String> {
        let mut v: Vec<String> = self.owners.read().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// Records `user` as the owner unless the device already has one. Returns the owner.
    pub async fn set_owner_if_absent(&self, serial: &str, user: &str) -> Result<String, sqlx::Error> {
        if let Some(owner) = self.owner(serial) {
            return Ok(owner);
        }
        sqlx::query("INSERT OR IGNORE INTO \"deviceOwners\" (serial, \"userId\", \"createdAt\") VALUES (?, ?, ?)")
            .bind(serial)
            .bind(user)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        let owner: String = sqlx::query_scalar("SELECT \"userId\" FROM \"deviceOwners\" WHERE serial = ?")
            .bind(serial)
            .fetch_one(&self.pool)
            .await?;
        if let Ok(mut o) = self.owners.write() {
            o.insert(serial.to_string(), owner.clone());
        }
        Ok(owner)
    }

    pub async fn tier(&self, serial: &str) -> Result<Tier, sqlx::Error> {
        if self.owner(serial).is_some() {
            return Ok(Tier::Paired);
        }
        let active: Option<String> = sqlx::query_scalar(
            "SELECT code FROM \"entryKeys\" WHERE serial = ? AND \"claimedBy\" IS NULL AND \"expiresAt\" > ? LIMIT 1",
        )
        .bind(serial)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(if active.is_some() { Tier::Pending } else { Tier::Unknown })
    }

    pub async fn latest_key(&self, serial: &str) -> Result<Option<EntryKey>, sqlx::Error> {
        sqlx::query_as(
            "SELECT code, serial, \"createdAt\", \"expiresAt\", \"claimedBy\", \"claimedAt\" FROM \"entryKeys\"
             WHERE serial = ? ORDER BY \"createdAt\" DESC, rowid DESC LIMIT 1",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await
    }

    /// The code to show on the thermostat: the current one while it stays valid for at least 30
    /// more minutes (the firmware rejects anything sooner), else a new one. Claimed keys are kept
    /// as the record of who paired the device.
    pub async fn entry_key(&self, serial: &str, ttl_ms: i64) -> Result<EntryKey, sqlx::Error> {
        let now = now_ms();
        if let Some(key) = self.latest_key(serial).await? {
            let usable = key.claimed_by.is_none() && key.expires_at - now >= MIN_CODE_VALIDITY_MS.min(ttl_ms);
            if usable {
                return Ok(key);
            }
        }
        let expires_at = now + ttl_ms.max(MIN_CODE_VALIDITY_MS);
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM \"entryKeys\" WHERE serial = ? AND \"claimedBy\" IS NULL")
            .bind(serial)
            .execute(&mut *tx)
            .await?;
        let mut attempt = 0;
        let code = loop {
            let code = new_code();
            let taken: Option<String> = sqlx::query_scalar("SELECT code FROM \"entryKeys\" WHERE code = ?")
                .bind(&code)
                .fetch_optional(&mut *tx)
                .await?;
            attempt += 1;
            if taken.is_none() || attempt >= 20 {
                break code;
            }
        };
        sqlx::query("INSERT INTO \"entryKeys\" (code, serial, \"createdAt\", \"expiresAt\") VALUES (?, ?, ?, ?)")
            .bind(&code)
            .bind(serial)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(EntryKey {
            code,
            serial: serial.to_string(),
            created_at: now,
            expires_at,
            claimed_by: None,
            claimed_at: None,
        })
    }

    /// Claims a code for `user`; on success the device is owned by `user`. The code proves
    /// physical access to the thermostat, so a claim moves a device that another user owned.
    pub async fn claim(&self, code: &str, user: &str) -> Result<Result<String, ClaimError>, sqlx::Error> {
        let now = now_ms();
        let serial: Option<String> = sqlx::query_scalar(
            "SELECT serial FROM \"entryKeys\" WHERE code = ? AND \"claimedBy\" IS NULL AND \"expiresAt\" > ?",
        )
        .bind(code)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(serial) = serial else { return Ok(Err(ClaimError::Invalid)) };
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE \"entryKeys\" SET \"claimedBy\" = ?, \"claimedAt\" = ? WHERE code = ? AND \"claimedBy\" IS NULL AND \"expiresAt\" > ?",
        )
        .bind(user)
        .bind(now)
        .bind(code)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(Err(ClaimError::Invalid));
        }
        sqlx::query(
            "INSERT INTO \"deviceOwners\" (serial, \"userId\", \"createdAt\") VALUES (?, ?, ?)
             ON CONFLICT (serial) DO UPDATE SET \"userId\" = excluded.\"userId\", \"createdAt\" = excluded.\"createdAt\"",
        )
        .bind(&serial)
        .bind(user)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(previous) = self.owners.write().ok().and_then(|mut o| o.insert(serial.clone(), user.to_string())) {
            if previous != user {
                tracing::info!(%serial, %previous, new_owner = user, "thermostat moved to a new owner");
            }
        }
        Ok(Ok(serial))
    }
}

impl Pairing {
    /// Removes the owner and every entry key of a device.
    pub async fn forget(&self, serial: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM \"deviceOwners\" WHERE serial = ?").bind(serial).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM \"entryKeys\" WHERE serial = ?").bind(serial).execute(&mut *tx).await?;
        tx.commit().await?;
        if let Ok(mut o) = self.owners.write() {
            o.remove(serial);
        }
        Ok(())
    }

    /// Removes the owner row of `serial` if `user` owns it. Returns whether it did.
    pub async fn unregister(&self, serial: &str, user: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM \"deviceOwners\" WHERE serial = ? AND \"userId\" = ?")
            .bind(serial)
            .bind(user)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0;
        if done {
            if let Ok(mut o) = self.owners.write() {
                o.remove(serial);
            }
        }
        Ok(done)
    }

    /// Devices owned by `user`, newest first.
    pub async fn devices_of(&self, user: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT serial, \"createdAt\" FROM \"deviceOwners\" WHERE \"userId\" = ? ORDER BY \"createdAt\" DESC",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
    }

    /// Creates a user unless it exists. Returns whether it was created.
    pub async fn ensure_user(&self, user: &str, email: &str) -> Result<bool, sqlx::Error> {
        let created = sqlx::query("INSERT OR IGNORE INTO users (\"clerkId\", email, \"createdAt\") VALUES (?, ?, ?)")
            .bind(user)
            .bind(email)
            .bind(now_ms())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(created > 0)
    }
}

/// Three digits and four letters (shown as `123-ABCD`), from the operating system's CSPRNG.
fn new_code() -> String {
    let mut bytes = [0u8; 7];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness means no safe code; fall back to time-derived bytes rather than panic.
        let t = now_ms().to_le_bytes();
        bytes.copy_from_slice(&t[..7]);
    }
    bytes
        .iter()
        .enumerate()
        .map(|(i, b)| if i < 3 { (b'0' + b % 10) as char } else { (b'A' + b % 26) as char })
        .collect()
}

/// The user id with a leading `user_` removed, as used in `structure.<id>`.
pub fn structure_id(user: &str) -> &str {
    user.strip_prefix("user_").unwrap_or(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_three_digits_then_four_letters() {
        for _ in 0..100 {
            let c = new_code();
            assert_eq!(c.len(), 7);
            assert!(c[..3].chars().all(|ch| ch.is_ascii_digit()), "{c}");
            assert!(c[3..].chars().all(|ch| ch.is_ascii_uppercase()), "{c}");
        }
    }

    #[test]
    fn structure_ids_drop_the_user_prefix() {
        assert_eq!(structure_id("user_abc123"), "abc123");
        assert_eq!(structure_id("my_user_id"), "my_user_id");
    }
}
