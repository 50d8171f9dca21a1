//! Outgoing fetch (`sys_fetch`, issue 14 item 2) against a local origin server started by the
//! test (127.0.0.1 only), the network policy (`allow_net`/`deny_net`), self-requests, and the
//! HTTP worker staying free while a fetch waits. Guest: guest/tests/fetch_api.c.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use crate::harness::*;

/// A tiny HTTP/1.1 origin on 127.0.0.1 (one request per connection), stopped when dropped.
pub struct Origin {
    pub port: u16,
    /// Sends to `/hold` requests waiting for their answer.
    release: mpsc::Sender<()>,
    stop: Arc<Mutex<bool>>,
}

/// Method, path, headers (lower-case names) and body of a request.
type OriginRequest = (String, String, Vec<(String, String)>, Vec<u8>);

fn read_request(s: &mut TcpStream) -> Option<OriginRequest> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, headers, body))
}

fn respond(s: &mut TcpStream, status: &str, extra: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nX-Origin: yes\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

impl Origin {
    pub fn start() -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let stop = Arc::new(Mutex::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if *st.lock().unwrap() {
                    break;
                }
                let Ok(mut c) = c else { continue };
                let held = held.clone();
                std::thread::spawn(move || {
                    let Some((method, path, headers, body)) = read_request(&mut c) else {
                        return;
                    };
                    let h = |n: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k == n)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    match path.as_str() {
                        "/hello" => respond(&mut c, "200 OK", "", b"hello origin"),
                        "/echo" => {
                            let text = format!(
                                "method={method} ct={} xtest={} body={}",
                                h("content-type"),
                                h("x-test"),
                                String::from_utf8_lossy(&body)
                            );
                            respond(&mut c, "200 OK", "", text.as_bytes())
                        }
                        "/missing" => respond(&mut c, "404 Not Found", "", b"nope"),
                        "/big" => respond(&mut c, "200 OK", "", &vec![b'x'; 2 << 20]),
                        "/redirect" => respond(
                            &mut c,
                            "302 Found",
                            &format!("Location: http://127.0.0.1:{port}/hello\r\n"),
                            b"",
                        ),
                        p if p.starts_with("/redirect-to/") => respond(
                            &mut c,
                            "302 Found",
                            &format!("Location: {}\r\n", &p["/redirect-to/".len()..]),
                            b"",
                        ),
                        "/hold" => {
                            // Answer once the test says so (at most 20 s).
                            let r = held.lock().unwrap().recv_timeout(Duration::from_secs(20));
                            let body: &[u8] = if r.is_ok() { b"released" } else { b"held" };
                            respond(&mut c, "200 OK", "", body)
                        }
                        _ => respond(&mut c, "404 Not Found", "", b"unknown"),
                    }
                });
            }
        });
        Origin {
            port,
            release,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        *self.stop.lock().unwrap() = true;
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn server(name: &str, server_extra: &str, prog_extra: &str, env: &[(&str, &str)]) -> Server {
    let dir = scratch(name);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"server\": {{ {server_extra} }},\n \"f\": {{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 6 {prog_extra} }} }}",
            js(guest("fetch_api").to_str().unwrap())
        ),
    )
    .unwrap();
    Server::start(&dir, &[&cfg], env)
}

#[test]
fn fetch_get_post_put_headers_and_buffers_from_a_local_origin() {
    let o = Origin::start();
    let allow = format!("\"allow_net\": [\"127.0.0.1:{}\"]", o.port);
    let s = server("fetch-basic", &allow, "", &[]);
    assert_eq!(
        s.ok(&format!("/f/get?{}", o.url("/hello"))),
        "get r=0 status=200 ct=text/plain len=12 body=hello origin"
    );
    // Statuses are answers, not failures.
    assert_eq!(
        s.ok(&format!("/f/get?{}", o.url("/missing"))),
        "get r=0 status=404 ct=text/plain len=4 body=nope"
    );
    // Response headers mapped by the host, NUL-terminated.
    assert_eq!(
        s.ok(&format!("/f/headers?{}", o.url("/hello"))),
        "x-origin=yes nul=1"
    );
    // headers_length set: the host leaves the headers alone.
    assert_eq!(
        s.ok(&format!("/f/nohdrs?{}", o.url("/hello"))),
        "r=0 headers=(nil) len=1"
    );
    // POST with the program's header fields; another method through curl_options.method.
    assert_eq!(
        s.ok(&format!("/f/post?{}", o.url("/echo"))),
        "post r=0 status=200 ct=text/plain len=59 body=method=POST ct=text/x-test xtest=field five body=hello-post"
    );
    assert_eq!(
        s.ok(&format!("/f/put?{}", o.url("/echo"))),
        "post r=0 status=200 ct=text/plain len=58 body=method=PUT ct=text/x-test xtest=field five body=hello-post"
    );
    // The program's own buffer: filled when the body fits, -1 when it does not.
    assert_eq!(
        s.ok(&format!("/f/buf?{}", o.url("/hello"))),
        "buf r=0 same=1 len=12 body=hello origin"
    );
    assert_eq!(s.ok(&format!("/f/buf?{}", o.url("/big"))), "buf r=-1");
    // A 2 MB body mapped by the host.
    assert!(s
        .ok(&format!("/f/get?{}", o.url("/big")))
        .starts_with("get r=0 status=200 ct=text/plain len=2097152 body="));
    // Redirects: not followed by default, followed with follow_location.
    assert!(s
        .ok(&format!("/f/get?{}", o.url("/redirect")))
        .starts_with("get r=0 status=302"));
    assert_eq!(
        s.ok(&format!("/f/follow?{}", o.url("/redirect"))),
        "follow r=0 status=200 ct=text/plain len=12 body=hello origin"
    );
    // dummy_fetch: status only.
    assert_eq!(
        s.ok(&format!("/f/dummy?{}", o.url("/hello"))),
        "dummy r=0 status=200 len=0 content=(nil)"
    );
    // Counted: 11 answered (bodies received: 12+4+12+12+59+58+12 bytes, 2 MiB, the 302's
    // none, 12 followed, 12 for the dummy fetch), 1 failed (too large for the buffer).
    assert_eq!(s.stat("f", "fetches"), 11.0);
    assert_eq!(s.stat("f", "fetch_failures"), 1.0);
    assert_eq!(
        s.stat("f", "fetch_bytes"),
        (12 + 4 + 12 + 12 + 59 + 58 + 12 + (2 << 20) + 12 + 12) as f64
    );
    s.stop();
}

/// An HTTPS origin on 127.0.0.1 (`openssl s_server -WWW` serving `hello.txt` from `dir`)
/// with a certificate for 127.0.0.1 signed by a private authority (`dir/ca.pem`) no system
/// trusts; stopped when dropped.
struct TlsOrigin {
    port: u16,
    child: std::process::Child,
}

impl TlsOrigin {
    fn start(dir: &std::path::Path) -> TlsOrigin {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=edgevm test authority",
            "-days",
            "1",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("leaf.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
        ]);
        std::fs::write(dir.join("hello.txt"), "hello over tls").unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = std::process::Command::new("openssl")
            .args([
                "s_server", "-quiet", "-WWW", "-cert", "cert.pem", "-key", "key.pem",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let t = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "s_server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsOrigin { port, child }
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_fetch_verifies_certificates_unless_told_not_to() {
    let dir = scratch("fetch-https-origin");
    let o = TlsOrigin::start(&dir);
    let allow = format!("\"allow_net\": [\"127.0.0.1:{}\"]", o.port);
    let s = server("fetch-https", &allow, "", &[]);
    let url = format!("https://127.0.0.1:{}/hello.txt", o.port);
    // A certificate no trusted authority signed: refused, with the reason in the log.
    assert_eq!(s.ok(&format!("/f/get?{url}")), "get r=-1");
    let log = s.log();
    assert!(
        log.contains("sys_fetch failed") && log.to_ascii_lowercase().contains("certificate"),
        "{log}"
    );
    // dont_verify_host: the answer arrives over TLS.
    assert_eq!(
        s.ok(&format!("/f/insecure?{url}")),
        "insecure r=0 status=200 ct=text/plain len=14 body=hello over tls"
    );
    // The policy still applies to HTTPS: another port of the same address is refused.
    let other = format!("https://127.0.0.1:{}/hello.txt", o.port.wrapping_add(1));
    assert_eq!(s.ok(&format!("/f/insecure?{other}")), "insecure r=-1");
    assert_eq!(s.stat("f", "fetches"), 1.0);
    assert_eq!(s.stat("f", "fetch_failures"), 2.0);
    s.stop();
    // A server whose system trusts the private authority (SSL_CERT_FILE, as for curl):
    // verified, and answered.
    let ca = dir.join("ca.pem");
    let s = server(
        "fetch-https-private-ca",
        &allow,
        "",
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    );
    assert_eq!(
        s.ok(&format!("/f/get?{url}")),
        "get r=0 status=200 ct=text/plain len=14 body=hello over tls"
    );
    s.stop();
}

#[test]
fn fetch_policy_refuses_internal_addresses_unless_allowed() {
    let o = Origin::start();
    let other = Origin::start();
    // Nothing allowed: loopback is refused by default, by address and by name.
    let s = server("fetch-policy-default", "", "", &[]);
    assert_eq!(s.ok(&format!("/f/get?{}", o.url("/hello"))), "get r=-1");
    let by_name = format!("http://localhost:{}/hello", o.port);
    assert_eq!(s.ok(&format!("/f/get?{by_name}")), "get r=-1");
    assert_eq!(
        s.ok("/f/get?http://169.254.169.254/latest/meta-data/"),
        "get r=-1"
    );
    assert_eq!(s.ok("/f/get?http://[::ffff:127.0.0.1]:1/"), "get r=-1");
    let log = s.wait_log("network policy refuses", Duration::from_secs(5));
    assert!(log.contains("loopback"), "{log}");
    assert!(log.contains("cloud-metadata"), "{log}");
    s.stop();

    // Allowed for one port (group-level addition), by name and by address; another port and
    // a redirect to it stay refused; deny_net beats allow_net.
    let s = server(
        "fetch-policy-allow",
        "\"deny_net\": [\"127.0.0.2\"]",
        &format!(", \"allow_net\": [\"127.0.0.1:{}\", \"127.0.0.2\"]", o.port),
        &[],
    );
    assert!(s
        .ok(&format!("/f/get?{}", o.url("/hello")))
        .starts_with("get r=0 status=200"));
    assert!(s
        .ok(&format!("/f/get?http://localhost:{}/hello", o.port))
        .starts_with("get r=0 status=200"));
    assert_eq!(s.ok(&format!("/f/get?{}", other.url("/hello"))), "get r=-1");
    let to_other = o.url(&format!("/redirect-to/{}", other.url("/hello")));
    assert_eq!(s.ok(&format!("/f/follow?{to_other}")), "follow r=-1");
    let to_meta = o.url("/redirect-to/http://169.254.169.254/");
    assert_eq!(s.ok(&format!("/f/follow?{to_meta}")), "follow r=-1");
    assert_eq!(
        s.ok(&format!("/f/get?http://127.0.0.2:{}/hello", o.port)),
        "get r=-1"
    );
    let log = s.log();
    assert!(log.contains("deny_net"), "{log}");
    s.stop();
}

#[test]
fn fetch_hostile_arguments_fail_cleanly() {
    let o = Origin::start();
    let allow = format!("\"allow_net\": [\"127.0.0.1:{}\"]", o.port);
    let s = server("fetch-hostile", &allow, "", &[]);
    assert_eq!(
        s.ok(&format!("/f/bad?{}", o.url("/hello"))),
        "bad -1 -1 -1 -1 -1 -1 -1 -1 -1"
    );
    // The program keeps serving.
    assert!(s
        .ok(&format!("/f/get?{}", o.url("/hello")))
        .starts_with("get r=0"));
    s.stop();
}

#[test]
fn self_requests_are_served_in_process_and_bounded_in_depth() {
    let s = server("fetch-self", "", "", &[]);
    // A path is a self-request (no network policy involved, no TCP).
    assert_eq!(
        s.ok("/f/get?/f/plain"),
        "get r=0 status=200 ct=text/plain len=12 body=plain answer"
    );
    assert!(s
        .ok("/f/get?/nosuchprogram/x")
        .starts_with("get r=0 status=404"));
    assert!(s
        .ok("/f/get?/_edgevm/stats")
        .starts_with("get r=0 status=404"));
    // Recursion stops at the depth limit (4 nested self-requests).
    assert_eq!(s.ok("/f/recurse"), "((((bottom))))");
    let log = s.log();
    assert!(log.contains("nest at most 4 deep"), "{log}");
    // And the server goes on serving.
    assert!(s.ok("/f/get?/f/plain").starts_with("get r=0 status=200"));
    s.stop();
}

#[test]
fn without_an_inline_slice_requests_and_self_requests_run_on_blocking_threads() {
    // EDGEVM_INLINE_SLICE_US=0: every request runs on a blocking thread from the start (a
    // self-request made on an HTTP worker used to panic inside the runtime: 500).
    let s = server("fetch-noslice", "", "", &[("EDGEVM_INLINE_SLICE_US", "0")]);
    assert_eq!(s.ok("/f/plain"), "plain answer");
    assert_eq!(
        s.ok("/f/get?/f/plain"),
        "get r=0 status=200 ct=text/plain len=12 body=plain answer"
    );
    assert_eq!(s.ok("/f/recurse"), "((((bottom))))");
    s.stop();
}

#[test]
fn a_waiting_fetch_does_not_hold_the_http_worker() {
    // One HTTP worker: the origin answers /hold only after /f/plain was answered, so the
    // fetch succeeds only if the worker served another request while the fetch waited.
    let o = Origin::start();
    let allow = format!("\"allow_net\": [\"127.0.0.1:{}\"]", o.port);
    let s = server("fetch-worker", &allow, "", &[("EDGEVM_HTTP_THREADS", "1")]);
    s.ok("/f/plain");
    let port = s.port;
    let url = o.url("/hold");
    let slow =
        std::thread::spawn(move || Conn::new(port).send("GET", &format!("/f/get?{url}"), &[], b""));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.ok("/f/plain"), "plain answer");
    o.release.send(()).unwrap();
    let r = slow.join().unwrap();
    assert_eq!(
        r.text(),
        "get r=0 status=200 ct=text/plain len=8 body=released"
    );
    s.stop();
}

#[test]
fn example_fetch_programs_in_c_and_cpp_and_storage_self_fetch() {
    let o = Origin::start();
    let dir = scratch("fetch-examples");
    let cfg = dir.join("config.json");
    let g = |n: &str| js(guest(n).to_str().unwrap());
    std::fs::write(
        &cfg,
        format!(
            "{{ \"server\": {{ \"allow_net\": [\"127.0.0.1:{}\"] }},\n\
             \"fetch\": {{ \"filename\": {} }},\n\
             \"fetchpp\": {{ \"filename\": {} }},\n\
             \"storage_fetch\": {{ \"filename\": {}, \"storage\": true, \"start\": true }} }}",
            o.port,
            g("example_fetch"),
            g("example_fetch_cpp"),
            g("example_storage_fetch"),
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    // C: a proxy relaying the origin's answer (redirects followed).
    let r = s.get(&format!("/fetch?{}", o.url("/redirect")));
    assert_eq!((r.status, r.text().as_str()), (200, "hello origin"));
    assert_eq!(r.header("x-fetched-status"), Some("200"));
    assert_eq!(s.get(&format!("/fetch?{}", o.url("/missing"))).status, 404);
    // Refused by the policy: another loopback port.
    assert_eq!(s.get("/fetch?http://127.0.0.1:1/").status, 502);
    // A self-request through the proxy.
    assert_eq!(
        s.ok("/fetch?/fetchpp?/storage_fetch/source"),
        "status=200 type=text/plain body=fresh data"
    );
    // C++ wrapper: GET and POST.
    assert_eq!(
        s.ok(&format!("/fetchpp?{}", o.url("/hello"))),
        "status=200 type=text/plain body=hello origin"
    );
    let r = s.req(
        "POST",
        &format!("/fetchpp?{}", o.url("/echo")),
        &[("Content-Type", "text/x-cpp")],
        b"from c++",
    );
    assert_eq!(
        r.text(),
        "status=200 type=text/plain body=method=POST ct=text/x-cpp xtest= body=from c++"
    );
    // Storage: the periodic task's self-fetch keeps a copy.
    let t = std::time::Instant::now();
    loop {
        let got = s.ok("/storage_fetch");
        if got.contains("copy=fresh data") && !got.starts_with("refreshes=1 ") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "storage copy never refreshed: {got}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.stop();
}

#[test]
fn a_slow_origin_or_an_oversized_answer_fails_only_that_request() {
    // The fetch is bounded by the request's own deadline; a body the program may not map
    // (max_request_memory) fails the call, not the server.
    let o = Origin::start();
    let allow = format!("\"allow_net\": [\"127.0.0.1:{}\"]", o.port);
    let s = server(
        "fetch-slow",
        &allow,
        ", \"max_request_time\": 1.5, \"max_request_memory\": 1",
        &[],
    );
    let r = s.get(&format!("/f/get?{}", o.url("/hold")));
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("timed out"), "{}", r.text());
    o.release.send(()).unwrap();
    assert_eq!(s.ok(&format!("/f/get?{}", o.url("/big"))), "get r=-1");
    let log = s.wait_log("max_request_memory reached", Duration::from_secs(5));
    assert!(log.contains("sys_fetch failed"), "{log}");
    assert!(s
        .ok(&format!("/f/get?{}", o.url("/hello")))
        .starts_with("get r=0 status=200"));
    s.stop();
}
