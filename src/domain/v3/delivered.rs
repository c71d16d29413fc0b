//! What each v3 thermostat was last told about each bucket. Firmware 4.3.3 lists bare keys
//! in its subscribe, so the server cannot read what the device holds; it knows what it
//! delivered (an SKV push, a PUT acknowledgement, an inline `/entry` bucket), and the device
//! holds exactly that unless it rebooted.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Delivered {
    by_serial: HashMap<String, HashMap<String, (i64, i64)>>,
}

impl Delivered {
    /// The device was just told `key` is at `(revision, timestamp)`: it applies what a push or
    /// an acknowledgement says, so the newest report replaces the previous one.
    pub fn record(&mut self, serial: &str, key: &str, revision: i64, timestamp: i64) {
        let keys = self.by_serial.entry(serial.to_string()).or_default();
        match keys.get_mut(key) {
            Some(slot) => *slot = (revision, timestamp),
            None => {
                keys.insert(key.to_string(), (revision, timestamp));
            }
        }
    }

    /// A PUT acknowledgement told the device `key` is at `(revision, timestamp)`. It counts only
    /// for a bucket the device already received: until then 4.3.3 rejects the acknowledgement
    /// ("no bucket exists for payload"), and the bucket must still go out once on a subscribe.
    pub fn acknowledged(&mut self, serial: &str, key: &str, revision: i64, timestamp: i64) {
        if let Some(slot) = self.by_serial.get_mut(serial).and_then(|keys| keys.get_mut(key)) {
            *slot = (revision, timestamp);
        }
    }

    /// The revision and timestamp last delivered for `key`, if any.
    pub fn held(&self, serial: &str, key: &str) -> Option<(i64, i64)> {
        self.by_serial.get(serial)?.get(key).copied()
    }

    /// The device (re)booted or was deleted: its bucket store may be empty, so every bucket
    /// goes out again once (a device that has never received a bucket cannot accept an
    /// acknowledgement for it).
    pub fn forget(&mut self, serial: &str) {
        self.by_serial.remove(serial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_report_counts_and_a_reboot_forgets() {
        let mut d = Delivered::default();
        assert_eq!(d.held("S", "shared.S"), None, "first contact: nothing delivered");
        d.record("S", "shared.S", 5, 500);
        d.record("S", "device.S", 2, 200);
        d.record("T", "shared.T", 1, 100);
        assert_eq!(d.held("S", "shared.S"), Some((5, 500)));
        d.record("S", "shared.S", 6, 499);
        assert_eq!(d.held("S", "shared.S"), Some((6, 499)), "what the device was told last");
        d.acknowledged("S", "shared.S", 7, 700);
        assert_eq!(d.held("S", "shared.S"), Some((7, 700)), "the device's own write is not echoed");
        d.acknowledged("S", "schedule.S", 1, 100);
        assert_eq!(d.held("S", "schedule.S"), None, "never received: it still goes out once");
        d.forget("S");
        assert_eq!(d.held("S", "shared.S"), None);
        assert_eq!(d.held("S", "device.S"), None);
        assert_eq!(d.held("T", "shared.T"), Some((1, 100)));
    }
}
