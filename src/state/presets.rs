//! The preset last asked per structure (see `domain::preset`): kept in the database so eco
//! stays eco across a restart, and in memory for the readers on every publish.

use std::collections::HashMap;
use std::sync::RwLock;

use super::sql::{Db, on_db};
use crate::domain::preset::Preset;
use crate::domain::time::now_ms;

pub struct Presets {
    db: Db,
    asked: RwLock<HashMap<String, Preset>>,
}

async fn read_all(db: &Db) -> Result<HashMap<String, Preset>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        on_db!(db, pool => sqlx::query_as("SELECT structure, preset FROM roost_presets").fetch_all(pool).await)?;
    Ok(rows.into_iter().filter_map(|(s, p)| Some((s, Preset::parse(&p)?))).collect())
}

impl Presets {
    pub async fn load(db: Db) -> anyhow::Result<Self> {
        let asked = read_all(&db).await?;
        Ok(Self { db, asked: RwLock::new(asked) })
    }

    /// Reads every structure's preset again (another node may have changed one).
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let asked = read_all(&self.db).await?;
        if let Ok(mut m) = self.asked.write() {
            *m = asked;
        }
        Ok(())
    }

    /// What was last asked for a structure key (`structure.<id>`).
    pub fn asked(&self, structure: &str) -> Option<Preset> {
        self.asked.read().ok()?.get(structure).copied()
    }

    /// Remembers `preset` for a structure and returns what it replaces. Set before the command
    /// runs, so every reader of the change it commits already sees it.
    pub async fn remember(&self, structure: &str, preset: Preset) -> Result<Option<Preset>, sqlx::Error> {
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO roost_presets (structure, preset, at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (structure) DO UPDATE SET preset = excluded.preset, at_ms = excluded.at_ms",
        )
        .bind(structure)
        .bind(preset.as_str())
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(self.asked.write().ok().and_then(|mut m| m.insert(structure.to_string(), preset)))
    }

    /// Puts back what `remember` replaced (the command it was set for failed).
    pub async fn restore(&self, structure: &str, previous: Option<Preset>) {
        let result = match previous {
            Some(p) => self.remember(structure, p).await.map(|_| ()),
            None => {
                if let Ok(mut m) = self.asked.write() {
                    m.remove(structure);
                }
                on_db!(&self.db, pool => sqlx::query("DELETE FROM roost_presets WHERE structure = $1")
                    .bind(structure)
                    .execute(pool)
                    .await
                    .map(|_| ()))
            }
        };
        if let Err(e) = result {
            tracing::warn!(%structure, error = %e, "could not restore the remembered preset");
        }
    }
}
