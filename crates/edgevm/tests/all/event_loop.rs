//! Event-loop programs (issue 14, item 1): `wait_for_requests_paused(&req)` in C (edgevm's
//! header and reference-style stubs), C++ and Rust (guest crate). Each request resumes the
//! paused program with `struct kvm_request` filled in; the response ends the request; an
//! ephemeral VM is reset to the paused point, a non-ephemeral one runs on to its next wait
//! and keeps its state. Guests: guest/tests/event_loop.{c,cpp},
//! guest/rust/edgevm-guest/src/bin/event_loop.rs.

use crate::common::*;
use crate::harness::*;

fn config(ephemeral: bool) -> String {
    let prog = |name: &str| {
        format!(
            "{{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 1, \"ephemeral\": {ephemeral} }}",
            js(guest(name).to_str().unwrap())
        )
    };
    format!(
        "{{ \"el\": {}, \"elref\": {}, \"elcpp\": {}, \"elrust\": {} }}",
        prog("event_loop"),
        prog("event_loop_ref"),
        prog("event_loop_cpp"),
        prog("rust_event_loop")
    )
}

fn expect(s: &Server, prog: &str, local: u32) {
    let r = s.req("GET", &format!("/{prog}/hi?x=1"), &[("X-Test", "42")], b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(
        r.header("x-loop"),
        Some("yes"),
        "{} {:?}",
        r.text(),
        r.status
    );
    let t = r.text();
    let want = format!("booted method=GET/GET url=/{prog}/hi?x=1 arg= body= headers=");
    assert!(t.starts_with(&want), "{t}");
    assert!(
        t.ends_with(&format!(
            "x-test=x-test: 42 local={local} global={local} canary=1 warmup=0"
        )),
        "{t}"
    );
}

#[test]
fn ephemeral_event_loops_restart_from_the_paused_point() {
    let s = Server::with_config("event-loop-eph", &config(true));
    for prog in ["el", "elref"] {
        for _ in 0..3 {
            expect(&s, prog, 1);
        }
        // A body reaches the loop too (no POST handler: the loop takes everything).
        let r = s.req("POST", &format!("/{prog}/post"), &[], b"abc");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("method=POST/POST"), "{}", r.text());
        assert!(r.text().contains("body=abc"), "{}", r.text());
        // Hostile or broken loops fail their request and the next one is served.
        for bad in ["crash", "noresp", "exit"] {
            let r = s.get(&format!("/{prog}/{bad}"));
            assert_eq!(r.status, 500, "{bad}: {}", r.text());
            expect(&s, prog, 1);
        }
        // Answering twice: the first answer ends the request.
        assert_eq!(s.ok(&format!("/{prog}/twice")), "first");
        assert_eq!(s.ok(&format!("/{prog}/badreq")), "bad next");
        expect(&s, prog, 1);
    }
    for _ in 0..2 {
        assert_eq!(s.ok("/elcpp/a"), "C++ loop url=/elcpp/a seen=1");
        assert_eq!(
            s.ok("/elrust/b"),
            "Rust loop url=/elrust/b method=GET served=1"
        );
    }
    // One exit per request, as a handler program.
    let (r0, e0) = (s.stat("el", "requests"), s.stat("el", "exits"));
    for _ in 0..10 {
        expect(&s, "el", 1);
    }
    let per = (s.stat("el", "exits") - e0) / (s.stat("el", "requests") - r0);
    assert_eq!(per, 1.0, "VM exits per event-loop request");
    s.stop();
}

#[test]
fn non_ephemeral_event_loops_keep_their_state() {
    let s = Server::with_config("event-loop-keep", &config(false));
    for prog in ["el", "elref"] {
        for i in 1..=3 {
            expect(&s, prog, i);
        }
        // A failure resets the VM fully: the loop starts again from the frozen point.
        assert_eq!(s.get(&format!("/{prog}/crash")).status, 500);
        expect(&s, prog, 1);
        expect(&s, prog, 2);
        // Answering twice: the first answer goes out, the VM is reset.
        assert_eq!(s.ok(&format!("/{prog}/twice")), "first");
        expect(&s, prog, 1);
        // A next wait with a bad pointer: the answer goes out, the VM is reset.
        assert_eq!(s.ok(&format!("/{prog}/badreq")), "bad next");
        expect(&s, prog, 1);
        assert_eq!(s.get(&format!("/{prog}/noresp")).status, 500);
        expect(&s, prog, 1);
    }
    for i in 1..=3 {
        assert_eq!(s.ok("/elcpp/a"), format!("C++ loop url=/elcpp/a seen={i}"));
        assert_eq!(
            s.ok("/elrust/b"),
            format!("Rust loop url=/elrust/b method=GET served={i}")
        );
    }
    s.stop();
}

#[test]
fn warmup_requests_run_through_the_event_loop() {
    let s = Server::with_config(
        "event-loop-warm",
        &format!(
            "{{ \"el\": {{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 1,
                \"warmup\": {{ \"num_requests\": 3, \"url\": \"/el/warm\" }} }} }}",
            js(guest("event_loop").to_str().unwrap())
        ),
    );
    // Frozen after the third warmup request: each request now starts from there.
    for _ in 0..2 {
        let t = s.ok("/el/x");
        assert!(t.contains("local=4 global=4"), "{t}");
    }
    s.stop();
}
