//! Running a validated command against a device: the one entry point for `/command`, MQTT and
//! the web UI. The command is planned under the serial's write lock from the stored buckets
//! (`domain::sync::CommandRequest`), so the checks (bounds, low < high) hold for the values
//! actually written.

use serde_json::{Value, json};

use crate::AppState;
use crate::domain::command::CommandError;
use crate::domain::preset::Preset;
use crate::domain::serial;
use crate::domain::sync::{CommandRefusal, CommandRequest, structure_id};
use crate::state::{CommitError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("Serial required")]
    NoSerial,
    #[error("Device not found")]
    NotFound,
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a successful command wrote: the bucket and the fields.
#[derive(Debug)]
pub struct Executed {
    pub serial: String,
    pub object_key: String,
    pub values: serde_json::Map<String, Value>,
}

impl Executed {
    pub fn to_json(&self) -> Value {
        json!({"success": true, "data": {"object_key": self.object_key, "values": self.values}})
    }
}

pub async fn execute(state: &AppState, raw_serial: &str, name: &str, value: &Value) -> Result<Executed, ExecError> {
    let serial = serial::sanitize(raw_serial).ok_or(ExecError::NoSerial)?;
    crate::telemetry::record_serial(&serial);
    // With PostgreSQL the commit reads what this node has not seen yet, and refuses a device
    // without state itself.
    let shared = state.store.cluster().is_some();
    if !(shared || state.store.exists(&serial)) || !state.knows_device(&serial).await {
        return Err(ExecError::NotFound);
    }
    let Some(preset) = Preset::asked_by(name, value) else { return apply(state, serial, name, value).await };
    // Remembered before the command runs, so whoever reads its change already sees it.
    let structure = state.structure_key(&serial);
    let previous = match state.presets.remember(&structure, preset).await {
        Ok(previous) => previous,
        Err(e) => {
            tracing::warn!(%serial, error = %e, "could not remember the preset");
            state.presets.asked(&structure)
        }
    };
    let result = apply(state, serial, name, value).await;
    if result.is_err() {
        state.presets.restore(&structure, previous).await;
    }
    result
}

async fn apply(state: &AppState, serial: String, name: &str, value: &Value) -> Result<Executed, ExecError> {
    // A device without an owner keeps its structure as `structure.default`.
    let structure_id =
        state.pairing.owner(&serial).map_or_else(|| "default".to_string(), |o| structure_id(&o).to_string());
    let request = CommandRequest { serial: serial.clone(), name: name.to_string(), value: value.clone(), structure_id };
    let reply = match state.store.commit(&serial, request).await {
        Ok(done) => done.reply,
        Err(CommitError::Refused(CommandRefusal::NotFound)) => return Err(ExecError::NotFound),
        Err(CommitError::Refused(CommandRefusal::Invalid(e))) => return Err(ExecError::Command(e)),
        Err(CommitError::Store(e)) => return Err(ExecError::Store(e)),
    };
    tracing::info!(%serial, command = name, key = %reply.object_key, "command applied");
    Ok(Executed { serial, object_key: reply.object_key, values: reply.values })
}
