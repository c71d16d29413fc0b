//! Bounds on what one thermostat may store (buckets, fields, bytes), so made-up data cannot grow
//! memory and the database without end. Real thermostats stay far below them: a full post-boot
//! upload (239 device fields, shared, a schedule, link, where) is about 12 KB, and the largest
//! bucket a thermostat can hold, a schedule with all 96 setpoints on every day, about 86 KB.

use std::io::Write;

use crate::domain::bucket::{Bucket, Fields};
use crate::limits::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub buckets: usize,
    pub fields: usize,
    pub bucket_bytes: usize,
    pub device_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { buckets: 256, fields: 4096, bucket_bytes: 256 * 1024, device_bytes: 1024 * 1024 }
    }
}

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

/// Serialized JSON size of a bucket's value, counted without building the text.
pub fn value_bytes(value: &Fields) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a JSON map to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The sizes of one thermostat's buckets, in the order the store holds them, and their sum.
/// Kept beside the buckets so a write checks the device total without re-measuring the rest.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    sizes: Vec<usize>,
    total: usize,
}

impl Usage {
    pub fn measure<'a>(buckets: impl Iterator<Item = &'a Bucket>) -> Self {
        let sizes: Vec<usize> = buckets.map(|b| value_bytes(&b.value)).collect();
        let total = sizes.iter().sum();
        Self { sizes, total }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Records `bucket` at position `index` (a new bucket goes at the end) if the device stays
    /// within `bounds`; returns whether it did.
    pub fn admit(&mut self, bounds: &Bounds, index: Option<usize>, bucket: &Bucket) -> bool {
        if bucket.value.len() > bounds.fields || (index.is_none() && self.sizes.len() >= bounds.buckets) {
            return false;
        }
        let bytes = value_bytes(&bucket.value);
        let previous = index.and_then(|i| self.sizes.get(i).copied()).unwrap_or(0);
        let total = self.total - previous + bytes;
        if bytes > bounds.bucket_bytes || total > bounds.device_bytes {
            return false;
        }
        match index.filter(|i| *i < self.sizes.len()) {
            Some(i) => self.sizes[i] = bytes,
            None => self.sizes.push(bytes),
        }
        self.total = total;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bucket(value: serde_json::Value) -> Bucket {
        Bucket { revision: 1, timestamp: 1, value: value.as_object().cloned().unwrap_or_default(), updated_at: 0 }
    }

    #[test]
    fn the_defaults_are_the_settings_defaults() {
        let config = crate::config::from_args(["--server-port=0"]).unwrap();
        assert_eq!(Bounds::from_limits(&config.limits), Bounds::default());
    }

    #[test]
    fn sizes_are_the_json_text_length() {
        let b = bucket(json!({"a": 1, "name": "é\"x"}));
        assert_eq!(value_bytes(&b.value), serde_json::to_string(&b.value).unwrap().len());
    }

    #[test]
    fn usage_refuses_what_would_break_a_bound_and_keeps_its_total() {
        let bounds = Bounds { buckets: 2, fields: 3, bucket_bytes: 40, device_bytes: 60 };
        let mut usage = Usage::default();
        assert!(usage.admit(&bounds, None, &bucket(json!({"pad": "x".repeat(20)}))));
        assert_eq!(usage.total(), 30);
        assert!(!usage.admit(&bounds, None, &bucket(json!({"pad": "x".repeat(40)}))), "over the bucket bound");
        assert!(!usage.admit(&bounds, None, &bucket(json!({"pad": "x".repeat(30)}))), "over the device bound");
        assert!(!usage.admit(&bounds, None, &bucket(json!({"a": 1, "b": 2, "c": 3, "d": 4}))), "over the field bound");
        assert!(
            usage.admit(&bounds, Some(0), &bucket(json!({"pad": "x".repeat(25)}))),
            "a replaced bucket counts once"
        );
        assert_eq!(usage.total(), 35);
        assert!(usage.admit(&bounds, None, &bucket(json!({"b": 1}))));
        assert!(!usage.admit(&bounds, None, &bucket(json!({"c": 1}))), "over the bucket count");
        assert_eq!(usage.total(), 42);
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
