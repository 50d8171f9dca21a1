//! The regex calls (guest/tests/regex_api.c): PCRE2 matching and Varnish-style substitution,
//! handles compiled in main() shared by every request, a request's own handles and frees undone
//! by its reset, the 64-handle limit, sys_regex_copyto between header sets, and hostile
//! arguments answered with -1 while the program keeps serving.

use crate::common::*;
use crate::harness::*;

fn regex_server() -> Server {
    Server::with_config(
        "regex",
        &format!(
            "{{ \"rx\": {{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 1 }} }}",
            js(guest("regex_api").to_str().unwrap())
        ),
    )
}

#[test]
fn regex_calls_match_substitute_and_are_reset_with_the_request() {
    let s = regex_server();
    assert_eq!(s.ok("/rx/match?s=ab-cd"), "match=1");
    assert_eq!(s.ok("/rx/match?s=abcd"), "match=0");
    assert_eq!(
        s.ok("/rx/subst?s=ab-cd.ef-gh&all=0"),
        "n=13 [<cd|ab>.ef-gh]"
    );
    assert_eq!(
        s.ok("/rx/subst?s=ab-cd.ef-gh&all=1"),
        "n=15 [<cd|ab>.<gh|ef>]"
    );
    assert_eq!(s.ok("/rx/subst?s=none&all=1"), "n=4 [none]");
    // The result does not fit: -1, nothing partial.
    assert_eq!(s.ok("/rx/small"), "r=-1");
    // Handles 0 and 1 are main()'s; a request's own handle is gone after its reset.
    for _ in 0..3 {
        assert_eq!(s.ok("/rx/new"), "handle=2");
    }
    // 64 handles per VM, two of them main()'s, every request alike.
    for _ in 0..2 {
        assert_eq!(s.ok("/rx/many"), "ok=62 fail=-1");
    }
    // A request that frees main()'s pattern frees it for itself only.
    assert_eq!(s.ok("/rx/freeinit"), "freed match=-1");
    assert_eq!(s.ok("/rx/match?s=ab-cd"), "match=1");
    s.stop();
}

#[test]
fn regex_copyto_copies_matching_header_fields() {
    let s = regex_server();
    let r = s.req(
        "GET",
        "/rx/copy",
        &[("X-Copy-A", "1"), ("X-Other", "2"), ("X-Copy-B", "3")],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "copied=2"));
    // Request header names reach programs lower-cased (hyper), as the copies show.
    assert_eq!(r.header("x-copy-a"), Some("1"));
    assert_eq!(r.header("x-copy-b"), Some("3"));
    assert_eq!(r.header("x-other"), None);
    s.stop();
}

#[test]
fn hostile_regex_arguments_get_minus_one_and_the_program_keeps_serving() {
    let s = regex_server();
    for _ in 0..2 {
        assert_eq!(
            s.ok("/rx/bad"),
            "compile=-1 match=-1 handle=-1 free=-1 ptr=-1 subst=-1 huge=-1"
        );
        assert_eq!(s.ok("/rx/match?s=ab-cd"), "match=1");
    }
    // The program's log says why (the lines may reach the log a little after the response).
    s.wait_log("regex does not compile", std::time::Duration::from_secs(10));
    s.wait_log(
        "no regex with handle 12345",
        std::time::Duration::from_secs(10),
    );
    s.stop();
}
