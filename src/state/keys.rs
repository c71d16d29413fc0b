//! API keys (`nle_…`). Every request with a key reads its row, so a key created or revoked by
//! the CLI, the web UI or another node takes effect at once; nothing here caches validity.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::sql::{Db, on_db};
use crate::domain::access::{self, Perms};
use crate::domain::serial;
use crate::domain::time::{iso8601, now_ms, parse_rfc3339};

/// `last_used_at` is written at most this often per key (a poll every few seconds would
/// otherwise be a write every few seconds).
const TOUCH_EVERY_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// A stored key (never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    pub preview: String,
    pub perms: Perms,
    /// The serials the key may reach; `None` = every device.
    pub devices: Option<Vec<String>>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl KeyRecord {
    pub fn status(&self, now: i64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    pub fn to_json(&self, now: i64) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "preview": self.preview,
            "scopes": self.perms.scopes().split(',').collect::<Vec<_>>(),
            "devices": self.devices,
            "created_at": iso8601(self.created_at),
            "expires_at": self.expires_at.map(iso8601),
            "last_used_at": self.last_used_at.map(iso8601),
            "revoked_at": self.revoked_at.map(iso8601),
            "status": self.status(now).as_str(),
        })
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: i64,
    name: String,
    preview: String,
    scopes: String,
    devices: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl KeyRow {
    fn into_record(self) -> KeyRecord {
        KeyRecord {
            id: self.id,
            name: self.name,
            preview: self.preview,
            // A row that cannot be read grants nothing.
            perms: Perms::parse_scopes(&self.scopes).unwrap_or(Perms::NONE),
            devices: self.devices.map(|d| serde_json::from_str(&d).unwrap_or_default()),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
        }
    }
}

/// The columns every query returns (a macro, so queries stay literal strings).
macro_rules! columns {
    () => {
        "id, name, preview, scopes, devices, created_at, expires_at, revoked_at, last_used_at"
    };
}

/// What a new key may do, checked (the CLI and the web UI take the same input).
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    pub name: String,
    pub perms: Perms,
    pub devices: Option<Vec<String>>,
    pub expires_at: Option<i64>,
}

impl NewKey {
    /// `scopes` like `read,write`; `devices` serials (none = every device); `expires` RFC 3339.
    pub fn parse(name: &str, scopes: &str, devices: Option<&[String]>, expires: Option<&str>) -> Result<Self, String> {
        let name = name.trim();
        if name.chars().count() > 100 {
            return Err("name: at most 100 characters".into());
        }
        let perms = Perms::parse_scopes(scopes).map_err(|e| format!("scopes: {e}"))?;
        let devices = match devices {
            None => None,
            Some(list) => {
                let mut serials = Vec::new();
                for raw in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
                    let s =
                        serial::sanitize(raw).ok_or_else(|| format!("devices: '{raw}' is not a thermostat serial"))?;
                    if !serials.contains(&s) {
                        serials.push(s);
                    }
                }
                if serials.is_empty() {
                    return Err("devices: list at least one serial, or leave devices out for every device".into());
                }
                Some(serials)
            }
        };
        let expires_at = match expires.map(str::trim).filter(|e| !e.is_empty()) {
            None => None,
            Some(text) => {
                let at = parse_rfc3339(text)
                    .ok_or_else(|| format!("expires: '{text}' is not an RFC 3339 time such as 2027-01-31T18:00:00Z"))?;
                if at <= now_ms() {
                    return Err(format!("expires: {text} has already passed"));
                }
                Some(at)
            }
        };
        Ok(Self { name: name.to_string(), perms, devices, expires_at })
    }
}

pub struct ApiKeys {
    db: Db,
    /// When each key's `last_used_at` was last written by this process.
    touched: Mutex<HashMap<i64, i64>>,
}

impl ApiKeys {
    pub fn new(db: Db) -> Self {
        Self { db, touched: Mutex::new(HashMap::new()) }
    }

    /// Stores a new key and returns it (the only time the full key exists outside the client).
    pub async fn create(&self, new: &NewKey) -> anyhow::Result<(String, KeyRecord)> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
        let key = access::format_key(&random);
        let devices = new.devices.as_ref().map(serde_json::to_string).transpose()?;
        let row: KeyRow = on_db!(&self.db, pool => sqlx::query_as(concat!(
            "INSERT INTO roost_api_keys (key_hash, preview, name, scopes, devices, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
            columns!()
        ))
        .bind(access::key_hash(&key))
        .bind(access::key_preview(&key))
        .bind(&new.name)
        .bind(new.perms.scopes())
        .bind(devices)
        .bind(now_ms())
        .bind(new.expires_at)
        .fetch_one(pool)
        .await)?;
        Ok((key, row.into_record()))
    }

    /// The stored key matching a presented one, whatever its status.
    pub async fn find(&self, key: &str) -> Result<Option<KeyRecord>, sqlx::Error> {
        let row: Option<KeyRow> = on_db!(&self.db, pool => sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM roost_api_keys WHERE key_hash = $1"
        ))
        .bind(access::key_hash(key))
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(KeyRow::into_record))
    }

    pub async fn list(&self) -> Result<Vec<KeyRecord>, sqlx::Error> {
        let rows: Vec<KeyRow> = on_db!(&self.db, pool => sqlx::query_as(concat!("SELECT ", columns!(), " FROM roost_api_keys ORDER BY id"))
                .fetch_all(pool)
                .await)?;
        Ok(rows.into_iter().map(KeyRow::into_record).collect())
    }

    /// Revokes a key; `None` when there is no such key. Revoking twice keeps the first time.
    pub async fn revoke(&self, id: i64) -> Result<Option<KeyRecord>, sqlx::Error> {
        let row: Option<KeyRow> = on_db!(&self.db, pool => sqlx::query_as(concat!(
            "UPDATE roost_api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING ",
            columns!()
        ))
        .bind(now_ms())
        .bind(id)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(KeyRow::into_record))
    }

    /// Whether this use of a key should be recorded (at most once a minute per key and process).
    pub fn due_for_touch(&self, id: i64, now: i64) -> bool {
        let Ok(mut touched) = self.touched.lock() else { return false };
        if touched.get(&id).is_some_and(|last| now - last < TOUCH_EVERY_MS) {
            return false;
        }
        touched.insert(id, now);
        true
    }

    pub async fn touch(&self, id: i64, now: i64) {
        let result = on_db!(&self.db, pool => sqlx::query("UPDATE roost_api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(pool)
            .await
            .map(|_| ()));
        if let Err(e) = result {
            tracing::debug!(key_id = id, error = %e, "could not record a key's last use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_checked() {
        let devices = vec!["02aa01ac12345678".to_string(), " 02AA01AC12345678 ".into(), "02AA01AC00000002".into()];
        let k = NewKey::parse(" phone ", "read", Some(&devices), Some("2999-01-01T00:00:00Z")).unwrap();
        assert_eq!(k.name, "phone");
        assert_eq!(k.perms, Perms { read: true, write: false, admin: false });
        assert_eq!(k.devices, Some(vec!["02AA01AC12345678".to_string(), "02AA01AC00000002".to_string()]));
        assert!(k.expires_at.is_some());
        assert!(NewKey::parse("", "read,write", None, None).unwrap().devices.is_none());
        for (scopes, devices, expires, message) in [
            ("", None, None, "scopes:"),
            ("admin", None, None, "scopes: unknown scope 'admin'"),
            ("read", Some(vec!["x y".to_string()]), None, "devices: 'x y' is not a thermostat serial"),
            ("read", Some(vec![" ".to_string()]), None, "devices: list at least one serial"),
            ("read", None, Some("next week"), "expires: 'next week' is not an RFC 3339 time"),
            ("read", None, Some("2001-01-01T00:00:00Z"), "expires: 2001-01-01T00:00:00Z has already passed"),
        ] {
            let err = NewKey::parse("", scopes, devices.as_deref(), expires).unwrap_err();
            assert!(err.starts_with(message), "{err}");
        }
    }

    #[test]
    fn status_of_a_key() {
        let mut k = KeyRecord {
            id: 1,
            name: String::new(),
            preview: String::new(),
            perms: Perms::READ_WRITE,
            devices: None,
            created_at: 0,
            expires_at: Some(1000),
            revoked_at: None,
            last_used_at: None,
        };
        assert_eq!(k.status(999), KeyStatus::Active);
        assert_eq!(k.status(1000), KeyStatus::Expired);
        k.revoked_at = Some(5);
        assert_eq!(k.status(0), KeyStatus::Revoked);
        assert_eq!(k.to_json(0)["scopes"], json!(["read", "write"]));
    }
}
