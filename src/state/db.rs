//! Opening the database: PostgreSQL when `DATABASE_URL` is set, else SQLite (WAL, busy
//! timeout, migrations, and adopting a reference database).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

use super::pg::Cluster;
use super::sql::Db;
use crate::Config;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// An open database, ready for the store.
pub enum Opened {
    /// With the connection the single writer owns.
    Sqlite {
        pool: SqlitePool,
        writer: SqliteConnection,
    },
    Postgres(Arc<Cluster>),
}

impl Opened {
    pub fn db(&self) -> Db {
        match self {
            Opened::Sqlite { pool, .. } => Db::Sqlite(pool.clone()),
            Opened::Postgres(cluster) => Db::Postgres(cluster.pool.clone()),
        }
    }
}

/// Opens the configured database: PostgreSQL for `DATABASE_URL`, else SQLite at `SQLITE3_DB_PATH`.
pub async fn open_configured(config: &Config) -> anyhow::Result<Opened> {
    match config.postgres_url() {
        Some(url) => Ok(Opened::Postgres(Arc::new(Cluster::open(url).await?))),
        None => {
            let (pool, writer) = open(&config.sqlite3_db_path).await?;
            Ok(Opened::Sqlite { pool, writer })
        }
    }
}

/// Where the configured database is, for messages (never the URL: it may hold a password).
pub fn describe(config: &Config) -> String {
    match config.postgres_url() {
        Some(_) => "the PostgreSQL database of DATABASE_URL".to_string(),
        None => config.sqlite3_db_path.display().to_string(),
    }
}

pub fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // With WAL, NORMAL loses nothing on a process crash; only a power cut can drop the last commits.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(false)
}

/// Opens (creating if needed) the database and applies migrations. A database written by the
/// reference server is recognised, backed up next to itself, and adopted in place.
pub async fn open(path: &Path) -> anyhow::Result<(SqlitePool, SqliteConnection)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    let options = connect_options(path);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options.clone())
        .await
        .with_context(|| format!("opening SQLite database {}", path.display()))?;

    if is_reference_database(&pool).await? {
        let backup = path.with_extension("reference-backup.sqlite");
        if !backup.exists() {
            let target = backup.to_string_lossy().to_string();
            sqlx::query("VACUUM INTO ?")
                .bind(&target)
                .execute(&pool)
                .await
                .with_context(|| format!("backing up the reference database to {target}"))?;
        }
        tracing::info!(backup = %backup.display(), "adopting a NoLongerEvil-SelfHosted database: pairings and buckets are kept");
    }
    MIGRATOR.run(&pool).await.context("applying database migrations")?;
    purge_corrupted_keys(&Db::Sqlite(pool.clone())).await?;
    let writer = SqliteConnection::connect_with(&options).await.context("opening the writer connection")?;
    Ok((pool, writer))
}

/// Firmware 4.3.3 appends ` ._sync` or ` .$version` to its bucket keys (spec v3-firmware
/// §6.1). Keys are canonicalised before they are stored, but a database written before that
/// (or by the reference) may hold such copies: they are stale duplicates and are removed.
pub(super) async fn purge_corrupted_keys(db: &Db) -> anyhow::Result<()> {
    let purged = super::sql::on_db!(db, pool => sqlx::query("DELETE FROM states WHERE object_key LIKE '% %'")
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .context("removing buckets stored under corrupted keys")?;
    if purged > 0 {
        tracing::warn!(purged, "removed stored buckets whose keys carry a firmware-corrupted suffix");
    }
    Ok(())
}

async fn is_reference_database(pool: &SqlitePool) -> anyhow::Result<bool> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(pool).await?;
    Ok(tables.iter().any(|t| t == "states") && !tables.iter().any(|t| t == "_sqlx_migrations"))
}

/// Parses a stored JSON object. Rows written by the Python reference may hold bare `NaN` or
/// `Infinity`, which are not JSON; those become `null` rather than losing the bucket.
pub fn parse_stored_object(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let parsed = serde_json::Value::from_str(text)
        .ok()
        .or_else(|| serde_json::Value::from_str(&replace_non_json_numbers(text)).ok())?;
    match parsed {
        // Kept for as long as the thermostat exists: without the room a parse leaves.
        serde_json::Value::Object(map) => Some(crate::domain::bucket::compact(&map)),
        serde_json::Value::Null => Some(serde_json::Map::new()),
        _ => None,
    }
}

/// `NaN`, `Infinity` and `-Infinity` outside strings become `null`; strings are left alone.
fn replace_non_json_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if c == '\\' {
                let escaped: String = rest.chars().take(2).collect();
                out.push_str(&escaped);
                rest = &rest[escaped.len()..];
                continue;
            }
            in_string = c != '"';
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t)) {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_json_numbers_are_repaired() {
        let m = parse_stored_object(r#"{"a": NaN, "b": 21.0}"#).unwrap();
        assert!(m["a"].is_null());
        assert_eq!(m["b"].to_string(), "21.0");
        assert!(parse_stored_object("[1]").is_none());
        let m = parse_stored_object(r#"{"name": "Infinity Room \\\"NaN\\\"", "t": -Infinity}"#).unwrap();
        assert_eq!(m["name"], "Infinity Room \\\"NaN\\\"");
        assert!(m["t"].is_null());
    }
}
