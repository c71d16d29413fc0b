//! Bucket keys (`<type>.<id>`): their canonical form, their parts, and the bucket types the
//! firmware names as members of a body.

/// The bucket types a thermostat uses (device-protocol §9.2). In a v3 PUT body the top-level
/// members carrying buckets are named after them.
pub const KNOWN_TYPES: [&str; 28] = [
    "device",
    "shared",
    "structure",
    "schedule",
    "custom_schedule",
    "user",
    "topaz",
    "demand_response",
    "demand_response_event",
    "where",
    "kryptonite",
    "diagnostics",
    "device_alert_dialog",
    "servicegroup",
    "link",
    "message",
    "tuneups",
    "utility",
    "diamond_sensor_config",
    "diamond_sensor_event",
    "rate_plan",
    "tou",
    "demand_charge",
    "demand_charge_event",
    "hvac_partner",
    "rcs_settings",
    "cloud_algo",
    "occupancy",
];

pub fn is_known_type(name: &str) -> bool {
    KNOWN_TYPES.contains(&name)
}

/// The key a bucket is stored and looked up under. Firmware 4.3.3 corrupts its own copy of a
/// key after parsing some PUT acknowledgements, appending ` .$version` or ` ._sync` (repeatedly:
/// `device.S .$version .$version`), and then sends the corrupted key everywhere. No real key
/// contains a space, so the canonical key is the text before the first one.
pub fn canonical(key: &str) -> &str {
    key.split(' ').next().unwrap_or_default()
}

/// `shared.02AA…` → `("shared", "02AA…")`; a key without a dot has no parts.
pub fn split(key: &str) -> Option<(&str, &str)> {
    key.split_once('.')
}

/// Decodes `%XX` escapes (the request-line repair turns the firmware's spaces into `%20`);
/// anything that is not a complete escape, or would not be UTF-8, is kept as it is.
pub fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
            {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| raw.to_string())
}

/// The serial a bucket listing names in its path (`…/device/device.S`, `…/device/S`), after
/// the request-line repair and with a corrupted suffix removed; `None` without `/device/`.
pub fn listing_serial(path: &str) -> Option<String> {
    let (_, tail) = path.rsplit_once("device/")?;
    let decoded = percent_decode(tail);
    let key = canonical(&decoded);
    let serial = key.strip_prefix("device.").unwrap_or(key);
    crate::domain::serial::sanitize(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    // spec v3-firmware §7 vector 8
    #[test]
    fn corrupted_suffixes_are_cut_at_the_first_space() {
        assert_eq!(canonical("device.S"), "device.S");
        assert_eq!(canonical("device.S ._sync"), "device.S");
        assert_eq!(canonical("device.S .$version"), "device.S");
        assert_eq!(canonical("device.S .$version .$version .$version"), "device.S");
        assert_eq!(canonical(""), "");
        assert_eq!(canonical(" ._sync"), "");
    }

    #[test]
    fn keys_split_at_the_first_dot() {
        assert_eq!(split("shared.02AA01AC12345678"), Some(("shared", "02AA01AC12345678")));
        assert_eq!(split("structure.a.b"), Some(("structure", "a.b")));
        assert_eq!(split("nodot"), None);
        assert!(is_known_type("device_alert_dialog"));
        assert!(!is_known_type("session"));
    }

    #[test]
    fn percent_escapes_decode_and_broken_ones_stay() {
        assert_eq!(percent_decode("device.S%20._sync"), "device.S ._sync");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz%41"), "a%zzA");
        assert_eq!(percent_decode("%ff"), "%ff", "not UTF-8: kept as sent");
    }

    // spec v3-firmware §7 vector 23
    #[test]
    fn the_listing_path_names_the_serial_without_the_suffix() {
        let s = Some("02AA01AC12345678".to_string());
        assert_eq!(listing_serial("/nest/transport/v3/device/device.02AA01AC12345678"), s);
        assert_eq!(listing_serial("/nest/transport/v3/device/device.02AA01AC12345678%20._sync"), s);
        assert_eq!(listing_serial("/nest/transport/v3/device/device.02AA01AC12345678 ._sync"), s);
        assert_eq!(listing_serial("/nest/transport/v3/device/device.02aa01ac12345678%20.$version%20.$version"), s);
        assert_eq!(listing_serial("/nest/transport/device/02AA01AC12345678"), s);
        assert_eq!(listing_serial("/nest/transport/v3/other"), None);
    }
}
