//! Where a thermostat's serial comes from, and what counts as one.

use base64::Engine;

/// Shortest string accepted as a serial after sanitising (real serials have 16 characters).
pub const MIN_SERIAL_LEN: usize = 10;
const MAX_SERIAL_LEN: usize = 64;

/// Keeps `[A-Za-z0-9]`, upper-cases, and rejects what is too short (or long) to be a serial.
pub fn sanitize(raw: &str) -> Option<String> {
    let clean: String = raw.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect();
    if clean.len() < MIN_SERIAL_LEN || clean.len() > MAX_SERIAL_LEN {
        return None;
    }
    Some(clean)
}

/// Twelve hex digits: what firmware that authenticates with its MAC sends as the username.
/// Real serials have 16 characters, so such a username is never taken as a serial.
pub fn is_mac(s: &str) -> bool {
    s.len() == 12 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `d.SERIAL.suffix` → `SERIAL`, `nest.SERIAL` → `SERIAL`; no dot → the whole value.
fn dotted_part(user: &str) -> &str {
    let mut parts = user.split('.');
    let first = parts.next().unwrap_or_default();
    match parts.next() {
        Some(second) if !second.is_empty() => second,
        Some(_) => first,
        None => user,
    }
}

/// Username and password of an `Authorization: Basic` header.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The identity sources a device request offers, already pulled out of the request.
#[derive(Debug, Default, Clone)]
pub struct Identity<'a> {
    pub basic_user: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub device_serial: Option<&'a str>,
    pub query_serial: Option<&'a str>,
    pub path_serial: Option<&'a str>,
    /// The body's `session` (`<mac><serial>`), used when the Basic user is a MAC address.
    pub session: Option<&'a str>,
}

impl Identity<'_> {
    /// The first source that yields a valid serial, in the reference's order.
    pub fn serial(&self) -> Option<String> {
        if let Some(user) = self.basic_user {
            let candidate = dotted_part(user);
            let clean: String = candidate.chars().filter(char::is_ascii_alphanumeric).collect();
            if is_mac(&clean) {
                if let Some(serial) = self.session.and_then(|s| serial_from_session(s, &clean)) {
                    return Some(serial);
                }
            } else if let Some(serial) = sanitize(candidate) {
                return Some(serial);
            }
        }
        let candidates =
            [self.client_id.map(dotted_part), self.device_id, self.device_serial, self.query_serial, self.path_serial];
        candidates.into_iter().flatten().find_map(sanitize)
    }
}

/// Firmware that sends its MAC as the username names itself in `session` as `<mac><serial>`.
fn serial_from_session(session: &str, mac: &str) -> Option<String> {
    let clean: String = session.chars().filter(char::is_ascii_alphanumeric).collect();
    let rest = clean.get(..mac.len()).filter(|p| p.eq_ignore_ascii_case(mac)).map(|_| &clean[mac.len()..])?;
    sanitize(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pw: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pw))
    }

    #[test]
    fn sanitising() {
        assert_eq!(sanitize("abc123def456").as_deref(), Some("ABC123DEF456"));
        assert_eq!(sanitize("ABC-123-DEF-456").as_deref(), Some("ABC123DEF456"));
        assert_eq!(sanitize("ABC123"), None);
        assert_eq!(sanitize("   "), None);
    }

    #[test]
    fn basic_auth_forms() {
        let (u, p) = basic_credentials(&basic("d.02AA01AC12345678.BC7C9039:pw:with:colons")).unwrap();
        assert_eq!(u, "d.02AA01AC12345678.BC7C9039");
        assert_eq!(p, "pw:with:colons");
        assert_eq!(basic_credentials("Bearer token123"), None);
        assert_eq!(basic_credentials("Basic not-valid-base64!!!"), None);
        for user in ["d.02AA01AC12345678.BC7C9039", "nest.02AA01AC12345678", "02AA01AC12345678"] {
            let id = Identity { basic_user: Some(user), ..Default::default() };
            assert_eq!(id.serial().as_deref(), Some("02AA01AC12345678"), "{user}");
        }
        let id = Identity { basic_user: Some("ABC"), ..Default::default() };
        assert_eq!(id.serial(), None);
    }

    #[test]
    fn header_fallbacks_in_order() {
        let id = Identity {
            client_id: Some("d.02AA01AC12345678.x"),
            device_id: Some("OTHERSERIAL99"),
            ..Default::default()
        };
        assert_eq!(id.serial().as_deref(), Some("02AA01AC12345678"));
        let id = Identity { basic_user: Some("bad"), device_id: Some("otherserial99"), ..Default::default() };
        assert_eq!(id.serial().as_deref(), Some("OTHERSERIAL99"));
    }

    #[test]
    fn mac_username_takes_the_serial_from_the_session() {
        let id = Identity {
            basic_user: Some("18b430aabbcc"),
            session: Some("18b430aabbcc02AA01AC12345678"),
            ..Default::default()
        };
        assert_eq!(id.serial().as_deref(), Some("02AA01AC12345678"));
        let id = Identity { basic_user: Some("18b430aabbcc"), ..Default::default() };
        assert_eq!(id.serial(), None, "without a session the MAC gives no serial");
        let id =
            Identity { basic_user: Some("18b430aabbcc"), device_id: Some("02AA01AC12345678"), ..Default::default() };
        assert_eq!(id.serial().as_deref(), Some("02AA01AC12345678"), "other sources still count");
    }
}
