//! Owners (which user a thermostat is paired to) and entry keys (the 7-character pairing codes).

use std::collections::HashMap;
use std::sync::RwLock;

use super::devices::DeviceLimit;
use super::sql::{Db, on_db};
pub use crate::domain::sync::structure_id;
use crate::domain::time::now_ms;

/// The user that owns devices adopted without pairing, and that the web UI registers as.
pub const DEFAULT_USER: &str = "homeassistant";
/// The thermostat refuses a code that expires sooner than this.
pub const MIN_CODE_VALIDITY_MS: i64 = 30 * 60 * 1000;
/// Unclaimed pairing codes held at once (far more than anyone pairs at a time).
pub const MAX_PENDING_CODES: i64 = 100;

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
    #[error("roost already holds {0} thermostats (MAX_DEVICES); delete one or raise the limit")]
    NoRoom(usize),
}

/// A newly issued code, and the serials whose codes were dropped to make room for it.
#[derive(Debug)]
pub struct Issued {
    pub key: EntryKey,
    pub evicted: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Storage(#[from] sqlx::Error),
    /// Codes come only from the operating system's random source; without it none is issued.
    #[error("no random source for pairing codes")]
    NoRandomness,
}

pub struct Pairing {
    db: Db,
    owners: RwLock<HashMap<String, String>>,
}

impl Pairing {
    pub async fn load(db: Db) -> anyhow::Result<Self> {
        let rows: Vec<(String, String)> = on_db!(&db, pool => {
            let rows = sqlx::query_as("SELECT serial, \"userId\" FROM \"deviceOwners\"").fetch_all(pool).await?;
            sqlx::query(
                "INSERT INTO users (\"clerkId\", email, \"createdAt\") VALUES ($1, $2, $3) ON CONFLICT (\"clerkId\") DO NOTHING",
            )
            .bind(DEFAULT_USER)
            .bind(format!("{DEFAULT_USER}@local"))
            .bind(now_ms())
            .execute(pool)
            .await?;
            rows
        });
        Ok(Self { db, owners: RwLock::new(rows.into_iter().collect()) })
    }

    pub fn owner(&self, serial: &str) -> Option<String> {
        self.owners.read().ok()?.get(serial).cloned()
    }

    pub fn owned_serials(&self) -> Vec<String> {
        let mut v: Vec<String> = self.owners.read().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    fn remember(&self, serial: &str, owner: Option<String>) {
        if let Ok(mut o) = self.owners.write() {
            match owner {
                Some(owner) => o.insert(serial.to_string(), owner),
                None => o.remove(serial),
            };
        }
    }

    /// The stored owner of `serial`, read again and remembered (another node may have paired,
    /// adopted or removed it).
    pub async fn reload_owner(&self, serial: &str) -> Result<Option<String>, sqlx::Error> {
        let owner: Option<String> = on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT \"userId\" FROM \"deviceOwners\" WHERE serial = $1",
        )
        .bind(serial)
        .fetch_optional(pool)
        .await)?;
        self.remember(serial, owner.clone());
        Ok(owner)
    }

    /// Drops what this process remembers of a deleted device's owner.
    pub fn forget_cached(&self, serial: &str) {
        self.remember(serial, None);
    }

    /// Records `user` as the owner unless the device already has one. Returns the owner.
    pub async fn set_owner_if_absent(&self, serial: &str, user: &str) -> Result<String, sqlx::Error> {
        if let Some(owner) = self.owner(serial) {
            return Ok(owner);
        }
        let owner: String = on_db!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO \"deviceOwners\" (serial, \"userId\", \"createdAt\") VALUES ($1, $2, $3) ON CONFLICT (serial) DO NOTHING",
            )
            .bind(serial)
            .bind(user)
            .bind(now_ms())
            .execute(pool)
            .await?;
            sqlx::query_scalar("SELECT \"userId\" FROM \"deviceOwners\" WHERE serial = $1")
                .bind(serial)
                .fetch_one(pool)
                .await?
        });
        self.remember(serial, Some(owner.clone()));
        Ok(owner)
    }

    pub async fn tier(&self, serial: &str) -> Result<Tier, sqlx::Error> {
        if self.owner(serial).is_some() {
            return Ok(Tier::Paired);
        }
        // Shared with other nodes, the owner may have been stored by one of them.
        if self.db.is_postgres() && self.reload_owner(serial).await?.is_some() {
            return Ok(Tier::Paired);
        }
        let active: Option<String> = on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT code FROM \"entryKeys\" WHERE serial = $1 AND \"claimedBy\" IS NULL AND \"expiresAt\" > $2 LIMIT 1",
        )
        .bind(serial)
        .bind(now_ms())
        .fetch_optional(pool)
        .await)?;
        Ok(if active.is_some() { Tier::Pending } else { Tier::Unknown })
    }

    pub async fn latest_key(&self, serial: &str) -> Result<Option<EntryKey>, sqlx::Error> {
        let sql = self.db.pick(
            "SELECT code, serial, \"createdAt\", \"expiresAt\", \"claimedBy\", \"claimedAt\" FROM \"entryKeys\"
             WHERE serial = $1 ORDER BY \"createdAt\" DESC, rowid DESC LIMIT 1",
            "SELECT code, serial, \"createdAt\", \"expiresAt\", \"claimedBy\", \"claimedAt\" FROM \"entryKeys\"
             WHERE serial = $1 ORDER BY \"createdAt\" DESC, seq DESC LIMIT 1",
        );
        on_db!(&self.db, pool => sqlx::query_as(sql).bind(serial).fetch_optional(pool).await)
    }

    /// The current code of a serial while it stays valid for at least 30 more minutes (the
    /// firmware rejects anything sooner), or `None` when a new one is needed.
    pub async fn usable_key(&self, serial: &str, ttl_ms: i64) -> Result<Option<EntryKey>, sqlx::Error> {
        let now = now_ms();
        Ok(self
            .latest_key(serial)
            .await?
            .filter(|key| key.claimed_by.is_none() && key.expires_at - now >= MIN_CODE_VALIDITY_MS.min(ttl_ms)))
    }

    /// Issues a new code for a serial. Claimed keys are kept as the record of who paired the
    /// device. At most [`MAX_PENDING_CODES`] unclaimed codes exist: past it the oldest are
    /// dropped (their serials are returned, so their pending state can go too), so made-up
    /// serials can never keep a genuine thermostat from getting a code.
    pub async fn issue_key(&self, serial: &str, ttl_ms: i64) -> Result<Issued, IssueError> {
        let now = now_ms();
        let expires_at = now + ttl_ms.max(MIN_CODE_VALIDITY_MS);
        let evict = self.db.pick(
            "DELETE FROM \"entryKeys\" WHERE code IN (SELECT code FROM \"entryKeys\" WHERE \"claimedBy\" IS NULL
             ORDER BY \"createdAt\" DESC, rowid DESC LIMIT -1 OFFSET $1) RETURNING serial",
            "DELETE FROM \"entryKeys\" WHERE code IN (SELECT code FROM \"entryKeys\" WHERE \"claimedBy\" IS NULL
             ORDER BY \"createdAt\" DESC, seq DESC OFFSET $1) RETURNING serial",
        );
        let (code, evicted) = on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM \"entryKeys\" WHERE serial = $1 AND \"claimedBy\" IS NULL")
                .bind(serial)
                .execute(&mut *tx)
                .await?;
            let evicted: Vec<String> =
                sqlx::query_scalar(evict).bind(MAX_PENDING_CODES - 1).fetch_all(&mut *tx).await?;
            let mut attempt = 0;
            let code = loop {
                let code = new_code().ok_or(IssueError::NoRandomness)?;
                let taken: Option<String> = sqlx::query_scalar("SELECT code FROM \"entryKeys\" WHERE code = $1")
                    .bind(&code)
                    .fetch_optional(&mut *tx)
                    .await?;
                attempt += 1;
                if taken.is_none() || attempt >= 20 {
                    break code;
                }
            };
            sqlx::query(
                "INSERT INTO \"entryKeys\" (code, serial, \"createdAt\", \"expiresAt\") VALUES ($1, $2, $3, $4)",
            )
            .bind(&code)
            .bind(serial)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            (code, evicted)
        });
        let key = EntryKey {
            code,
            serial: serial.to_string(),
            created_at: now,
            expires_at,
            claimed_by: None,
            claimed_at: None,
        };
        Ok(Issued { key, evicted })
    }

    /// Removes unclaimed codes that have expired; returns their serials.
    pub async fn expire_codes(&self) -> Result<Vec<String>, sqlx::Error> {
        on_db!(&self.db, pool => sqlx::query_scalar(
            "DELETE FROM \"entryKeys\" WHERE \"claimedBy\" IS NULL AND \"expiresAt\" <= $1 RETURNING serial",
        )
        .bind(now_ms())
        .fetch_all(pool)
        .await)
    }

    /// Claims a code for `user`; on success the device is owned by `user`. The code proves
    /// physical access to the thermostat, so a claim moves a device that another user owned.
    /// The device takes its place under `limit` in the same transaction.
    pub async fn claim(
        &self,
        code: &str,
        user: &str,
        limit: &DeviceLimit,
    ) -> Result<Result<String, ClaimError>, sqlx::Error> {
        let now = now_ms();
        macro_rules! find {
            () => {
                "SELECT serial FROM \"entryKeys\" WHERE code = $1 AND \"claimedBy\" IS NULL AND \"expiresAt\" > $2"
            };
        }
        const MARK: &str = "UPDATE \"entryKeys\" SET \"claimedBy\" = $1, \"claimedAt\" = $2
             WHERE code = $3 AND \"claimedBy\" IS NULL AND \"expiresAt\" > $4";
        const OWN: &str = "INSERT INTO \"deviceOwners\" (serial, \"userId\", \"createdAt\") VALUES ($1, $2, $3)
             ON CONFLICT (serial) DO UPDATE SET \"userId\" = excluded.\"userId\", \"createdAt\" = excluded.\"createdAt\"";
        let serial = match &self.db {
            Db::Sqlite(pool) => {
                let serial: Option<String> =
                    sqlx::query_scalar(find!()).bind(code).bind(now).fetch_optional(pool).await?;
                let Some(serial) = serial else { return Ok(Err(ClaimError::Invalid)) };
                if !limit.claim_here(&serial) {
                    return Ok(Err(ClaimError::NoRoom(limit.max())));
                }
                let mut tx = pool.begin().await?;
                let claimed = sqlx::query(MARK).bind(user).bind(now).bind(code).bind(now).execute(&mut *tx).await?;
                if claimed.rows_affected() == 0 {
                    return Ok(Err(ClaimError::Invalid));
                }
                sqlx::query(OWN).bind(&serial).bind(user).bind(now).execute(&mut *tx).await?;
                tx.commit().await?;
                serial
            }
            // One transaction: the code, the room under the limit and the owner are decided
            // together, whichever node the request reached.
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let serial: Option<String> = sqlx::query_scalar(concat!(find!(), " FOR UPDATE"))
                    .bind(code)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(serial) = serial else { return Ok(Err(ClaimError::Invalid)) };
                if !limit.claim_in(&mut tx, &serial).await? {
                    return Ok(Err(ClaimError::NoRoom(limit.max())));
                }
                sqlx::query(MARK).bind(user).bind(now).bind(code).bind(now).execute(&mut *tx).await?;
                sqlx::query(OWN).bind(&serial).bind(user).bind(now).execute(&mut *tx).await?;
                tx.commit().await?;
                limit.learn(&serial);
                serial
            }
        };
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
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM \"deviceOwners\" WHERE serial = $1").bind(serial).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM \"entryKeys\" WHERE serial = $1").bind(serial).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        self.forget_cached(serial);
        Ok(())
    }

    /// Removes the owner row of `serial` if `user` owns it. Returns whether it did.
    pub async fn unregister(&self, serial: &str, user: &str) -> Result<bool, sqlx::Error> {
        let done = on_db!(&self.db, pool => sqlx::query(
            "DELETE FROM \"deviceOwners\" WHERE serial = $1 AND \"userId\" = $2",
        )
        .bind(serial)
        .bind(user)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?
            > 0;
        if done {
            self.forget_cached(serial);
        }
        Ok(done)
    }

    /// Devices owned by `user`, newest first.
    pub async fn devices_of(&self, user: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        on_db!(&self.db, pool => sqlx::query_as(
            "SELECT serial, \"createdAt\" FROM \"deviceOwners\" WHERE \"userId\" = $1 ORDER BY \"createdAt\" DESC",
        )
        .bind(user)
        .fetch_all(pool)
        .await)
    }

    /// Creates a user unless it exists. Returns whether it was created.
    pub async fn ensure_user(&self, user: &str, email: &str) -> Result<bool, sqlx::Error> {
        let created = on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO users (\"clerkId\", email, \"createdAt\") VALUES ($1, $2, $3) ON CONFLICT (\"clerkId\") DO NOTHING",
        )
        .bind(user)
        .bind(email)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(created > 0)
    }
}

/// Three digits and four letters (shown as `123-ABCD`), from the operating system's CSPRNG;
/// `None` when it fails (a guessable code would let anyone on the network pair the thermostat).
fn new_code() -> Option<String> {
    code_from(getrandom::fill)
}

fn code_from(fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>) -> Option<String> {
    let mut bytes = [0u8; 7];
    fill(&mut bytes).ok()?;
    Some(
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| if i < 3 { (b'0' + b % 10) as char } else { (b'A' + b % 26) as char })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_three_digits_then_four_letters() {
        for _ in 0..100 {
            let c = new_code().unwrap();
            assert_eq!(c.len(), 7);
            assert!(c[..3].chars().all(|ch| ch.is_ascii_digit()), "{c}");
            assert!(c[3..].chars().all(|ch| ch.is_ascii_uppercase()), "{c}");
        }
    }

    #[tokio::test]
    async fn expired_codes_are_removed_and_pending_codes_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _writer) = crate::state::db::open(&dir.path().join("p.sqlite")).await.unwrap();
        let pairing = Pairing::load(Db::Sqlite(pool.clone())).await.unwrap();
        let ttl = 3_600_000;
        pairing.issue_key("EXPIRED0000001", ttl).await.unwrap();
        sqlx::query("UPDATE \"entryKeys\" SET \"expiresAt\" = 1").execute(&pool).await.unwrap();
        assert!(pairing.usable_key("EXPIRED0000001", ttl).await.unwrap().is_none());
        assert_eq!(pairing.expire_codes().await.unwrap(), ["EXPIRED0000001"]);
        let mut evicted = Vec::new();
        for i in 0..MAX_PENDING_CODES + 3 {
            evicted.extend(pairing.issue_key(&format!("PENDING{i:07}"), ttl).await.unwrap().evicted);
        }
        assert_eq!(evicted, ["PENDING0000000", "PENDING0000001", "PENDING0000002"]);
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM \"entryKeys\"").fetch_one(&pool).await.unwrap();
        assert_eq!(pending, MAX_PENDING_CODES);
    }

    #[test]
    fn no_code_without_the_random_source() {
        assert_eq!(code_from(|_| Err(getrandom::Error::UNSUPPORTED)), None);
    }

    #[test]
    fn structure_ids_drop_the_user_prefix() {
        assert_eq!(structure_id("user_abc123"), "abc123");
        assert_eq!(structure_id("my_user_id"), "my_user_id");
    }
}
