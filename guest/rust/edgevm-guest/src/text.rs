//! Request text helpers: a query parameter of the handler's `url`, and JSON string escaping
//! (the rules of `edgevm_guest_abi::text`, the same as `url_query_param()` and
//! `json_escape()` in `kvm_api.h`).

use edgevm_guest_abi::text;

/// The value of query parameter `name` in `url` (the handler's url: program prefix, path and
/// query string), percent-decoded (`+` is a space; invalid UTF-8 becomes U+FFFD). None when
/// the URL has no such parameter; `Some("")` for `?name` and `?name=`. The first of several
/// wins.
///
/// ```no_run
/// fn on_get(url: &str, _arg: &str) {
///     let who = edgevm_guest::query_param(url, "name").unwrap_or_else(|| "world".into());
///     edgevm_guest::backend_response_str(200, "text/plain", &format!("Hello, {who}!\n"));
/// }
/// ```
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let raw = text::query_param_raw(url.as_bytes(), name.as_bytes())?;
    let bytes: Vec<u8> = text::decoded(raw).collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `s` escaped for the inside of a JSON string: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`,
/// `\u00XX` for the other control characters and DEL.
///
/// ```no_run
/// let body = format!("{{\"path\": \"{}\"}}\n", edgevm_guest::json_escape("a\"b"));
/// ```
pub fn json_escape(s: &str) -> String {
    let mut out = vec![0u8; text::json_escape_into(s.as_bytes(), &mut [])];
    text::json_escape_into(s.as_bytes(), &mut out);
    // Escapes are ASCII and every other byte is copied: still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_cases() {
        for (url, name, want) in text::QUERY_CASES {
            assert_eq!(query_param(url, name).as_deref(), *want, "{url} {name}");
        }
        for (input, want) in text::JSON_CASES {
            assert_eq!(json_escape(input), *want);
        }
    }
}
