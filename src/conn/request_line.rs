//! Repairs the request line firmware 4.x sends with a space inside the path (a corrupted bucket
//! key reaches the URL: `GET /nest/transport/v3/device/device.S ._sync HTTP/1.1`). The HTTP
//! parser under actix stops the target at the first space and then rejects ` ._sync` as the
//! version, so the line is repaired before it sees it: the middle tokens are joined with `%20`.

/// The repaired line for a request line (without its line ending) of more than three
/// space-separated tokens whose first is a method and whose last is an HTTP version; `None` for
/// every other line, which is left as it is.
pub fn repair(line: &[u8]) -> Option<Vec<u8>> {
    let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let (method, rest) = parts.split_first()?;
    let (version, target) = rest.split_last()?;
    let is_method = !method.is_empty() && method.iter().all(|b| b.is_ascii_uppercase());
    if parts.len() <= 3 || !is_method || !version.starts_with(b"HTTP/") || target.iter().any(|t| t.is_empty()) {
        return None;
    }
    let mut out = Vec::with_capacity(line.len() + 2 * target.len());
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(&target.join(&b"%20"[..]));
    out.push(b' ');
    out.extend_from_slice(version);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::repair;

    fn fixed(line: &str) -> Option<String> {
        repair(line.as_bytes()).map(|l| String::from_utf8(l).unwrap())
    }

    #[test]
    fn a_path_with_spaces_is_joined_with_percent_20() {
        // spec/v3-firmware.md §7 vector 24.
        assert_eq!(
            fixed("GET /nest/transport/v3/device/device.02AA01AB501203EQ ._sync HTTP/1.1").as_deref(),
            Some("GET /nest/transport/v3/device/device.02AA01AB501203EQ%20._sync HTTP/1.1")
        );
        assert_eq!(
            fixed("GET /d/device.S .$version .$version HTTP/1.1").as_deref(),
            Some("GET /d/device.S%20.$version%20.$version HTTP/1.1")
        );
    }

    #[test]
    fn every_other_line_is_left_alone() {
        for line in [
            "GET /nest/entry HTTP/1.1",
            "POST /nest/transport/v3/put HTTP/1.1",
            "GET well actually",
            "GET a b c",
            "\"device.X ._sync\" more text HTTP/1.1",
            "get /a b HTTP/1.1",
            "GET /a  b HTTP/1.1",
            "GET /a b HTTP/1.1 ",
            "",
        ] {
            assert_eq!(fixed(line), None, "{line:?}");
        }
    }
}
