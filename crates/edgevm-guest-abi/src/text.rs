//! Text helpers for programs: a query parameter of the request URL, and JSON string escaping.
//! The Rust guest crate wraps these (`query_param`, `json_escape`); `kvm_api.h` has the same
//! rules in C (`url_query_param`, `json_escape`), checked against these by
//! `tests/header.rs`. No allocation: the caller gives the output buffer.
//!
//! Query parameters: the query is what follows the first `?` of the URL, up to a `#`;
//! parameters are separated by `&`; a parameter without `=` has an empty value. Keys and
//! values are percent-decoded (`%XX`, and `+` is a space); a `%` not followed by two hex
//! digits stays as it is. The first parameter whose decoded key equals the name wins.

/// The bytes of `s` percent-decoded (`+` is a space).
pub fn decoded(s: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    core::iter::from_fn(move || {
        let b = *s.get(i)?;
        i += 1;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                let hex = s
                    .get(i..i + 2)
                    .and_then(|h| Some(hex_digit(h[0])? << 4 | hex_digit(h[1])?));
                if let Some(v) = hex {
                    i += 2;
                    Some(v)
                } else {
                    Some(b'%')
                }
            }
            _ => Some(b),
        }
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The raw (still percent-encoded) value of query parameter `name` in `url`, if present.
pub fn query_param_raw<'a>(url: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let q = url.iter().position(|&b| b == b'?')?;
    let query = &url[q + 1..];
    let query = &query[..query.iter().position(|&b| b == b'#').unwrap_or(query.len())];
    query.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(e) => (&pair[..e], &pair[e + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (!pair.is_empty() && decoded(key).eq(name.iter().copied())).then_some(value)
    })
}

/// Percent-decode `raw` into `out`: the decoded length (which may exceed `out.len()`: then
/// only the first `out.len()` bytes were written).
pub fn decode_into(raw: &[u8], out: &mut [u8]) -> usize {
    let mut n = 0;
    for b in decoded(raw) {
        if let Some(o) = out.get_mut(n) {
            *o = b;
        }
        n += 1;
    }
    n
}

/// The JSON escape of one byte: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, `\u00XX` for the
/// other control characters (and DEL); None when the byte stands for itself (UTF-8 is passed
/// through as is).
pub fn json_escape_byte(b: u8, buf: &mut [u8; 6]) -> Option<&[u8]> {
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        0..=0x1f | 0x7f => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            *buf = [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ];
            return Some(&buf[..]);
        }
        _ => return None,
    };
    buf[0] = b'\\';
    buf[1] = short;
    Some(&buf[..2])
}

/// Escape `input` for the inside of a JSON string into `out`: the escaped length. When it
/// exceeds `out.len()`, only whole escapes that fit were written (never half of `\n`), and
/// the written length is less than `out.len()` or equal to it.
pub fn json_escape_into(input: &[u8], out: &mut [u8]) -> usize {
    let (mut n, mut written, mut full) = (0, 0, false);
    let mut buf = [0u8; 6];
    for &b in input {
        let one = [b];
        let piece: &[u8] = match json_escape_byte(b, &mut buf) {
            Some(e) => e,
            None => &one,
        };
        if !full && written + piece.len() <= out.len() {
            out[written..written + piece.len()].copy_from_slice(piece);
            written += piece.len();
        } else {
            full = true;
        }
        n += piece.len();
    }
    n
}

/// Cases shared by the tests of this module and the C twin in `kvm_api.h` (`tests/header.rs`):
/// (url, name, expected decoded value or None).
pub const QUERY_CASES: &[(&str, &str, Option<&str>)] = &[
    ("/p?x=1", "x", Some("1")),
    ("/p?x=1&y=2", "y", Some("2")),
    ("/p?x=1&x=2", "x", Some("1")),
    ("/p?xx=1&x=2", "x", Some("2")),
    ("/p?x", "x", Some("")),
    ("/p?x=", "x", Some("")),
    ("/p?x=a+b%20c", "x", Some("a b c")),
    ("/p?a%20b=1", "a b", Some("1")),
    ("/p?x=%zz%4", "x", Some("%zz%4")),
    ("/p?x=%41%62", "x", Some("Ab")),
    ("/p?x=1#y=2", "y", None),
    ("/p?y=1", "x", None),
    ("/p", "x", None),
    ("/p/x=1", "x", None),
    ("/p?&&x=3&", "x", Some("3")),
    ("/p?x=a=b", "x", Some("a=b")),
    ("/p?=1", "", Some("1")),
    ("/p?x=%E2%82%AC", "x", Some("\u{20ac}")),
];

/// (input, expected JSON escape).
pub const JSON_CASES: &[(&str, &str)] = &[
    ("plain", "plain"),
    ("a\"b\\c", "a\\\"b\\\\c"),
    ("line\nfeed\r\ttab", "line\\nfeed\\r\\ttab"),
    ("\u{8}\u{c}\u{1}\u{1f}\u{7f}", "\\b\\f\\u0001\\u001f\\u007f"),
    ("</script> & \u{20ac}", "</script> & \u{20ac}"),
    ("", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn param(url: &str, name: &str) -> Option<([u8; 64], usize)> {
        let raw = query_param_raw(url.as_bytes(), name.as_bytes())?;
        let mut out = [0u8; 64];
        let n = decode_into(raw, &mut out);
        Some((out, n))
    }

    #[test]
    fn query_parameters() {
        for (url, name, want) in QUERY_CASES {
            let got = param(url, name);
            let got = got
                .as_ref()
                .map(|(b, n)| core::str::from_utf8(&b[..*n]).unwrap());
            assert_eq!(got, *want, "{url} {name}");
        }
    }

    #[test]
    fn decoding_into_a_short_buffer_says_the_whole_length() {
        let mut out = [0u8; 3];
        assert_eq!(decode_into(b"abc%20def", &mut out), 7);
        assert_eq!(&out, b"abc");
        assert_eq!(decode_into(b"", &mut []), 0);
    }

    #[test]
    fn json_escapes() {
        for (input, want) in JSON_CASES {
            let mut out = [0u8; 64];
            let n = json_escape_into(input.as_bytes(), &mut out);
            assert_eq!(core::str::from_utf8(&out[..n]).unwrap(), *want);
        }
    }

    #[test]
    fn json_escape_writes_only_whole_escapes() {
        let mut out = [0u8; 4];
        assert_eq!(json_escape_into(b"ab\ncd", &mut out), 6);
        assert_eq!(&out[..4], b"ab\\n");
        let mut out = [b'.'; 3];
        assert_eq!(json_escape_into(b"ab\n", &mut out), 4);
        assert_eq!(&out, b"ab.", "half an escape is never written");
        let mut out = [b'.'; 3];
        assert_eq!(json_escape_into(b"\x01", &mut out), 6);
        assert_eq!(&out, b"...");
    }
}
