//! Which `Host` names a browser may use to reach the control port, against DNS rebinding: a web
//! page on `rebind.evil.example` whose name is re-pointed at roost's address becomes
//! "same-origin" with it, so the browser lets the page read status and send commands, and its
//! `Origin` matches the request's own `Host`. The one thing such a request cannot fake is that
//! `Host` names the attacker's domain. So a request that comes from a browser (it carries
//! `Origin` or a `Sec-Fetch-*` header) must name roost by an address or a name that is allowed:
//! IP literals, `localhost`, `API_ORIGIN`'s host, the machine's hostname, `*.local`, and
//! `ALLOWED_HOSTS`. Programs that are not browsers (Home Assistant, Homebridge, scripts) send
//! neither header and may use any name, such as a docker service name or a reverse proxy's.
//! `access` applies this to every request granted without a key (an open port, a trusted or the
//! home network); a key is something a rebinding page does not have.

use std::net::IpAddr;

use actix_web::http::header::{self, HeaderMap};

#[derive(Clone, Debug, Default)]
pub struct AllowedHosts {
    /// Exact names, lower case.
    names: Vec<String>,
    /// `*.example.com` entries, kept as `.example.com`.
    suffixes: Vec<String>,
    /// `ALLOWED_HOSTS=*`: every name (turns the protection off).
    any: bool,
}

impl AllowedHosts {
    /// The defaults plus `extra` (`ALLOWED_HOSTS` entries: names, `*.domain` or `*`).
    pub fn new<'a>(defaults: impl IntoIterator<Item = &'a str>, extra: &[String]) -> Self {
        let mut hosts = Self { names: Vec::new(), suffixes: vec![".local".into(), ".localhost".into()], any: false };
        hosts.names.push("localhost".into());
        for entry in defaults.into_iter().map(str::to_string).chain(extra.iter().cloned()) {
            let entry = normalise(&entry);
            if entry == "*" {
                hosts.any = true;
            } else if let Some(domain) = entry.strip_prefix("*.") {
                hosts.suffixes.push(format!(".{domain}"));
            } else if !entry.is_empty() {
                hosts.names.push(entry);
            }
        }
        hosts
    }

    /// Whether a `Host` header value (`name`, `name:port`, `1.2.3.4:80`, `[::1]:80`) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        let name = normalise(strip_port(host));
        if self.any || name.is_empty() || is_ip_literal(&name) {
            return true;
        }
        self.names.contains(&name) || self.suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }

    /// Why a request must be refused: it comes from a browser and names roost by a host that
    /// is not allowed. A page on an origin listed in `CORS_ORIGINS` was allowed by the operator.
    pub fn refusal(&self, headers: &HeaderMap, cors_origins: &[String]) -> Option<String> {
        let text = |name: &header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        if !from_browser(headers) {
            return None;
        }
        let host = text(&header::HOST).unwrap_or_default();
        if self.allows(host) {
            return None;
        }
        if text(&header::ORIGIN).is_some_and(|origin| cors_origins.iter().any(|o| o == origin)) {
            return None;
        }
        Some(format!("Host '{host}' is not allowed for browsers (add it to ALLOWED_HOSTS)"))
    }
}

/// A request a browser made: browsers send `Origin` on cross-origin and state-changing requests
/// and `Sec-Fetch-*` on every request; other programs send neither.
fn from_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN) || headers.keys().any(|name| name.as_str().starts_with("sec-fetch-"))
}

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_ip_literal(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
}

/// The machine's own name (what `hostname` prints), if the system reports one.
pub fn machine_hostname() -> Option<String> {
    let name = rustix::system::uname().nodename().to_str().ok()?.trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn hosts() -> AllowedHosts {
        AllowedHosts::new(["Nest.Lan", "roost-box"], &["*.home.arpa".to_string(), "proxy.example.com".into()])
    }

    #[test]
    fn addresses_and_configured_names_are_allowed() {
        let h = hosts();
        for ok in [
            "192.168.1.50:8082",
            "10.0.0.1",
            "[::1]:8082",
            "[fe80::1]",
            "localhost:8082",
            "LOCALHOST",
            "nest.lan",
            "nest.lan.:8082",
            "roost-box:8082",
            "roost-box.local",
            "thermostats.local:8082",
            "a.home.arpa",
            "proxy.example.com",
            "",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for refused in ["rebind.evil.example:8082", "evil.example", "home.arpa.evil", "nest.lan.evil", "localhost.evil"]
        {
            assert!(!h.allows(refused), "{refused}");
        }
        assert!(AllowedHosts::new([], &["*".to_string()]).allows("anything.example"));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn only_browser_requests_with_a_foreign_host_are_refused() {
        let h = hosts();
        let cors = vec!["http://ha.example.com:8123".to_string()];
        let rebound = headers(&[("host", "rebind.evil.example:8082"), ("origin", "http://rebind.evil.example:8082")]);
        assert!(h.refusal(&rebound, &cors).is_some());
        let same_origin_get = headers(&[("host", "rebind.evil.example:8082"), ("sec-fetch-site", "same-origin")]);
        assert!(h.refusal(&same_origin_get, &cors).is_some());
        let script = headers(&[("host", "roost:8082")]);
        assert!(h.refusal(&script, &cors).is_none(), "not a browser: a docker service name is fine");
        let listed = headers(&[("host", "roost.example.com"), ("origin", "http://ha.example.com:8123")]);
        assert!(h.refusal(&listed, &cors).is_none(), "a CORS_ORIGINS page");
        let by_address = headers(&[("host", "192.168.1.50:8082"), ("origin", "http://192.168.1.50:8082")]);
        assert!(h.refusal(&by_address, &cors).is_none());
    }
}
