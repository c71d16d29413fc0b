//! Running a validated command against a device: the one entry point for `/command`, MQTT and
//! the web UI. The plan is computed under the serial's write lock from the stored buckets, so
//! the checks (bounds, low < high) hold for the values actually written.

use serde_json::{Value, json};

use crate::AppState;
use crate::domain::command::{self, CommandError, DeviceView};
use crate::domain::serial;
use crate::state::store::UpdateError;
use crate::state::{Op, Origin, StoreError};

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
    if !state.store.exists(&serial) {
        return Err(ExecError::NotFound);
    }
    let mut planned = None;
    let result = state
        .store
        .update(&serial, Origin::Command, true, |buckets| {
            if buckets.is_empty() {
                return Err(ExecError::NotFound);
            }
            let device = buckets.get(&format!("device.{serial}")).map(|b| &b.value);
            let shared = buckets.get(&format!("shared.{serial}")).map(|b| &b.value);
            let plan = command::plan(name, value, DeviceView { device, shared })?;
            let object_key = plan.target.key(&serial);
            planned = Some((object_key.clone(), plan.fields.clone()));
            Ok(vec![Op::Merge { key: object_key, fields: plan.fields, if_revision: None }])
        })
        .await;
    match result {
        Ok(_) => {}
        Err(UpdateError::Plan(e)) => return Err(e),
        Err(UpdateError::Store(e)) => return Err(ExecError::Store(e)),
    }
    let (object_key, values) = planned.unwrap_or_default();
    tracing::info!(%serial, command = name, key = %object_key, "command applied");
    Ok(Executed { serial, object_key, values })
}
