//! The v3 transport of firmware 4.3.3 and 4.0.6 on the device port: the profile of the
//! calling thermostat, and what `/nest/entry` adds for it. The shapes themselves are in
//! `domain::v3`.

use actix_web::HttpRequest;

use super::header;
use crate::AppState;
use crate::domain::bucket::Fields;
use crate::domain::v3::Profile;
use crate::domain::v3::profile::{VersionSource, speaks_v3};
use crate::domain::v3::render;
use crate::state::pairing::structure_id;

const SWVERSION_HEADER: &str = "x-nl-device-swversion";

/// The v3 profile of the calling thermostat (recording a version its request header reports).
pub(super) async fn profile_of(state: &AppState, req: &HttpRequest, serial: &str) -> Profile {
    let live = header(req, SWVERSION_HEADER);
    if let Some(version) = live {
        if let Err(e) = state.firmware.report(serial, version, VersionSource::Header).await {
            tracing::warn!(%serial, error = %e, "could not store the reported software version");
        }
    }
    let device = state.store.get(serial, &format!("device.{serial}"));
    let bucket_version = device.as_ref().and_then(|b| b.value.get("current_version")).and_then(|v| v.as_str());
    state.firmware.profile(serial, live, bucket_version)
}

/// What `/nest/entry` adds to its body for a thermostat that identified itself: a paired 4.3.3
/// gets its `user.*` and `structure.*` buckets inline, because it arms its subscribe only once
/// its store holds them and never subscribes to them itself.
pub(super) async fn entry_members(
    state: &AppState,
    req: &HttpRequest,
    serial: &str,
    software_version: Option<&str>,
) -> Fields {
    if let Some(version) = software_version {
        if let Err(e) = state.firmware.report(serial, version, VersionSource::Entry).await {
            tracing::warn!(%serial, error = %e, "could not store the reported software version");
        }
    }
    let known = state.firmware.reported(serial).map(|r| r.version);
    if speaks_v3(known.as_deref().or(header(req, SWVERSION_HEADER))) == Some(false) {
        return Fields::new();
    }
    let shape = profile_of(state, req, serial).await.shape();
    let Some(owner) = state.pairing.owner(serial) else { return Fields::new() };
    let keys = [format!("user.{owner}"), format!("structure.{}", structure_id(&owner))];
    let buckets: Vec<_> = keys.iter().filter_map(|k| state.store.get(serial, k).map(|b| (k.as_str(), b))).collect();
    let shown: Vec<_> = buckets.iter().map(|(k, b)| (*k, b.as_ref())).collect();
    let members = render::entry_members(shape, &shown);
    if !members.is_empty() {
        tracing::debug!(%serial, keys = ?members.keys().collect::<Vec<_>>(), "entry carries the pairing buckets");
    }
    members
}
