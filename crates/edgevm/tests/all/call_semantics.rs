//! Exact call semantics (issue 14, item 8): every header call on the same inputs through
//! edgevm's in-guest fast path (call_semantics) and as hypercalls from reference-style stubs
//! (call_semantics_ref) answers the same, with the reference's values: field indexes from
//! append/set, copies without NUL when the value fits exactly, BEREQ/BERESP as 4/5, -1 when a
//! header set is full, -ENOSYS for unknown calls and sys_request. Bad arguments fail the
//! request on both paths. Guest: guest/tests/call_semantics.c.

use crate::common::*;
use crate::harness::*;

#[test]
fn fast_path_and_hypercalls_answer_alike() {
    let prog = |n: &str| {
        format!(
            "{{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 1 }}",
            js(guest(n).to_str().unwrap())
        )
    };
    let s = Server::with_config(
        "call-semantics",
        &format!(
            "{{ \"cs\": {}, \"csref\": {} }}",
            prog("call_semantics"),
            prog("call_semantics_ref")
        ),
    );
    let get = |p: &str| {
        let r = s.req("GET", &format!("/{p}/all"), &[("X-Test", "123456")], b"");
        assert_eq!(r.status, 200, "{p}: {}\n{}", r.text(), s.log());
        r
    };
    let (fast, slow) = (get("cs"), get("csref"));
    let want = "append=5 append=6 set=7 unset=6 unset-missing=0 set-empty=0 req-append=";
    assert!(fast.text().starts_with(want), "{}", fast.text());
    for needle in [
        "find-null=14: ",
        "find-exact=14:x-test: 123456## ",
        "find-short=0:################ ",
        "find-bereq=12:X-Added: yes## ",
        "find-resp=10:X-One: uno## ",
        "find-missing=0: ",
        "method-exact=3:GET# ",
        "method-short=0:#### ",
        "method-null=3: ",
        "full-after=125 full=-1 set-full=-1 cacheable=0 request=-38 unknown=-38",
    ] {
        assert!(fast.text().contains(needle), "{needle}: {}", fast.text());
    }
    assert_eq!(fast.text(), slow.text(), "fast path vs hypercalls");
    let hdrs = |r: &Resp| {
        r.headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(hdrs(&fast), hdrs(&slow));
    assert_eq!(fast.header("x-one"), Some("uno"));
    assert_eq!(fast.header("x-two"), None);
    assert_eq!(fast.header("cache-control"), slow.header("cache-control"));
    // Bad arguments fail the request on both paths, and the program goes on serving.
    // (A bad output buffer is a page fault in the guest on the fast path, a bad pointer on
    // the host's.)
    for (bad, why) in [
        ("where2", &["no such header set"][..]),
        ("badkey", &["forbidden character"]),
        ("badfield", &["invalid header field"]),
        ("badout", &["bad pointer", "page fault"]),
        ("hugelen", &["too large"]),
    ] {
        for p in ["cs", "csref"] {
            let before = s.log().len();
            let r = s.req("GET", &format!("/{p}/{bad}"), &[("X-Test", "1")], b"");
            assert_eq!(r.status, 500, "{p}/{bad}: {}", r.text());
            let log = s.log()[before..].to_string();
            assert!(
                why.iter().any(|w| log.contains(w)),
                "{p}/{bad}: log lacks {why:?}:\n{log}"
            );
            get(p);
        }
    }
    s.stop();
}
