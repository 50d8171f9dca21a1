//! Issue 4, end to end: configuration files as users write them (`edgevm check`, layering,
//! errors), program delivery from a `uri` (download, If-Modified-Since/304, cache fallbacks,
//! archives with a storage entry, `file://`), `start`, `warmup`, live update and the
//! statistics endpoints — against the real `edgevm serve` binary and real KVM guests.
//!
//! Downloads come from [`Origin`], a tiny HTTP/1.1 file server on a `std::net::TcpListener`
//! inside the test process, which records every request and whether it carried
//! `If-Modified-Since`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::common::*;
use crate::harness::*;

// ------------------------------------------------------------------------------------------
// Origin: the HTTP server programs are downloaded from
// ------------------------------------------------------------------------------------------

/// How the origin answers for one path.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// 200 with `Last-Modified`, even when the request has `If-Modified-Since`.
    Fresh,
    /// 304 when the request has `If-Modified-Since`, else 200 with `Last-Modified`.
    Cacheable,
    /// 404.
    NotFound,
    /// Reads the request, then says nothing for 5 s (bounded) and closes.
    Slow,
}

/// `Last-Modified` of every 200 (21 Oct 2015 07:28:00 UTC).
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const LAST_MODIFIED_UNIX: u64 = 1_445_412_480;

#[derive(Default)]
struct OriginState {
    files: HashMap<String, (Mode, Vec<u8>)>,
    /// (path, If-Modified-Since value) of every request, in order.
    seen: Vec<(String, Option<String>)>,
}

struct Origin {
    port: u16,
    state: Arc<Mutex<OriginState>>,
}

impl Origin {
    fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(OriginState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || origin_answer(conn, &st));
            }
        });
        Origin { port, state }
    }

    fn serve(&self, path: &str, mode: Mode, body: Vec<u8>) {
        let mut s = self.state.lock().unwrap();
        s.files.insert(path.to_owned(), (mode, body));
    }

    fn set_mode(&self, path: &str, mode: Mode) {
        let mut s = self.state.lock().unwrap();
        s.files.get_mut(path).expect("served path").0 = mode;
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The If-Modified-Since values of the requests for `path`, in order.
    fn requests(&self, path: &str) -> Vec<Option<String>> {
        let s = self.state.lock().unwrap();
        s.seen
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, ims)| ims.clone())
            .collect()
    }
}

fn origin_answer(conn: TcpStream, state: &Mutex<OriginState>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut ims = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("if-modified-since") {
                ims = Some(v.trim().to_owned());
            }
        }
    }
    let entry = {
        let mut s = state.lock().unwrap();
        s.seen.push((path.clone(), ims.clone()));
        s.files.get(&path).cloned()
    };
    let mut conn = conn;
    let (status, body) = match entry {
        None | Some((Mode::NotFound, _)) => ("404 Not Found", b"not here\n".to_vec()),
        Some((Mode::Slow, _)) => {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        Some((Mode::Cacheable, _)) if ims.is_some() => ("304 Not Modified", Vec::new()),
        Some((_, body)) => ("200 OK", body),
    };
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    if status.starts_with("200") {
        head.push_str(&format!("Last-Modified: {LAST_MODIFIED}\r\n"));
        head.push_str("Content-Type: application/octet-stream\r\n");
    }
    if !status.starts_with("304") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body);
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn jp(p: &Path) -> String {
    js(p.to_str().unwrap())
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

fn bytes(guest_name: &str) -> Vec<u8> {
    std::fs::read(guest(guest_name)).unwrap()
}

/// The effective settings `edgevm check` prints (the JSON after "effective settings:").
fn effective(run: &Run) -> serde_json::Value {
    let at = run
        .stdout
        .find("effective settings:")
        .unwrap_or_else(|| panic!("no effective settings in:\n{}", run.all()));
    let text = &run.stdout[at + "effective settings:".len()..];
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("effective settings are not JSON ({e}):\n{text}"))
}

/// The "Program 'NAME' is loaded (...)" line of the log.
fn loaded_line(log: &str, name: &str) -> String {
    let needle = format!("Program '{name}' is loaded (");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
    assert_eq!(lines.len(), 1, "expected one {needle:?} line:\n{log}");
    lines[0].to_owned()
}

/// A tar archive of `entries` (name, bytes).
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(LAST_MODIFIED_UNIX);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn mtime_unix(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ------------------------------------------------------------------------------------------
// 1. A configuration written like real ones; check; layering
// ------------------------------------------------------------------------------------------

#[test]
fn check_prints_effective_settings_of_a_real_world_config() {
    let dir = scratch("cd-check-real");
    let g = |n: &str| jp(&guest(n));
    let main = write(
        &dir.join("compute.json"),
        &format!(
            r#"// Compute programs of the edge fleet.
{{
	/* Settings shared by the compute programs. */
	"compute": {{
		"concurrency": 4,
		"max_boot_time": 8.0,
		"max_request_time": 6.0,
		"max_memory": 64,
		"max_request_memory": 48,
		"req_mem_limit_after_reset": 16 /* Mbytes */
	}},
	// Small, quick programs.
	"small": {{
		"concurrency": 2,
		"max_memory": 32, // MB
		"max_request_time": 2.5
	}},
	"hello": {{
		"group": "compute",
		"filename": {hello},
		"concurrency": 1 // the group says 4
	}},
	"echo": {{ "group": "compute", "filename": {echo} }},
	"headers": {{
		"group": "compute",
		"filename": {headers},
		"environment": ["MODE=strict"]
	}},
	"rust": {{ "group": "small", "filename": {rust} }},
	/* Shared-memory counter. */
	"scounter": {{
		"group": "small",
		"filename": {scounter},
		"shared_memory": 2
	}},
	"counter": {{
		"group": "compute",
		"filename": {counter},
		"storage": true
	}},
	// No group: the built-in group "test".
	"plain": {{ "filename": {wait}, "max_memory": 64 }}
}}
"#,
            hello = g("example_hello"),
            echo = g("example_echo"),
            headers = g("example_headers"),
            rust = g("rust_hello_http"),
            scounter = g("example_scounter"),
            counter = g("example_counter"),
            wait = g("wait"),
        ),
    );
    let m = main.to_str().unwrap();
    let run = edgevm_run(&["check", "--config", m]);
    assert_eq!(run.code(), Some(0), "{}", run.all());
    assert!(!run.all().contains("error"), "{}", run.all());
    let eff = effective(&run);
    let names = [
        "hello", "echo", "headers", "rust", "scounter", "counter", "plain",
    ];
    for n in names {
        assert!(
            eff.get(n).is_some(),
            "no effective settings for {n}:\n{eff:#}"
        );
    }
    let get = |n: &str, k: &str| eff[n][k].clone();
    // Group values, a program override of a group value, the default group.
    assert_eq!(get("hello", "group"), "compute");
    assert_eq!(get("hello", "concurrency"), 1);
    assert_eq!(get("echo", "concurrency"), 4);
    assert_eq!(get("echo", "max_request_time"), 6.0);
    assert_eq!(get("echo", "max_boot_time"), 8.0);
    assert_eq!(get("echo", "max_request_memory"), 48);
    assert_eq!(get("echo", "limit_workmem_after_req"), 16);
    assert_eq!(
        get("headers", "environment"),
        serde_json::json!(["MODE=strict"])
    );
    assert_eq!(get("rust", "group"), "small");
    assert_eq!(get("rust", "max_memory"), 32);
    assert_eq!(get("rust", "max_request_time"), 2.5);
    assert_eq!(get("scounter", "shared_memory"), 2);
    assert_eq!(get("counter", "storage"), true);
    assert_eq!(get("plain", "group"), "test");
    assert_eq!(get("plain", "concurrency"), 2, "default concurrency");
    assert_eq!(get("plain", "max_request_time"), 8.0, "default");
    assert_eq!(get("plain", "max_boot_time"), 16.0, "default");

    // A second file overrides the concurrency of one program, nothing else.
    let over = write(
        &dir.join("override.json"),
        "{\n  // production tuning\n  \"echo\": { \"concurrency\": 7 }\n}\n",
    );
    let o = over.to_str().unwrap();
    let run2 = edgevm_run(&["check", "--config", m, "--config", o]);
    assert_eq!(run2.code(), Some(0), "{}", run2.all());
    let eff2 = effective(&run2);
    assert_eq!(eff2["echo"]["concurrency"], 7, "{eff2:#}");
    assert_eq!(eff2["echo"]["group"], "compute");
    assert_eq!(eff2["echo"]["max_request_time"], 6.0);
    for n in names.iter().filter(|n| **n != "echo") {
        assert_eq!(eff2[n], eff[n], "{n} changed by an override of echo");
    }

    // A later file cannot move a program to another group.
    let regroup = write(
        &dir.join("regroup.json"),
        "{ \"hello\": { \"group\": \"small\" } }\n",
    );
    let run3 = edgevm_run(&[
        "check",
        "--config",
        m,
        "--config",
        regroup.to_str().unwrap(),
    ]);
    assert_eq!(run3.code(), Some(1), "{}", run3.all());
    let err = run3
        .all()
        .lines()
        .find(|l| l.contains("error") && l.contains("group"))
        .unwrap_or_else(|| panic!("no group error:\n{}", run3.all()))
        .to_owned();
    assert!(
        err.contains("'hello'") && err.contains("cannot be changed"),
        "{err}"
    );

    // The same file really serves (a few programs; boots are lazy).
    let s = Server::start(&dir, &[&main, &over], &[]);
    assert_eq!(s.ok("/hello"), "Hello World!\n");
    assert_eq!(s.ok("/plain"), "Hello");
    let st = s.stats();
    assert_eq!(st["programs"]["echo"]["concurrency"], 7, "{st:#}");
    s.stop();
}

// ------------------------------------------------------------------------------------------
// 2. Bad configurations
// ------------------------------------------------------------------------------------------

#[test]
fn trailing_comma_is_an_error_with_line_and_column() {
    let dir = scratch("cd-trailing-comma");
    let line2 = format!("  \"a\": {{ \"filename\": {}, }},", jp(&guest("wait")));
    let text = format!("{{\n{line2}\n  \"b\": {{ \"filename\": \"/x\" }}\n}}\n");
    let f = write(&dir.join("comma.json"), &text);
    // The line ends with `..., },`: the trailing comma is the one before ` }` (1-based columns).
    let brace_col = line2.rfind('}').unwrap() + 1;
    let comma_col = line2[..brace_col - 1].rfind(',').unwrap() + 1;
    for cmd in ["check", "serve"] {
        let run = edgevm_run(&[cmd, "--config", f.to_str().unwrap()]);
        assert_eq!(run.code(), Some(1), "{cmd}: {}", run.all());
        let all = run.all();
        assert!(all.contains("trailing comma"), "{cmd}: {all}");
        let at = [comma_col, brace_col]
            .iter()
            .any(|c| all.contains(&format!("comma.json:2:{c}")));
        assert!(
            at,
            "{cmd}: expected comma.json:2:{comma_col} (or :{brace_col}): {all}"
        );
    }
}

/// (program, its settings, what its error must mention)
const BAD: &[(&str, &str, &[&str])] = &[
    (
        "wrongtype",
        r#""concurrency": "four""#,
        &["'concurrency'", "number"],
    ),
    (
        "negative",
        r#""max_request_time": -1"#,
        &["'max_request_time'", "negative"],
    ),
    (
        "toomany",
        r#""concurrency": 300"#,
        &["'concurrency'", "300"],
    ),
    ("odd", r#""max_memory": 3"#, &["'max_memory'", "2 MB"]),
    ("nogroup", r#""group": "nosuch""#, &["nosuch", "group"]),
    (
        "bigmessage",
        r#""websocket_server": { "port": 8081, "max_message": 99999999 }"#,
        &["'websocket_server'", "max_message"],
    ),
];

fn bad_config(dir: &Path) -> PathBuf {
    let wait = jp(&guest("wait"));
    let mut progs: Vec<String> = BAD
        .iter()
        .map(|(n, kv, _)| format!("  {}: {{ \"filename\": {wait}, {kv} }}", js(n)))
        .collect();
    progs.push(format!(
        "  \"unk\": {{ \"filename\": {wait}, \"colour\": \"blue\" }}"
    ));
    progs.push(format!("  \"good\": {{ \"filename\": {wait} }}"));
    write(
        &dir.join("bad.json"),
        &format!(
            "{{\n  \"g\": {{ \"concurrency\": 2 }},\n{}\n}}\n",
            progs.join(",\n")
        ),
    )
}

#[test]
fn bad_values_are_clear_errors_and_the_good_program_serves() {
    let dir = scratch("cd-bad-values");
    let cfg = bad_config(&dir);
    let run = edgevm_run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(run.code(), Some(1), "{}", run.all());
    let all = run.all();
    for (name, _, words) in BAD {
        let line = all
            .lines()
            .find(|l| l.contains("error") && l.contains(&format!("'{name}'")))
            .unwrap_or_else(|| panic!("no error naming program '{name}':\n{all}"));
        for w in *words {
            assert!(line.contains(w), "error of '{name}' lacks {w:?}: {line}");
        }
    }
    let warn = "Unknown configuration key for 'unk': colour";
    assert!(all.contains(warn), "{all}");
    assert!(
        !all.lines()
            .any(|l| l.contains("error") && (l.contains("'good'") || l.contains("'unk'"))),
        "{all}"
    );

    // Serving: the good programs answer, each bad one answers 503 with its reason.
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(s.ok("/good"), "Hello");
    assert_eq!(s.ok("/unk"), "Hello", "an unknown key is only a warning");
    for (name, _, words) in BAD {
        let t = s.unavailable(&format!("/{name}"), name);
        for w in *words {
            assert!(t.contains(w), "503 of '{name}' lacks {w:?}: {t}");
        }
    }
    assert_eq!(s.ok("/good/again"), "Hello");
    let log = s.stop();
    assert!(log.contains(warn), "{log}");
}

// ------------------------------------------------------------------------------------------
// 3. Delivery from a uri
// ------------------------------------------------------------------------------------------

#[test]
fn uri_download_304_and_cache_fallbacks() {
    let dir = scratch("cd-uri-cache");
    let cache = dir.join("cache");
    let origin = Origin::start();
    let hello = bytes("example_hello");
    let wait = bytes("wait");
    origin.serve("/p/a", Mode::Cacheable, hello.clone());
    for p in ["/p/b", "/p/c", "/p/d"] {
        origin.serve(p, Mode::Fresh, wait.clone());
    }
    // /p/none is not served: 404.
    let config = |d_uri: &str| {
        let prog = |name: &str, uri: &str| {
            format!(
                "  {}: {{ \"uri\": {}, \"filename\": {}, \"max_memory\": 64 }}",
                js(name),
                js(uri),
                jp(&cache.join(name))
            )
        };
        format!(
            "{{\n{}\n}}\n",
            [
                prog("a", &origin.url("/p/a")),
                prog("b", &origin.url("/p/b")),
                prog("c", &origin.url("/p/c")),
                prog("d", d_uri),
                prog("none", &origin.url("/p/none")),
                format!("  \"local\": {{ \"filename\": {} }}", jp(&guest("wait"))),
            ]
            .join(",\n")
        )
    };
    let cfg1 = write(&dir.join("one.json"), &config(&origin.url("/p/d")));

    // First start: nothing cached; every download is written to its filename.
    let s = Server::start(&dir, &[&cfg1], &[]);
    // Concurrent first requests: one download, every request answered.
    let port = s.port;
    let firsts: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || request(port, "GET", "/a", &[], b"")))
        .collect();
    for h in firsts {
        let r = h.join().unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "Hello World!\n"));
    }
    for p in ["b", "c", "d"] {
        assert_eq!(s.ok(&format!("/{p}")), "Hello");
    }
    let t = s.unavailable("/none", "none");
    assert!(t.contains("404") && t.contains("/p/none"), "{t}");
    assert_eq!(s.ok("/local"), "Hello", "the rest keeps serving");
    assert_eq!(s.ok("/a/again"), "Hello World!\n");
    s.wait_loaded(&["a", "b", "c", "d"]);
    let log = s.stop();
    for p in ["a", "b", "c", "d"] {
        let l = loaded_line(&log, p);
        assert!(l.contains("(remote, not cached, "), "{l}");
        assert!(l.contains("downloads="), "{l}");
    }
    assert_eq!(std::fs::read(cache.join("a")).unwrap(), hello);
    assert_eq!(std::fs::read(cache.join("b")).unwrap(), wait);
    assert_eq!(
        mtime_unix(&cache.join("a")),
        LAST_MODIFIED_UNIX,
        "the cache file carries the server's Last-Modified"
    );
    assert!(!cache.join("none").exists());
    assert_eq!(
        origin.requests("/p/a"),
        vec![None],
        "one download for concurrent first requests"
    );

    // Second start: a gets 304, b 404, c a stalled server, d connection refused; all use
    // their cached copy (b, c, d with a warning).
    origin.set_mode("/p/b", Mode::NotFound);
    origin.set_mode("/p/c", Mode::Slow);
    let refused = format!("http://127.0.0.1:{}/p/d", free_port());
    let cfg2 = write(&dir.join("two.json"), &config(&refused));
    let s = Server::start(&dir, &[&cfg2], &[("EDGEVM_FETCH_TIMEOUT_MS", "700")]);
    let t0 = Instant::now();
    assert_eq!(s.ok("/a"), "Hello World!\n");
    for p in ["b", "c", "d"] {
        assert_eq!(s.ok(&format!("/{p}")), "Hello");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "EDGEVM_FETCH_TIMEOUT_MS=700 not honoured: {:?}",
        t0.elapsed()
    );
    s.unavailable("/none", "none");
    s.wait_loaded(&["a", "b", "c", "d"]);
    let log = s.stop();
    let ims = origin.requests("/p/a");
    assert_eq!(ims.len(), 2, "{ims:?}");
    assert_eq!(
        ims[1].as_deref(),
        Some(LAST_MODIFIED),
        "the restart asks If-Modified-Since the cached file's time"
    );
    let l = loaded_line(&log, "a");
    assert!(l.contains("(remote, cached, "), "{l}");
    for (p, why) in [
        ("b", "HTTP status 404"),
        ("c", "timed out"),
        ("d", "network error"),
    ] {
        let l = loaded_line(&log, p);
        assert!(l.contains("(remote, cached, "), "{l}");
        let warn = log
            .lines()
            .find(|l| l.contains("WARN") && l.contains(&format!("{p}: using cached")))
            .unwrap_or_else(|| panic!("no cache warning for {p}:\n{log}"));
        assert!(warn.contains(why), "warning of {p} lacks {why:?}: {warn}");
    }
    assert_eq!(std::fs::read(cache.join("b")).unwrap(), wait, "cache kept");
}

#[test]
fn archives_storage_entry_confusing_corrupt_and_file_uri() {
    let dir = scratch("cd-archives");
    let cache = dir.join("cache");
    let origin = Origin::start();
    let counter = bytes("example_counter");
    let hello = bytes("example_hello");
    origin.serve(
        "/counter.tar.xz",
        Mode::Fresh,
        xz(&tar_of(&[
            ("c/counter", &counter),
            ("c/counter_storage", &counter),
        ])),
    );
    origin.serve(
        "/two.tar",
        Mode::Fresh,
        tar_of(&[("bin/one", &hello), ("bin/two", &hello)]),
    );
    let mut corrupt = xz(&tar_of(&[("hello", &hello)]));
    let mid = corrupt.len() / 2;
    corrupt.truncate(mid);
    origin.serve("/corrupt.tar.xz", Mode::Fresh, corrupt);
    let local_copy = dir.join("hello.bin");
    std::fs::write(&local_copy, &hello).unwrap();
    // An HTML page where a program should be; a cached program exists.
    origin.serve(
        "/index.html",
        Mode::Fresh,
        b"<html><body>moved</body></html>".to_vec(),
    );
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("html"), &hello).unwrap();

    let cfg = write(
        &dir.join("archives.json"),
        &format!(
            r#"{{
  "counter": {{ "uri": {}, "filename": {}, "storage": true, "max_memory": 64 }},
  "two": {{ "uri": {}, "filename": {} }},
  "corrupt": {{ "uri": {}, "filename": {} }},
  "viafile": {{ "uri": {}, "filename": {} }},
  "html": {{ "uri": {}, "filename": {} }}
}}
"#,
            js(origin.url("/counter.tar.xz")),
            jp(&cache.join("counter")),
            js(origin.url("/two.tar")),
            jp(&cache.join("two")),
            js(origin.url("/corrupt.tar.xz")),
            jp(&cache.join("corrupt")),
            js(format!("file://{}", local_copy.display())),
            jp(&cache.join("viafile")),
            js(origin.url("/index.html")),
            jp(&cache.join("html")),
        ),
    );
    let s = Server::start(&dir, &[&cfg], &[]);
    let mut last = None;
    for _ in 0..4 {
        let r = s.get("/counter");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
        assert_eq!(r.text(), "Hello Compute World!\n");
        let n: i64 = r
            .header("x-counter")
            .unwrap_or_else(|| panic!("no X-Counter: {r:?}"))
            .parse()
            .unwrap();
        if let Some(prev) = last {
            assert_eq!(n, prev + 1, "the storage VM counts");
        }
        last = Some(n);
    }
    assert_eq!(std::fs::read(cache.join("counter")).unwrap(), counter);
    assert_eq!(
        std::fs::read(cache.join("counter_storage")).unwrap(),
        counter,
        "<filename>_storage"
    );
    let t = s.unavailable("/two", "two");
    assert!(t.contains("Confusing archive"), "{t}");
    assert!(t.contains("bin/one") && t.contains("bin/two"), "{t}");
    assert!(!cache.join("two").exists());
    let t = s.unavailable("/corrupt", "corrupt");
    assert!(t.contains("corrupt"), "{t}");
    assert!(!cache.join("corrupt").exists());
    assert_eq!(s.ok("/viafile"), "Hello World!\n");
    assert_eq!(std::fs::read(cache.join("viafile")).unwrap(), hello);
    let t = s.unavailable("/html", "html");
    assert!(t.contains("neither an ELF"), "{t}");
    assert_eq!(
        std::fs::read(cache.join("html")).unwrap(),
        hello,
        "a bad download does not replace the cache"
    );
    s.wait_loaded(&["counter", "viafile"]);
    let log = s.stop();
    assert!(
        log.contains("counter: Found 'c/counter_storage'") && log.contains("storage program"),
        "{log}"
    );
    assert!(loaded_line(&log, "counter").contains("(remote, not cached, "));
    assert!(loaded_line(&log, "viafile").contains("(remote, "));

    // Restart with a 304: request and storage programs both come from the cache.
    origin.set_mode("/counter.tar.xz", Mode::Cacheable);
    let s = Server::start(&dir, &[&cfg], &[]);
    let mut last = None;
    for _ in 0..3 {
        let r = s.get("/counter");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
        let n: i64 = r.header("x-counter").unwrap().parse().unwrap();
        if let Some(prev) = last {
            assert_eq!(n, prev + 1, "the cached storage program counts");
        }
        last = Some(n);
    }
    s.wait_loaded(&["counter"]);
    let log = s.stop();
    assert!(
        loaded_line(&log, "counter").contains("(remote, cached, "),
        "{log}"
    );
    assert_eq!(
        origin.requests("/counter.tar.xz")[1].as_deref(),
        Some(LAST_MODIFIED)
    );
}

// ------------------------------------------------------------------------------------------
// 4. start
// ------------------------------------------------------------------------------------------

#[test]
fn start_true_boots_at_server_start_and_default_is_lazy() {
    let dir = scratch("cd-start");
    let cfg = write(
        &dir.join("start.json"),
        &format!(
            "{{\n  \"eager\": {{ \"filename\": {}, \"start\": true }},\n  \"lazy\": {{ \"filename\": {} }}\n}}\n",
            jp(&guest("wait")),
            jp(&guest("example_hello"))
        ),
    );
    let s = Server::start(&dir, &[&cfg], &[]);
    let log = s.wait_log("Program 'eager' is loaded (", Duration::from_secs(10));
    let l = loaded_line(&log, "eager");
    assert!(
        l.contains("(local, ") && l.contains("vm=2 ephemeral") && l.contains("ready="),
        "{l}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !s.log().contains("Program 'lazy' is loaded"),
        "lazy booted before any request:\n{}",
        s.log()
    );
    let st = s.stats();
    assert_eq!(st["programs"]["eager"]["status"], "ready", "{st:#}");
    assert_ne!(st["programs"]["lazy"]["status"], "ready", "{st:#}");
    assert_eq!(s.ok("/lazy"), "Hello World!\n");
    let log = s.wait_log("Program 'lazy' is loaded (", Duration::from_secs(5));
    assert!(loaded_line(&log, "lazy").contains("(local, "), "{log}");
    assert_eq!(s.ok("/eager"), "Hello");
    s.stop();
}

// ------------------------------------------------------------------------------------------
// 5. warmup
// ------------------------------------------------------------------------------------------

#[test]
fn warmup_requests_reach_the_main_vm_before_freezing() {
    let dir = scratch("cd-warmup");
    let cfg = write(
        &dir.join("warmup.json"),
        &format!(
            r#"{{
  "scounter": {{
    "filename": {},
    "shared_memory": 2,
    "concurrency": 2,
    "warmup": {{ "num_requests": 5, "url": "/scounter/warm", "headers": ["X-Warmup: 1"] }}
  }}
}}
"#,
            jp(&guest("example_scounter"))
        ),
    );
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(s.ok("/scounter"), "Hello 5 World!\n");
    assert_eq!(s.ok("/scounter"), "Hello 6 World!\n");
    let st = s.stats();
    assert_eq!(st["programs"]["scounter"]["requests"], 2, "{st:#}");
    s.stop();
}

/// Warmup requests run in the main VM before it is frozen, and their registers must not be:
/// a handler that moves its GS base (as it may: arch_prctl(ARCH_SET_GS)) during warmup must
/// not leave every later request with the moved base (the FS base was already put back).
#[test]
fn warmup_does_not_leak_the_gs_base_into_the_frozen_state() {
    let dir = scratch("cd-warmup-gs");
    let api = jp(&guest("serve_api"));
    let cfg = write(
        &dir.join("warmup-gs.json"),
        &format!(
            r#"{{
  "warm": {{ "filename": {api}, "warmup": {{ "num_requests": 2, "url": "/warm/movegs" }} }},
  "cold": {{ "filename": {api} }}
}}
"#
        ),
    );
    let s = Server::start(&dir, &[&cfg], &[]);
    let cold = s.ok("/cold/bases");
    assert!(cold.contains(" gs="), "{cold}");
    assert_eq!(s.ok("/warm/bases"), cold);
    // A request moving GS leaves the next request unaffected as well.
    assert_eq!(s.ok("/cold/movegs"), "gs moved");
    assert_eq!(s.ok("/cold/bases"), cold);
    s.stop();
}

// ------------------------------------------------------------------------------------------
// 6. Live update
// ------------------------------------------------------------------------------------------

#[test]
fn live_update_keys_failures_and_swap() {
    let dir = scratch("cd-live-update");
    // A copy: an accepted live update replaces the program's file.
    let api = dir.join("serve_api");
    std::fs::copy(guest("serve_api"), &api).unwrap();
    let cfg = write(
        &dir.join("update.json"),
        &format!(
            "{{\n  \"upd\": {{ \"filename\": {api}, \"key\": \"s3cret\", \"max_memory\": 64 }},\n  \"nokey\": {{ \"filename\": {hello} }}\n}}\n",
            api = jp(&api),
            hello = jp(&guest("example_hello"))
        ),
    );
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(s.ok("/upd/ok"), "ok");
    assert_eq!(s.ok("/nokey"), "Hello World!\n");
    let wait = bytes("wait");
    let post = |prog: &str, key: Option<&str>, body: &[u8]| {
        let h: Vec<(&str, &str)> = key.map(|k| ("X-Edgevm-Key", k)).into_iter().collect();
        s.req("POST", &format!("/_edgevm/update/{prog}"), &h, body)
    };

    let r = post("nokey", Some("s3cret"), &wait);
    assert_eq!(r.status, 403, "no key configured: {}", r.text());
    let r = post("upd", None, &wait);
    assert_eq!(r.status, 403, "key missing: {}", r.text());
    let r = post("upd", Some("wrong"), &wait);
    assert_eq!(r.status, 403, "wrong key: {}", r.text());
    assert_eq!(s.ok("/upd/ok"), "ok");
    assert_eq!(s.ok("/nokey"), "Hello World!\n");

    // A new program that crashes in main: 400 with the reason, the old one keeps serving.
    let r = post("upd", Some("s3cret"), &bytes("crash_null"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("'upd'") && r.text().contains("page fault"),
        "{}",
        r.text()
    );
    assert_eq!(s.ok("/upd/ok"), "ok");
    let r = post("upd", Some("s3cret"), b"this is not an ELF");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(s.ok("/upd/ok"), "ok");

    // A good one while a request is in flight: the request finishes on the old program, the
    // next one goes to the new.
    let port = s.port;
    let inflight = std::thread::spawn(move || request(port, "GET", "/upd/sleep?ms=1500", &[], b""));
    std::thread::sleep(Duration::from_millis(300));
    let r = post("upd", Some("s3cret"), &wait);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.ok("/upd/ok"),
        "Hello",
        "new requests go to the new program"
    );
    let old = inflight.join().unwrap();
    assert_eq!((old.status, old.text().as_str()), (200, "slept 1500"));
    let st = s.stats();
    assert_eq!(st["programs"]["upd"]["live_updates"], 1, "{st:#}");
    assert_eq!(st["programs"]["upd"]["binary_size"], wait.len(), "{st:#}");
    assert_eq!(st["programs"]["nokey"]["live_updates"], 0, "{st:#}");
    // The replaced program's VMs are freed: KVM VMs left = 2 (upd, new) + 2 (nokey).
    let kvm_vms = || {
        std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.to_string_lossy().contains("kvm-vm"))
            .count()
    };
    let t = std::time::Instant::now();
    while kvm_vms() != 4 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(kvm_vms(), 4, "the old program's VMs were not freed");
    s.stop();
}

// ------------------------------------------------------------------------------------------
// 7. Statistics
// ------------------------------------------------------------------------------------------

#[test]
fn stats_and_metrics_count_requests_statuses_timeouts_exceptions() {
    let dir = scratch("cd-stats");
    let cfg = write(
        &dir.join("stats.json"),
        &format!(
            "{{\n  \"api\": {{ \"filename\": {}, \"max_request_time\": 1.0, \"max_memory\": 64 }},\n  \"idle\": {{ \"filename\": {} }}\n}}\n",
            jp(&guest("serve_api")),
            jp(&guest("wait"))
        ),
    );
    let s = Server::start(&dir, &[&cfg], &[]);
    let plan: &[(&str, u16)] = &[
        ("/api/ok", 200),
        ("/api/ok", 200),
        ("/api/status?n=201", 201),
        ("/api/status?n=302", 302),
        ("/api/status?n=404", 404),
        ("/api/status?n=418", 418),
        ("/api/status?n=503", 503),
        ("/api/loop", 500),
        ("/api/crash", 500),
        ("/api/ok", 200),
    ];
    for (path, want) in plan {
        let r = s.get(path);
        assert_eq!(r.status, *want, "GET {path}: {}", r.text());
    }
    let st = s.stats();
    let api = &st["programs"]["api"];
    let n = |k: &str| {
        api[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {k}: {st:#}"))
    };
    assert_eq!(api["status"], "ready");
    assert_eq!(n("requests"), plan.len() as u64, "{st:#}");
    assert_eq!(n("status_2xx"), 4, "{st:#}");
    assert_eq!(n("status_3xx"), 1, "{st:#}");
    assert_eq!(n("status_4xx"), 2, "{st:#}");
    assert_eq!(n("status_5xx"), 3, "{st:#}");
    assert_eq!(n("timeouts"), 1, "{st:#}");
    assert_eq!(n("exceptions"), 1, "{st:#}");
    assert!(n("full_resets") >= 2, "{st:#}");
    assert!(n("exits") >= plan.len() as u64, "{st:#}");
    assert!(
        n("binary_size") > 0 && n("memory_image_bytes") > 0,
        "{st:#}"
    );
    assert_eq!(n("vms"), 2, "{st:#}");
    assert!(api["exits_per_request"].as_f64().unwrap() >= 1.0, "{st:#}");
    assert!(api["ready_ms"].as_f64().unwrap() > 0.0, "{st:#}");
    assert_eq!(st["programs"]["idle"]["requests"], 0, "{st:#}");

    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = r.text();
    // Counters end in _total; statuses and failures are labelled families.
    for (metric, labels, key) in [
        ("requests_total", "", "requests"),
        ("responses_total", ",class=\"2xx\"", "status_2xx"),
        ("responses_total", ",class=\"4xx\"", "status_4xx"),
        ("responses_total", ",class=\"5xx\"", "status_5xx"),
        ("request_failures_total", ",reason=\"timeout\"", "timeouts"),
        (
            "request_failures_total",
            ",reason=\"exception\"",
            "exceptions",
        ),
        ("exits_total", "", "exits"),
    ] {
        assert!(
            m.contains(&format!("# TYPE edgevm_{metric} counter\n")),
            "no TYPE for {metric}:\n{m}"
        );
        let line = format!("edgevm_{metric}{{program=\"api\"{labels}}} {}\n", n(key));
        assert!(m.contains(&line), "no {line:?} in:\n{m}");
    }
    assert!(
        m.contains("edgevm_requests_total{program=\"idle\"} 0\n"),
        "{m}"
    );
    // Histograms in seconds: every request of the plan was counted once.
    for h in [
        "request_duration_seconds",
        "queue_wait_seconds",
        "request_exits",
    ] {
        assert!(m.contains(&format!("# TYPE edgevm_{h} histogram\n")), "{m}");
        let count = format!("edgevm_{h}_count{{program=\"api\"}} {}\n", plan.len());
        assert!(m.contains(&count), "no {count:?} in:\n{m}");
        let inf = format!(
            "edgevm_{h}_bucket{{program=\"api\",le=\"+Inf\"}} {}\n",
            plan.len()
        );
        assert!(m.contains(&inf), "no {inf:?} in:\n{m}");
    }
    // The 1 s timeout is in the request-time sum (seconds, not microseconds).
    let sum: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("edgevm_request_duration_seconds_sum{program=\"api\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((1.0..60.0).contains(&sum), "{sum}");
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.starts_with("edgevm_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    // OpenMetrics for a scraper that asks for it.
    let r = s.req(
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
        b"",
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let t = r.text();
    assert!(
        t.ends_with("# EOF\n") && t.contains("# TYPE edgevm_requests counter\n"),
        "{t}"
    );
    s.stop();
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn pinned_programs_and_download_lists() {
    let dir = scratch("cd-pins");
    let cache = dir.join("cache");
    let origin = Origin::start();
    let hello = bytes("example_hello");
    origin.serve("/hello", Mode::Fresh, hello.clone());
    origin.serve("/model", Mode::Fresh, b"model weights".to_vec());
    let local = dir.join("hello.bin");
    std::fs::write(&local, &hello).unwrap();
    let cfg = write(
        &dir.join("pins.json"),
        &format!(
            r#"{{
  "pinned": {{ "uri": {}, "filename": {}, "sha256": "{}" }},
  "wrongpin": {{ "uri": {}, "filename": {}, "sha256": "{}" }},
  "withdl": {{ "filename": {}, "download": [
      {{ "uri": {}, "filepath": {} }},
      {{ "uri": {}, "filepath": {}, "sha256": "{}" }} ] }},
  "baddl": {{ "filename": {}, "download": [ {{ "uri": {}, "filepath": {} }} ] }}
}}
"#,
            js(origin.url("/hello")),
            jp(&cache.join("pinned")),
            sha256_hex(&hello),
            js(origin.url("/hello")),
            jp(&cache.join("wrongpin")),
            sha256_hex(b"another program"),
            jp(&local),
            js(origin.url("/model")),
            jp(&dir.join("data/model.bin")),
            js(format!("file://{}", local.display())),
            jp(&dir.join("data/copy.bin")),
            sha256_hex(&hello),
            jp(&local),
            js(origin.url("/missing")),
            jp(&dir.join("data/none")),
        ),
    );
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(s.ok("/pinned"), "Hello World!\n");
    let t = s.unavailable("/wrongpin", "wrongpin");
    assert!(t.contains("does not match") && t.contains("sha256"), "{t}");
    assert!(
        !cache.join("wrongpin").exists(),
        "refused content is not kept"
    );
    // The download list is fetched before the program boots.
    assert_eq!(s.ok("/withdl"), "Hello World!\n");
    assert_eq!(
        std::fs::read(dir.join("data/model.bin")).unwrap(),
        b"model weights"
    );
    assert_eq!(std::fs::read(dir.join("data/copy.bin")).unwrap(), hello);
    let t = s.unavailable("/baddl", "baddl");
    assert!(t.contains("download") && t.contains("404"), "{t}");
    s.stop();
    // Restart: the pinned cache is used without asking the origin.
    let before = origin.requests("/hello").len();
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(s.ok("/pinned"), "Hello World!\n");
    assert_eq!(origin.requests("/hello").len(), before);
    let log = s.stop();
    assert!(log.contains("has the pinned sha256"), "{log}");
}
