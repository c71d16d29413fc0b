//! Bounds on what one thermostat may store (buckets, fields, bytes), so made-up data cannot grow
//! memory and the database without end. Real thermostats stay far below them: a full post-boot
//! upload (239 device fields, shared, a schedule, link, where) is about 12 KB, and the largest
//! bucket a thermostat can hold, a schedule with all 96 setpoints on every day, about 86 KB.

use std::io::Write;

use crate::domain::bucket::{Bucket, Fields};

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
}
