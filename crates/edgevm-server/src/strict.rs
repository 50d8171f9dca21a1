//! Checks of a request head made before routing (and before any byte of the body is read).
//!
//! * **RFC 9112 strictness** (default; [`crate::http::HttpOptions::lenient_http`] turns it
//!   off for odd clients): an HTTP/1.1 request carries exactly one `Host` header and it is not
//!   empty (RFC 9112 §3.2: 400 otherwise); an HTTP/1.0 request carries at most one.
//!   `Transfer-Encoding` may only be `chunked` (RFC 9112 §6.1: a server that does not
//!   understand a coding answers 501): `gzip, chunked` would otherwise hand the program a
//!   body still gzip-encoded that it never asked for.
//! * **Dot segments** (always): a path with a `.` or `..` segment, also percent-encoded
//!   (`%2e`), is refused with 400. The first segment names the program and the admin
//!   endpoints; resolving `..` would let `/hello/../echo/x` reach a different program than a
//!   proxy in front of the server saw, so the server refuses instead of guessing. A request in
//!   absolute form (`GET http://host/p/x`) is routed on its path like one in origin form, and
//!   programs and admin endpoints see the origin form (path and query) either way.

use hyper::header::{HeaderMap, HOST, TRANSFER_ENCODING};
use hyper::{Request, StatusCode, Version};

/// Why a request head is refused: the status and a short reason for the client.
pub(crate) type Refusal = (StatusCode, &'static str);

/// Check a request head; `lenient` skips the RFC 9112 checks (not the dot segments).
pub(crate) fn check_head<B>(req: &Request<B>, lenient: bool) -> Result<(), Refusal> {
    if has_dot_segment(req.uri().path()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad request: '.' and '..' path segments are not accepted",
        ));
    }
    if lenient {
        return Ok(());
    }
    check_host(req.headers(), req.version())?;
    check_transfer_encoding(req.headers())
}

fn check_host(headers: &HeaderMap, version: Version) -> Result<(), Refusal> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err((StatusCode::BAD_REQUEST, "bad request: more than one Host")),
        (Some(h), None) if h.as_bytes().iter().all(u8::is_ascii_whitespace) => {
            Err((StatusCode::BAD_REQUEST, "bad request: empty Host"))
        }
        (None, _) if version >= Version::HTTP_11 => {
            Err((StatusCode::BAD_REQUEST, "bad request: no Host"))
        }
        _ => Ok(()),
    }
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut codings = 0;
    for v in headers.get_all(TRANSFER_ENCODING) {
        for coding in v.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            codings += 1;
            if !coding.eq_ignore_ascii_case(b"chunked") || codings > 1 {
                return Err((
                    StatusCode::NOT_IMPLEMENTED,
                    "not implemented: the only transfer coding accepted is chunked",
                ));
            }
        }
    }
    Ok(())
}

/// Whether `path` has a `.` or `..` segment (also percent-encoded).
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(path).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(r: &Request<()>, lenient: bool) -> u16 {
        match check_head(r, lenient) {
            Ok(()) => 200,
            Err((s, _)) => s.as_u16(),
        }
    }

    #[test]
    fn host_must_be_single_and_present_in_http_1_1() {
        let v11 = Version::HTTP_11;
        assert_eq!(status(&req(v11, "/p", &[("host", "a")]), false), 200);
        assert_eq!(status(&req(v11, "/p", &[]), false), 400);
        assert_eq!(status(&req(v11, "/p", &[("host", "")]), false), 400);
        assert_eq!(
            status(&req(v11, "/p", &[("host", "a"), ("host", "b")]), false),
            400
        );
        assert_eq!(status(&req(Version::HTTP_10, "/p", &[]), false), 200);
        assert_eq!(
            status(
                &req(Version::HTTP_10, "/p", &[("host", "a"), ("host", "a")]),
                false
            ),
            400
        );
        // Lenient: all accepted.
        assert_eq!(status(&req(v11, "/p", &[]), true), 200);
        assert_eq!(
            status(&req(v11, "/p", &[("host", "a"), ("host", "b")]), true),
            200
        );
    }

    #[test]
    fn chunked_is_the_only_transfer_coding() {
        let h = |te: &str| {
            req(
                Version::HTTP_11,
                "/p",
                &[("host", "a"), ("transfer-encoding", te)],
            )
        };
        assert_eq!(status(&h("chunked"), false), 200);
        assert_eq!(status(&h("Chunked"), false), 200);
        assert_eq!(status(&h("gzip, chunked"), false), 501);
        assert_eq!(status(&h("chunked, chunked"), false), 501);
        assert_eq!(status(&h("identity"), false), 501);
        assert_eq!(status(&h("gzip, chunked"), true), 200);
    }

    #[test]
    fn dot_segments_are_refused_in_every_mode() {
        for p in [
            "/hello/../echo/x",
            "/./p",
            "/p/.",
            "/p/%2e%2E/x",
            "/p/%2E/x",
            "/..",
            "http://evil/p/../_edgevm/stats",
        ] {
            let r = req(Version::HTTP_11, p, &[("host", "a")]);
            assert_eq!(status(&r, false), 400, "{p}");
            assert_eq!(status(&r, true), 400, "{p}");
        }
        for p in ["/p/...", "/p/.x", "/p/x.", "/p/a..b", "/p/%2e%2e%2e"] {
            let r = req(Version::HTTP_11, p, &[("host", "a")]);
            assert_eq!(status(&r, false), 200, "{p}");
        }
    }
}
