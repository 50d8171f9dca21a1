//! Routes with arguments and chains (issue 14, item 7): the top-level "routes" list gives a
//! program its url and arg by path prefix (and method and host), runs chains whose steps'
//! answers are POSTed into the next (the first may `fetch` a path of this server in-process),
//! ends a chain at its error threshold, and `edgevm check` refuses bad routes. Path routing
//! keeps working with arg "". Guest: guest/tests/routes.c.

use crate::common::*;
use crate::harness::*;

fn programs() -> String {
    let g = js(guest("routes").to_str().unwrap());
    format!(
        "\"origin\": {{ \"filename\": {g}, \"max_memory\": 64 }},
         \"upper\": {{ \"filename\": {g}, \"max_memory\": 64 }},
         \"thumb\": {{ \"filename\": {g}, \"max_memory\": 64 }}"
    )
}

#[test]
fn routes_give_url_and_arg_and_chains_feed_each_step_into_the_next() {
    let s = Server::with_config(
        "routes",
        &format!(
            r#"{{ {},
  "routes": [
    {{ "prefix": "/thumbs/", "program": "thumb", "arg": "{{\"width\": 128}}" }},
    {{ "prefix": "/t2/", "program": "thumb", "url": "/rewritten", "arg": "{{\"width\": 64}}",
       "method": "GET" }},
    {{ "prefix": "/chain/", "program": "thumb", "arg": "{{\"width\": 32}}",
       "chain": [ {{ "program": "fetch", "url": "/origin/data" }},
                  {{ "program": "upper", "arg": "upper" }} ] }},
    {{ "prefix": "/routed-origin/", "program": "origin", "url": "/origin/data" }},
    {{ "prefix": "/chain2/", "program": "thumb", "arg": "{{\"width\": 1}}",
       "chain": [ {{ "program": "fetch", "url": "/routed-origin/x" }} ] }},
    {{ "prefix": "/bad/", "program": "thumb", "arg": "{{\"width\": 8}}",
       "chain": [ {{ "program": "fetch", "url": "/origin/fail" }},
                  {{ "program": "upper", "arg": "upper" }} ] }},
    {{ "prefix": "/lenient/", "program": "thumb", "arg": "{{\"width\": 9}}",
       "error_threshold": 500,
       "chain": [ {{ "program": "fetch", "url": "/origin/fail" }} ] }},
    {{ "prefix": "/nowhere/", "program": "thumb",
       "chain": [ {{ "program": "fetch", "url": "/_edgevm/stats" }} ] }},
    {{ "prefix": "/h/", "host": "a.example", "program": "origin", "arg": "by-host" }}
  ] }}"#,
            programs()
        ),
    );
    // The route's arg (JSON) and the request target as url.
    assert_eq!(
        s.ok("/thumbs/cat.jpg?x=1"),
        r#"GET url=/thumbs/cat.jpg?x=1 arg={"width": 128}"#
    );
    let r = s.req("POST", "/thumbs/up", &[("Content-Type", "image/x")], b"abc");
    assert_eq!(r.text(), "width=128 ctype=image/x body=abc");
    // A rewritten url; a method the route does not take falls back to path routing.
    assert_eq!(s.ok("/t2/x"), r#"GET url=/rewritten arg={"width": 64}"#);
    assert_eq!(s.req("POST", "/t2/x", &[], b"abc").status, 404);
    // fetch -> upper -> thumb: each answer POSTed into the next.
    assert_eq!(
        s.ok("/chain/x"),
        "width=32 ctype=text/x-upper body=ORIGIN DATA"
    );
    // A fetch of a path that takes a route gets that route's program with its url.
    assert_eq!(
        s.ok("/chain2/x"),
        "width=1 ctype=text/x-origin body=origin data"
    );
    // A step at or over the threshold ends the chain with its answer.
    let r = s.get("/bad/x");
    assert_eq!((r.status, r.text().as_str()), (404, "not here"));
    let r = s.get("/lenient/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "width=9 ctype=text/plain body=not here");
    // A fetch never reaches the admin endpoints.
    assert_eq!(s.get("/nowhere/x").status, 404);
    // Host matching (the port does not count).
    let host = |h: &str| {
        crate::admin::raw(
            s.port,
            format!("GET /h/x HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    let out = host("A.example:8080");
    assert!(out.ends_with("GET url=/h/x arg=by-host"), "{out}");
    let out = host("b.example");
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    // Path routing keeps working, with arg "".
    assert_eq!(s.ok("/origin/y"), "GET url=/origin/y arg=");
    s.stop();
}

#[test]
fn check_refuses_bad_routes() {
    let dir = scratch("routes-check");
    let bad = [
        (
            r#"[{ "prefix": "/a/", "program": "nope" }]"#,
            "no program 'nope'",
        ),
        (
            r#"[{ "prefix": "a/", "program": "thumb" }]"#,
            "must start with '/'",
        ),
        (
            r#"[{ "prefix": "/a/", "program": "thumb", "chain": [{ "program": "upper" }, { "program": "fetch", "url": "/x" }] }]"#,
            "only be the first step",
        ),
        (
            r#"[{ "prefix": "/a/", "program": "thumb", "chain": [{ "program": "fetch" }] }]"#,
            "needs 'url'",
        ),
        (
            r#"[{ "prefix": "/a/", "program": "thumb", "colour": 1 }]"#,
            "unknown key 'colour'",
        ),
        (
            r#"[{ "prefix": "/a/", "program": "thumb", "error_threshold": 9 }]"#,
            "error_threshold",
        ),
        (
            r#"[{ "prefix": "/a/", "program": "thumb", "url": "x y" }]"#,
            "'url' must be a path",
        ),
        (r#"{ "prefix": "/a/" }"#, "must be a list of routes"),
    ];
    for (i, (routes, why)) in bad.iter().enumerate() {
        let cfg = dir.join(format!("bad{i}.json"));
        std::fs::write(&cfg, format!("{{ {}, \"routes\": {routes} }}", programs())).unwrap();
        let run = edgevm_run(&["check", "--config", cfg.to_str().unwrap()]);
        assert_ne!(run.code(), Some(0), "{routes}: {}", run.all());
        assert!(
            run.all().contains(why),
            "{routes}: wanted {why:?}: {}",
            run.all()
        );
    }
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        format!(
            "{{ {}, \"routes\": [{{ \"prefix\": \"/a/\", \"program\": \"thumb\", \"method\": [\"get\"] }}] }}",
            programs()
        ),
    )
    .unwrap();
    let run = edgevm_run(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(run.code(), Some(0), "{}", run.all());
}

#[test]
fn self_requests_take_routes_with_their_arg_and_chain() {
    // A program's sys_fetch of a path is served as a client's request would be: the route it
    // takes (program, url, arg, chain), else /<program>/.
    let s = Server::with_config(
        "routes-self",
        &format!(
            r#"{{ {},
  "f": {{ "filename": {}, "max_memory": 64 }},
  "routes": [
    {{ "prefix": "/thumbs/", "program": "thumb", "arg": "{{\"width\": 128}}" }},
    {{ "prefix": "/chain/", "program": "thumb", "arg": "{{\"width\": 32}}",
       "chain": [ {{ "program": "fetch", "url": "/origin/data" }},
                  {{ "program": "upper", "arg": "upper" }} ] }},
    {{ "prefix": "/bad/", "program": "thumb",
       "chain": [ {{ "program": "fetch", "url": "/origin/fail" }} ] }}
  ] }}"#,
            programs(),
            js(guest("fetch_api").to_str().unwrap())
        ),
    );
    assert_eq!(
        s.ok("/f/get?/thumbs/cat.jpg"),
        r#"get r=0 status=200 ct=text/plain len=42 body=GET url=/thumbs/cat.jpg arg={"width": 128}"#
    );
    assert_eq!(
        s.ok("/f/get?/chain/x"),
        "get r=0 status=200 ct=text/plain len=44 body=width=32 ctype=text/x-upper body=ORIGIN DATA"
    );
    // A chain ending at its threshold: its answer is the fetch's answer.
    assert_eq!(
        s.ok("/f/get?/bad/x"),
        "get r=0 status=404 ct=text/plain len=8 body=not here"
    );
    // Path routing still works for self-requests.
    assert!(s
        .ok("/f/get?/origin/data")
        .starts_with("get r=0 status=200"));
    s.stop();
}

#[test]
fn a_chain_fetch_step_may_fetch_a_url_under_the_route_programs_policy() {
    let o = crate::fetch::Origin::start();
    let g = js(guest("routes").to_str().unwrap());
    let s = Server::with_config(
        "routes-fetch-url",
        &format!(
            r#"{{ "thumb": {{ "filename": {g}, "max_memory": 64,
                 "allow_net": ["127.0.0.1:{port}"] }},
  "upper": {{ "filename": {g}, "max_memory": 64 }},
  "origin": {{ "filename": {g}, "max_memory": 64 }},
  "routes": [
    {{ "prefix": "/ext/", "program": "thumb", "arg": "{{\"width\": 5}}",
       "chain": [ {{ "program": "fetch", "url": "{url}" }},
                  {{ "program": "upper", "arg": "upper" }} ] }},
    {{ "prefix": "/denied/", "program": "origin",
       "chain": [ {{ "program": "fetch", "url": "{url}" }} ] }}
  ] }}"#,
            port = o.port,
            url = o.url("/hello")
        ),
    );
    // The origin's answer, upper-cased, into the route's program.
    assert_eq!(
        s.ok("/ext/x"),
        "width=5 ctype=text/x-upper body=HELLO ORIGIN"
    );
    // The route's program may not reach the address: the chain ends with a 502 saying why.
    let r = s.get("/denied/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("network policy"), "{}", r.text());
    // Counted as the route program's fetches (its statistics and metrics).
    assert_eq!(s.stat("thumb", "fetches"), 1.0);
    assert_eq!(s.stat("thumb", "fetch_bytes"), "hello origin".len() as f64);
    assert_eq!(s.stat("origin", "fetch_failures"), 1.0);
    s.stop();
}
