//! Running a validated command against a device: the one entry point for `/command`, MQTT and
//! the web UI. The plan is computed under the serial's write lock from the stored buckets, so
//! the checks (bounds, low < high) hold for the values actually written.

use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::AppState;
use crate::domain::command::{self, CommandError, DeviceView, Target};
use crate::domain::preset::Preset;
use crate::domain::serial;
use crate::domain::time::now_s;
use crate::state::pairing::structure_id;
use crate::state::store::UpdateError;
use crate::state::{Event, Op, Origin, StoreError};

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
    if !state.store.exists(&serial) || !state.is_known_device(&serial) {
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
    let structure =
        state.pairing.owner(&serial).map_or_else(|| "default".to_string(), |o| structure_id(&o).to_string());
    // Written by the planning closure, read by the event closure and the reply.
    let planned: Mutex<Option<(String, Map<String, Value>)>> = Mutex::new(None);
    let result = state
        .store
        .update_with_event(
            &serial,
            Origin::Command,
            true,
            |buckets| {
                if buckets.is_empty() {
                    return Err(ExecError::NotFound);
                }
                let bucket = |target: Target| buckets.get(&target.key(&serial, &structure)).map(|b| &b.value);
                let view = DeviceView {
                    device: bucket(Target::Device),
                    shared: bucket(Target::Shared),
                    schedule: bucket(Target::Schedule),
                    structure: bucket(Target::Structure),
                    now_s: now_s(),
                    serial: &serial,
                };
                let plan = command::plan(name, value, view)?;
                let ops: Vec<Op> = plan
                    .writes
                    .into_iter()
                    .map(|w| {
                        let key = w.target.key(&serial, &structure);
                        let mut first = planned.lock().unwrap_or_else(|p| p.into_inner());
                        if first.is_none() {
                            *first = Some((key.clone(), w.fields.clone()));
                        }
                        if w.replace {
                            Op::Replace { key, fields: w.fields }
                        } else {
                            Op::Merge { key, fields: w.fields, if_revision: None }
                        }
                    })
                    .collect();
                Ok(ops)
            },
            |_| {
                let first = planned.lock().unwrap_or_else(|p| p.into_inner());
                let (object_key, values) = first.as_ref()?;
                Some(Event {
                    kind: "command",
                    detail: json!({"command": name, "value": value, "object_key": object_key, "values": values}),
                })
            },
        )
        .await;
    match result {
        Ok(_) => {}
        Err(UpdateError::Plan(e)) => return Err(e),
        Err(UpdateError::Store(e)) => return Err(ExecError::Store(e)),
    }
    let (object_key, values) = planned.into_inner().unwrap_or_else(|p| p.into_inner()).unwrap_or_default();
    tracing::info!(%serial, command = name, key = %object_key, "command applied");
    Ok(Executed { serial, object_key, values })
}
