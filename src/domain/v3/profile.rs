//! The two v3 firmware profiles, the response shapes each one gets, and how a thermostat's
//! profile is chosen.
//!
//! Two forks of the reference each made one firmware work and disagree on almost every shape
//! (spec `v3-firmware.md` §8). Each disagreement is one field of [`Shape`]; the two constants
//! below say which way roost goes and why, so a report from a real thermostat changes one line.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use super::json::Spacing;

/// A v3 firmware family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Software 4.3.3 (Display-2.14, EU Gen 2 with Heat Link).
    V43,
    /// `nlclient` 4.0.6 (Display-2.8).
    V40,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::V43 => "4.3",
            Profile::V40 => "4.0",
        }
    }

    pub fn shape(self) -> &'static Shape {
        match self {
            Profile::V43 => &V43,
            Profile::V40 => &V40,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "4.3" => Ok(Profile::V43),
            "4.0" => Ok(Profile::V40),
            other => Err(format!("'{other}' is not a v3 profile (4.3 or 4.0)")),
        }
    }
}

/// How a PUT is acknowledged (§8 Q1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEnvelope {
    /// `{"shared.S":{"_sync":{"$version":6,"$timestamp":T}}}`: top-level keys are whole bucket
    /// keys, the markers sit under `_sync`.
    Flat,
    /// `{"shared":{"S":{"$version":6,"$timestamp":T}}}`: nested by type, then id.
    Nested,
}

/// What a bucket listing (`GET {t}/v3/device/device.S`) answers (§8 Q3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingShape {
    /// `{"objects":[{"object_revision","object_timestamp","object_key"}]}`, no values.
    ObjectsMetadata,
    /// Every bucket nested by type and id, value fields followed by `$version`/`$timestamp`.
    NestedValues,
}

/// How a subscribe is held while there is nothing to send, and what a change during the hold
/// does (§8 Q5, Q6: the two go together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Headers at once, chunked, no `X-nl-skv-*`. A change during the hold can no longer carry
    /// its SKV headers, so it ends the response with an empty body (the "tickle"); the device
    /// resubscribes and the change goes out as an immediate SKV response.
    HeadersFirst,
    /// Nothing is sent until there is data: a change is answered with one complete SKV
    /// response (`Content-Length`), the hold timeout with an empty one.
    Withheld,
}

/// Every response shape on which the profiles differ.
#[derive(Debug, PartialEq, Eq)]
pub struct Shape {
    pub ack: AckEnvelope,
    /// Whether a PUT acknowledgement carries the merged value of a bucket the PUT changed (§8 Q2).
    pub ack_echoes_changed_value: bool,
    pub listing: ListingShape,
    pub hold: Hold,
    /// Whether `/nest/entry` carries the paired device's `user.*` and `structure.*` buckets (§8 Q8).
    pub entry_inlines_pairing_buckets: bool,
    /// Separators of every v3 body (§8 Q9).
    pub spacing: Spacing,
    pub content_type: &'static str,
}

/// Firmware 4.3.3: the luizribeiro fork's shapes, the only ones tested on that firmware.
pub const V43: Shape = Shape {
    // Q1: 4.3.3 looks the acknowledged bucket up by the top-level key and logs "no bucket exists
    // for payload" when it is not exactly `<type>.<S>`. It finds the markers by searching the
    // text for `"$version":` and `"$timestamp":`; with the markers directly in the bucket object
    // it corrupted its keys on every cycle, hence `_sync`.
    ack: AckEnvelope::Flat,
    // Q2: the fork reports that 4.3.3 ignores an acknowledgement of a changed bucket without
    // its value. The echo is the merged value the device just wrote, so it can only repeat it.
    ack_echoes_changed_value: true,
    // Q3: a listing with `$version` members made 4.3.3 crash-loop `nlclient`; the objects-array
    // metadata is what it was seen to accept. It gets its values from SKV pushes and `/entry`.
    listing: ListingShape::ObjectsMetadata,
    // Q5/Q6: a subscribe without headers is abandoned by 4.3.3 after about 8 s.
    hold: Hold::HeadersFirst,
    // Q8: 4.3.3 arms its subscribe only once its bucket store is populated, it accepts buckets
    // inline in `/entry`, and it never subscribes to `user.*`/`structure.*`.
    entry_inlines_pairing_buckets: true,
    // Q9: the fork sent Python's spaced JSON and saw it work, but nothing suggests 4.3.3 needs
    // the spaces; compact keeps the `"$version":` token intact and is one rule for both.
    spacing: Spacing::Compact,
    content_type: "application/json",
};

/// Firmware 4.0.6: the drytoad fork's shapes, read from the 4.0.6 binary and run on two units.
pub const V40: Shape = Shape {
    // Q1: 4.0.6's update parser reads `$version`/`$timestamp` inside each nested bucket.
    ack: AckEnvelope::Nested,
    // Q2: an echoed value would overwrite setpoints the schedule moved meanwhile (the same
    // rule the objects dialect follows); 4.0.6 clears its dirty flag on the markers alone.
    ack_echoes_changed_value: false,
    // Q3: 4.0.6 bootstraps its bucket store from the listing's values.
    listing: ListingShape::NestedValues,
    // Q5/Q6: 4.0.6 was run with responses withheld for the whole hold.
    hold: Hold::Withheld,
    // Q8: 4.0.6 bootstraps through the listing; `/entry` stays the plain reference body.
    entry_inlines_pairing_buckets: false,
    // Q9: 4.0.6's nested scanner does not skip separator whitespace.
    spacing: Spacing::Compact,
    content_type: "application/json; charset=utf-8",
};

/// `V3_DIALECT`: detect per thermostat, or force one profile for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forced {
    #[default]
    Auto,
    All(Profile),
}

impl FromStr for Forced {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" | "" => Ok(Forced::Auto),
            other => other.parse().map(Forced::All).map_err(|_| format!("'{other}' is not auto, 4.3 or 4.0")),
        }
    }
}

/// `V3_DIALECT_OVERRIDES`: `SERIAL:4.0,SERIAL:4.3`, for a household whose thermostats need
/// different profiles and whose detection is wrong. A setting rather than a control-port
/// route: which firmware hangs on which wall is a fact of the installation that changes only
/// with the hardware (4.x units cannot be upgraded), it belongs with `V3_DIALECT` in the same
/// `.env`, and a route would give every control-key holder a way to break a thermostat's sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides(HashMap<String, Profile>);

impl Overrides {
    pub fn get(&self, serial: &str) -> Option<Profile> {
        self.0.get(serial).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Overrides {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = HashMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (serial, profile) =
                item.rsplit_once(':').ok_or_else(|| format!("'{item}' is not SERIAL:4.3 or SERIAL:4.0"))?;
            let clean = crate::domain::serial::sanitize(serial)
                .ok_or_else(|| format!("'{serial}' is not a thermostat serial"))?;
            map.insert(clean, profile.parse::<Profile>()?);
        }
        Ok(Self(map))
    }
}

/// Where a thermostat's software version was read, most trusted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VersionSource {
    /// The device bucket's `current_version` field.
    DeviceBucket,
    /// The `X-nl-device-swversion` request header.
    Header,
    /// The `software_version` form field of `/nest/entry`.
    Entry,
}

impl VersionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSource::Entry => "entry",
            VersionSource::Header => "header",
            VersionSource::DeviceBucket => "device_bucket",
        }
    }
}

impl FromStr for VersionSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "entry" => Ok(VersionSource::Entry),
            "header" => Ok(VersionSource::Header),
            "device_bucket" => Ok(VersionSource::DeviceBucket),
            other => Err(format!("unknown version source '{other}'")),
        }
    }
}

/// Major and minor of a software version (`4.3.3` → (4, 3), `5.9.4-5` → (5, 9)).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The profile a software version asks for: `4.0.*` → 4.0; `4.3.*`, other or unreadable
/// versions → 4.3, the firmware of the reported population (no source tells the two apart on
/// the wire; this mapping is the spec's recommendation, §1).
pub fn for_version(version: Option<&str>) -> Profile {
    match version.and_then(major_minor) {
        Some((4, 0)) => Profile::V40,
        _ => Profile::V43,
    }
}

/// Whether a version is one of the 4.x firmwares that speak v3. Versions from 5 on speak the
/// objects dialect; an unknown version may be either.
pub fn speaks_v3(version: Option<&str>) -> Option<bool> {
    version.and_then(major_minor).map(|(major, _)| major < 5)
}

/// Why a thermostat got its profile (logged with the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Override,
    Forced,
    Reported(VersionSource),
    Unknown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Override => "V3_DIALECT_OVERRIDES",
            Reason::Forced => "V3_DIALECT",
            Reason::Reported(source) => source.as_str(),
            Reason::Unknown => "no version reported",
        }
    }
}

/// The profile of one thermostat: its override, else the forced profile, else its reported
/// version (the caller passes the most trusted one it has), else 4.3.
pub fn select(
    serial: &str,
    forced: Forced,
    overrides: &Overrides,
    reported: Option<(&str, VersionSource)>,
) -> (Profile, Reason) {
    if let Some(p) = overrides.get(serial) {
        return (p, Reason::Override);
    }
    if let Forced::All(p) = forced {
        return (p, Reason::Forced);
    }
    match reported {
        Some((version, source)) => (for_version(Some(version)), Reason::Reported(source)),
        None => (Profile::V43, Reason::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_profiles() {
        assert_eq!(for_version(Some("4.0.6")), Profile::V40);
        assert_eq!(for_version(Some(" 4.0 ")), Profile::V40);
        assert_eq!(for_version(Some("4.3.3")), Profile::V43);
        assert_eq!(for_version(Some("4.2.1")), Profile::V43, "unknown 4.x: the reported population");
        assert_eq!(for_version(Some("5.9.4-5")), Profile::V43);
        assert_eq!(for_version(Some("garbage")), Profile::V43);
        assert_eq!(for_version(None), Profile::V43);
        assert_eq!(speaks_v3(Some("4.0.6")), Some(true));
        assert_eq!(speaks_v3(Some("5.9.4-5")), Some(false));
        assert_eq!(speaks_v3(Some("")), None);
        assert_eq!(speaks_v3(None), None);
    }

    #[test]
    fn selection_prefers_the_override_then_the_forced_profile_then_the_version() {
        let overrides: Overrides = "02aa01ac12345678:4.0".parse().unwrap();
        let s = "02AA01AC12345678";
        let entry = Some(("4.3.3", VersionSource::Entry));
        assert_eq!(select(s, Forced::All(Profile::V43), &overrides, entry), (Profile::V40, Reason::Override));
        let none = Overrides::default();
        assert_eq!(select(s, Forced::All(Profile::V40), &none, entry), (Profile::V40, Reason::Forced));
        assert_eq!(
            select(s, Forced::Auto, &none, Some(("4.0.6", VersionSource::Header))),
            (Profile::V40, Reason::Reported(VersionSource::Header))
        );
        assert_eq!(select(s, Forced::Auto, &none, None), (Profile::V43, Reason::Unknown));
    }

    #[test]
    fn settings_parse_and_bad_values_say_why() {
        assert_eq!("auto".parse::<Forced>(), Ok(Forced::Auto));
        assert_eq!("4.0".parse::<Forced>(), Ok(Forced::All(Profile::V40)));
        assert!("4.1".parse::<Forced>().unwrap_err().contains("4.1"));
        let o: Overrides = " SIM0000000000001:4.0 , SIM0000000000002:4.3 ,".parse().unwrap();
        assert_eq!(o.get("SIM0000000000001"), Some(Profile::V40));
        assert_eq!(o.get("SIM0000000000002"), Some(Profile::V43));
        assert!("".parse::<Overrides>().unwrap().is_empty());
        assert!("SIM0000000000001".parse::<Overrides>().unwrap_err().contains("SERIAL:4.3"));
        assert!("abc:4.0".parse::<Overrides>().unwrap_err().contains("serial"));
        assert!("SIM0000000000001:5".parse::<Overrides>().unwrap_err().contains("profile"));
    }

    #[test]
    fn sources_rank_entry_over_header_over_bucket() {
        assert!(VersionSource::Entry > VersionSource::Header);
        assert!(VersionSource::Header > VersionSource::DeviceBucket);
        for s in [VersionSource::Entry, VersionSource::Header, VersionSource::DeviceBucket] {
            assert_eq!(s.as_str().parse::<VersionSource>(), Ok(s));
        }
    }
}
