//! The storage bounds from the settings (the rules are in `domain::sync::bounds`).

pub use crate::domain::sync::bounds::{Bounds, Usage, value_bytes};
use crate::limits::Limits;

impl Bounds {
    pub fn from_limits(limits: &Limits) -> Self {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            buckets: size(limits.max_buckets_per_device),
            fields: size(limits.max_fields_per_bucket),
            bucket_bytes: size(limits.max_bucket_bytes),
            device_bytes: size(limits.max_device_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::bucket::Bucket;

    fn bucket(value: serde_json::Value) -> Bucket {
        Bucket { revision: 1, timestamp: 1, value: value.as_object().cloned().unwrap_or_default(), updated_at: 0 }
    }

    #[test]
    fn the_defaults_are_the_settings_defaults() {
        let config = crate::config::from_args(["--server-port=0"]).unwrap();
        assert_eq!(Bounds::from_limits(&config.limits), Bounds::default());
    }

    #[test]
    fn a_real_full_state_upload_is_far_below_the_defaults() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/full_state.json")).unwrap();
        let buckets: Vec<Bucket> =
            doc["objects"].as_array().unwrap().iter().map(|o| bucket(o["value"].clone())).collect();
        let usage = Usage::measure(buckets.iter());
        let bounds = Bounds::default();
        let largest = buckets.iter().map(|b| value_bytes(&b.value)).max().unwrap();
        println!("full-state upload: {} bytes in {} buckets, largest {largest}", usage.total(), buckets.len());
        assert!(usage.total() * 50 < bounds.device_bytes);
        assert!(largest * 30 < bounds.bucket_bytes);
    }
}
