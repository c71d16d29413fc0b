//! JSON text as the v3 firmware reads it: separators compact or spaced, and every character
//! outside ASCII written as a `\uXXXX` escape.

use std::io;

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

/// Separator whitespace between members and after keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `{"a":1,"b":2}`: no whitespace at all.
    Compact,
    /// `{"a": 1, "b": 2}`: what Python's `json.dumps` writes by default.
    PySpaced,
}

/// serde_json's compact output with the chosen separators and ASCII-only strings.
struct AsciiFormatter {
    spacing: Spacing,
}

impl Formatter for AsciiFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.separator(w, first)
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.separator(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(match self.spacing {
            Spacing::Compact => b":",
            Spacing::PySpaced => b": ",
        })
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(at) = rest.find(|c: char| !c.is_ascii()) {
            w.write_all(&rest.as_bytes()[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        w.write_all(rest.as_bytes())
    }
}

impl AsciiFormatter {
    fn separator<W: ?Sized + io::Write>(&self, w: &mut W, first: bool) -> io::Result<()> {
        match (first, self.spacing) {
            (true, _) => Ok(()),
            (false, Spacing::Compact) => w.write_all(b","),
            (false, Spacing::PySpaced) => w.write_all(b", "),
        }
    }
}

/// The JSON text of `value`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T, spacing: Spacing) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut ser = Serializer::with_formatter(&mut out, AsciiFormatter { spacing });
    // Writing into a Vec cannot fail, and the values serialised here (JSON values and plain
    // structs with string keys) always serialise.
    if value.serialize(&mut ser).is_err() {
        return b"{}".to_vec();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_has_no_separator_whitespace_and_keeps_number_forms() {
        let v = json!({"a": 21.0, "b": [1, 2, {"c": "x y"}], "d": 21});
        assert_eq!(to_vec(&v, Spacing::Compact), br#"{"a":21.0,"b":[1,2,{"c":"x y"}],"d":21}"#);
        assert_eq!(to_vec(&v, Spacing::PySpaced), br#"{"a": 21.0, "b": [1, 2, {"c": "x y"}], "d": 21}"#);
        assert_eq!(to_vec(&json!({}), Spacing::PySpaced), b"{}");
    }

    #[test]
    fn non_ascii_is_escaped_like_python_and_round_trips() {
        let v = json!({"name": "Küche 🔥", "q": "a\"b\\c\n"});
        let text = to_vec(&v, Spacing::Compact);
        assert!(text.is_ascii());
        assert_eq!(text, br#"{"name":"K\u00fcche \ud83d\udd25","q":"a\"b\\c\n"}"#);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&text).unwrap(), v);
    }
}
