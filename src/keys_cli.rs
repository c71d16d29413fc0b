//! `roost keys create|list|revoke`: managing API keys from the command line, on the database the
//! server's settings name. A running server sees a new or revoked key at its next request (it
//! reads keys on every request).

use clap::{Args, Subcommand};

use crate::Config;
use crate::domain::time::{iso8601, now_ms};
use crate::state::keys::{ApiKeys, KeyRecord, NewKey};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored.
    Create {
        /// `read`, `write` or `read,write`.
        #[arg(long)]
        scopes: String,
        /// Serials the key may reach (comma-separated); every device when left out.
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
        /// When the key stops working, RFC 3339 (e.g. 2027-01-31T18:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// A label to recognise the key by (e.g. "Home Assistant").
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by the id `roost keys list` shows.
    Revoke { id: i64 },
}

pub async fn run(config: &Config, args: KeysArgs) -> anyhow::Result<()> {
    let opened = crate::state::db::open_configured(config).await?;
    let keys = ApiKeys::new(opened.db());
    let result = match args.command {
        KeysCommand::Create { scopes, devices, expires, name } => {
            let new = NewKey::parse(&name, &scopes, devices.as_deref(), expires.as_deref())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let (key, record) = keys.create(&new).await?;
            println!("{key}");
            eprintln!(
                "Key {} created in {} ({}). It is shown only this once: store it now.",
                record.id,
                crate::state::db::describe(config),
                describe(&record)
            );
            Ok(())
        }
        KeysCommand::List => {
            let list = keys.list().await?;
            if list.is_empty() {
                eprintln!("No API keys yet: roost keys create --scopes read,write");
            } else {
                println!("{}", table(&list, now_ms()));
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => match keys.revoke(id).await? {
            Some(record) => {
                eprintln!("Key {id} ({}) is revoked.", record.preview);
                Ok(())
            }
            None => Err(anyhow::anyhow!("no API key with id {id} (see roost keys list)")),
        },
    };
    opened.db().close().await;
    result
}

fn describe(k: &KeyRecord) -> String {
    let devices = k.devices.as_ref().map_or_else(|| "every device".to_string(), |d| d.join(","));
    let expires = k.expires_at.map_or_else(|| "never expires".to_string(), |e| format!("expires {}", iso8601(e)));
    format!("scopes {}, {devices}, {expires}", k.perms.scopes())
}

fn table(keys: &[KeyRecord], now: i64) -> String {
    let time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), iso8601);
    let mut rows = vec![["ID", "NAME", "KEY", "SCOPES", "DEVICES", "EXPIRES", "LAST USED", "STATUS"].map(String::from)];
    for k in keys {
        rows.push([
            k.id.to_string(),
            if k.name.is_empty() { "-".into() } else { k.name.clone() },
            k.preview.clone(),
            k.perms.scopes(),
            k.devices.as_ref().map_or_else(|| "all".to_string(), |d| d.join(",")),
            time(k.expires_at),
            time(k.last_used_at),
            k.status(now).as_str().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
