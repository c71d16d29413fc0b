//! Who may do what on the control port, as pure rules: permission levels, API key scopes and
//! format, and the networks (CIDR lists) that are trusted without a key.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What a request needs. `Admin` covers keys, MQTT settings, scans, deletes and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Read,
    Write,
    Admin,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Admin => "admin",
        }
    }
}

/// What a caller holds. An `nle_` key carries `read` and/or `write`, never `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub admin: bool,
}

impl Perms {
    pub const NONE: Perms = Perms { read: false, write: false, admin: false };
    pub const READ_WRITE: Perms = Perms { read: true, write: true, admin: false };
    pub const ALL: Perms = Perms { read: true, write: true, admin: true };

    pub fn allows(self, level: Level) -> bool {
        match level {
            Level::Read => self.read || self.admin,
            Level::Write => self.write || self.admin,
            Level::Admin => self.admin,
        }
    }

    /// The scopes of an API key, `read,write` style (at least one, nothing else).
    pub fn parse_scopes(raw: &str) -> Result<Perms, String> {
        let mut perms = Perms::NONE;
        for scope in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match scope.to_ascii_lowercase().as_str() {
                "read" => perms.read = true,
                "write" => perms.write = true,
                other => return Err(format!("unknown scope '{other}' (use read, write or read,write)")),
            }
        }
        if perms == Perms::NONE {
            return Err("a key needs at least one scope: read, write or read,write".into());
        }
        Ok(perms)
    }

    /// `read`, `write` or `read,write`, as stored and shown.
    pub fn scopes(self) -> String {
        let mut out = Vec::new();
        if self.read {
            out.push("read");
        }
        if self.write {
            out.push("write");
        }
        out.join(",")
    }
}

/// Keys are `nle_` and 64 hex digits (256 random bits), like the hosted service's.
pub const KEY_PREFIX: &str = "nle_";
const KEY_HEX_DIGITS: usize = 64;

/// A new key from 32 random bytes.
pub fn format_key(random: &[u8; 32]) -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_HEX_DIGITS);
    key.push_str(KEY_PREFIX);
    for b in random {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// Whether a presented token has the shape of an API key (then it is looked up).
pub fn is_key_shaped(token: &str) -> bool {
    token
        .strip_prefix(KEY_PREFIX)
        .is_some_and(|hex| hex.len() == KEY_HEX_DIGITS && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What is stored instead of the key: SHA-256, lower-case hex. Hex digits are folded to lower
/// case first, so a key typed in upper case still matches.
pub fn key_hash(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.to_ascii_lowercase().as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The part of a key that may be shown again: its prefix and first and last hex digits.
pub fn key_preview(key: &str) -> String {
    let hex = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    let head: String = hex.chars().take(6).collect();
    let tail: String = hex.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{KEY_PREFIX}{head}…{tail}")
}

/// An address range such as `192.168.1.0/24`; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr { network: IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)), prefix }
    }

    const fn v6(first: u16, prefix: u8) -> Cidr {
        Cidr { network: IpAddr::V6(std::net::Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, 0)), prefix }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(u32::from(ip).into(), 32, self.prefix) == u32::from(net).into(),
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(ip), 128, self.prefix) == u128::from(net),
            _ => false,
        }
    }

    /// Every address of an IPv4 range but its network and broadcast addresses (for a /31 or
    /// /32, every address).
    pub fn hosts_v4(&self) -> Vec<std::net::Ipv4Addr> {
        let IpAddr::V4(net) = self.network else { return Vec::new() };
        let first = u32::from(net);
        let size = 1u64 << (32 - u32::from(self.prefix));
        let all = (0..size).map(|i| std::net::Ipv4Addr::from(first.wrapping_add(i as u32)));
        if size <= 2 { all.collect() } else { all.skip(1).take((size - 2) as usize).collect() }
    }
}

fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(prefix).min(width);
    let mask = (!0u128 << (width - keep)) & if width == 128 { !0 } else { (1u128 << width) - 1 };
    bits & mask
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(raw: &str) -> Result<Cidr, String> {
        let raw = raw.trim();
        let (addr, prefix) = match raw.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw, None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| format!("'{raw}' is not an address or CIDR range"))?;
        let ip = canonical(ip);
        let width: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("'{raw}': the prefix length must be 0 to {width}"))?,
        };
        let network = match ip {
            IpAddr::V4(v4) => IpAddr::V4((masked(u32::from(v4).into(), 32, prefix) as u32).into()),
            IpAddr::V6(v6) => IpAddr::V6(masked(u128::from(v6), 128, prefix).into()),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A comma-separated list of ranges (empty entries are skipped).
pub fn parse_networks(raw: &str) -> Result<Vec<Cidr>, String> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Cidr::from_str).collect()
}

/// An IPv4 address carried in IPv6 (`::ffff:192.168.1.5`, from a dual-stack socket) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The home network: loopback, private (RFC 1918, IPv6 unique-local), link-local and the
/// carrier-grade NAT range VPNs such as Tailscale use. With no key and no trusted networks
/// configured, callers from here are trusted, as the reference trusted its whole LAN.
pub const LOCAL_NETWORKS: [Cidr; 9] = [
    Cidr::v4(127, 0, 0, 0, 8),
    Cidr::v4(10, 0, 0, 0, 8),
    Cidr::v4(172, 16, 0, 0, 12),
    Cidr::v4(192, 168, 0, 0, 16),
    Cidr::v4(169, 254, 0, 0, 16),
    Cidr::v4(100, 64, 0, 0, 10),
    Cidr { network: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), prefix: 128 },
    Cidr::v6(0xfc00, 7),
    Cidr::v6(0xfe80, 10),
];

/// Where roost may open outbound connections for a scan or configure: loopback and private
/// ranges only, so the control port cannot be used to reach the internet or other hosts.
pub fn is_scan_target(ip: IpAddr) -> bool {
    const TARGETS: [Cidr; 6] = [
        Cidr::v4(127, 0, 0, 0, 8),
        Cidr::v4(10, 0, 0, 0, 8),
        Cidr::v4(172, 16, 0, 0, 12),
        Cidr::v4(192, 168, 0, 0, 16),
        Cidr { network: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), prefix: 128 },
        Cidr::v6(0xfc00, 7),
    ];
    TARGETS.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn levels_and_scopes() {
        let read = Perms::parse_scopes("read").unwrap();
        assert!(read.allows(Level::Read) && !read.allows(Level::Write) && !read.allows(Level::Admin));
        let write_only = Perms::parse_scopes(" WRITE ").unwrap();
        assert!(!write_only.allows(Level::Read) && write_only.allows(Level::Write));
        assert_eq!(Perms::parse_scopes("read,write").unwrap(), Perms::READ_WRITE);
        assert_eq!(Perms::READ_WRITE.scopes(), "read,write");
        assert!(Perms::ALL.allows(Level::Admin) && Perms::ALL.allows(Level::Read));
        assert!(Perms::parse_scopes("admin").unwrap_err().contains("unknown scope 'admin'"));
        assert!(Perms::parse_scopes(" , ").is_err());
    }

    #[test]
    fn keys_have_the_hosted_format_and_are_stored_hashed() {
        let key = format_key(&[0xab; 32]);
        assert_eq!(key.len(), 68);
        assert!(is_key_shaped(&key));
        assert!(!is_key_shaped("nle_abc"));
        assert!(!is_key_shaped(&key.replace("nle_", "nlapi_")));
        assert!(!is_key_shaped(&format!("{}g", &key[..67])));
        // SHA-256 of the key text, and case-insensitive in its hex digits.
        assert_eq!(key_hash(&key), key_hash(&key.to_ascii_uppercase().replacen("NLE_", "nle_", 1)));
        assert_eq!(key_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(key_preview(&key), "nle_ababab…abab");
    }

    #[test]
    fn cidr_ranges() {
        let lan: Cidr = "192.168.1.77/24".parse().unwrap();
        assert_eq!(lan.to_string(), "192.168.1.0/24");
        assert!(lan.contains(ip("192.168.1.5")));
        assert!(lan.contains(ip("::ffff:192.168.1.5")), "IPv4-mapped from a dual-stack socket");
        assert!(!lan.contains(ip("192.168.2.5")));
        assert!(!lan.contains(ip("fd00::1")));
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd12:3456::/32".parse().unwrap();
        assert!(v6.contains(ip("fd12:3456::9")) && !v6.contains(ip("fd12:3457::9")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        for bad in ["192.168.1.0/33", "lan", "192.168.1/24", "::1/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(parse_networks("10.0.0.0/8, ,fd00::/8").unwrap().len(), 2);
        assert!(parse_networks("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn hosts_of_a_range() {
        let hosts = "192.168.1.0/24".parse::<Cidr>().unwrap().hosts_v4();
        assert_eq!(hosts.len(), 254);
        assert_eq!(hosts[0].to_string(), "192.168.1.1");
        assert_eq!(hosts[253].to_string(), "192.168.1.254");
        assert_eq!("10.0.0.7/32".parse::<Cidr>().unwrap().hosts_v4().len(), 1);
    }

    #[test]
    fn only_private_and_loopback_addresses_are_scanned() {
        for ok in
            ["127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.0.10", "::1", "fd00::5"]
        {
            assert!(is_scan_target(ip(ok)), "{ok}");
        }
        for no in [
            "8.8.8.8",
            "172.32.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "2001:db8::1",
            "224.0.0.1",
        ] {
            assert!(!is_scan_target(ip(no)), "{no}");
        }
    }

    #[test]
    fn the_home_network() {
        for local in ["127.0.0.1", "192.168.1.9", "10.0.0.1", "100.100.1.1", "fe80::1", "::1"] {
            assert!(LOCAL_NETWORKS.iter().any(|c| c.contains(ip(local))), "{local}");
        }
        for public in ["8.8.8.8", "2001:4860::8888", "172.32.0.1"] {
            assert!(!LOCAL_NETWORKS.iter().any(|c| c.contains(ip(public))), "{public}");
        }
    }
}
