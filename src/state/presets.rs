//! The preset last asked per structure (see `domain::preset`): kept in SQLite so eco stays
//! eco across a restart, and in memory for the readers on every publish.

use std::collections::HashMap;
use std::sync::RwLock;

use sqlx::SqlitePool;

use crate::domain::preset::Preset;
use crate::domain::time::now_ms;

pub struct Presets {
    pool: SqlitePool,
    asked: RwLock<HashMap<String, Preset>>,
}

impl Presets {
    pub async fn load(pool: SqlitePool) -> anyhow::Result<Self> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT structure, preset FROM roost_presets").fetch_all(&pool).await?;
        let asked = rows.into_iter().filter_map(|(s, p)| Some((s, Preset::parse(&p)?))).collect();
        Ok(Self { pool, asked: RwLock::new(asked) })
    }

    /// What was last asked for a structure key (`structure.<id>`).
    pub fn asked(&self, structure: &str) -> Option<Preset> {
        self.asked.read().ok()?.get(structure).copied()
    }

    /// Remembers `preset` for a structure and returns what it replaces. Set before the command
    /// runs, so every reader of the change it commits already sees it.
    pub async fn remember(&self, structure: &str, preset: Preset) -> Result<Option<Preset>, sqlx::Error> {
        sqlx::query(
            "INSERT INTO roost_presets (structure, preset, at_ms) VALUES (?, ?, ?)
             ON CONFLICT (structure) DO UPDATE SET preset = excluded.preset, at_ms = excluded.at_ms",
        )
        .bind(structure)
        .bind(preset.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
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
                sqlx::query("DELETE FROM roost_presets WHERE structure = ?")
                    .bind(structure)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = result {
            tracing::warn!(%structure, error = %e, "could not restore the remembered preset");
        }
    }
}
