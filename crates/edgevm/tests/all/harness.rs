//! A running `edgevm serve` for end-to-end tests ([`Server`]) and a tiny blocking HTTP/1.1
//! client on `std::net::TcpStream` ([`Conn`], [`request`]): keep-alive, HEAD, chunked
//! bodies. Shared by the serve and config_delivery tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A JSON string literal.
pub fn js(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

/// Pseudo-argument of [`Server::start_args`]: serve with the default short error bodies.
/// Without it the harness passes `--error-details`, so tests can check why a request failed.
pub const SHORT_ERRORS: &str = "(short error bodies)";

/// A port nothing listens on right now (connection refused until someone binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------------------------------------
// Server
// ------------------------------------------------------------------------------------------

/// A running `edgevm serve` on a free port, its output in `<dir>/server-N.log`. Dropping it
/// kills the process (by PID) if [`Server::stop`] / [`Server::wait_exit`] did not reap it.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Server {
    /// `edgevm serve` with the configuration `config` (JSON text), written to
    /// `<scratch name>/config.json`.
    pub fn with_config(name: &str, config: &str) -> Server {
        let dir = scratch(name);
        let path = dir.join("config.json");
        std::fs::write(&path, config).unwrap();
        Server::start(&dir, &[&path], &[])
    }

    /// `edgevm serve --config C...` (`EDGEVM_LOG=info`, `NO_COLOR=1`, then `env`), its log
    /// in `dir`; waits until it accepts connections.
    pub fn start(dir: &Path, configs: &[&Path], env: &[(&str, &str)]) -> Server {
        Server::start_args(dir, configs, env, &[])
    }

    /// [`Server::start`] with extra `edgevm serve` arguments.
    pub fn start_args(
        dir: &Path,
        configs: &[&Path],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let log = (0..)
            .map(|n| dir.join(format!("server-{n}.log")))
            .find(|p| !p.exists())
            .unwrap();
        for attempt in 0..3 {
            let port = free_port();
            let mut cmd = edgevm();
            cmd.arg("serve");
            for c in configs {
                cmd.arg("--config").arg(c);
            }
            let f = std::fs::File::create(&log).unwrap();
            if !args.contains(&SHORT_ERRORS) {
                cmd.arg("--error-details");
            }
            cmd.args(args.iter().filter(|a| **a != SHORT_ERRORS))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .env("EDGEVM_LOG", "info")
                .env("NO_COLOR", "1")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f);
            let mut s = Server {
                child: Some(cmd.spawn().expect("spawn edgevm serve")),
                port,
                log: log.clone(),
            };
            let t0 = Instant::now();
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return s;
                }
                if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                    s.child = None;
                    let text = s.log();
                    if text.contains("in use") && attempt < 2 {
                        break; // port taken in between: try another
                    }
                    let configs: String = configs
                        .iter()
                        .map(|c| {
                            let text = std::fs::read_to_string(c).unwrap_or_default();
                            format!("{}:\n{text}\n", c.display())
                        })
                        .collect();
                    panic!("edgevm serve exited early ({st}):\n{text}\nconfig:\n{configs}");
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10).mul_f64(time_scale()),
                    "edgevm serve does not accept connections:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        unreachable!()
    }

    /// Everything the server wrote so far (guest output need not be UTF-8: lossy).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Wait until the log contains `needle` (at most `limit`); the log.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                t0.elapsed() < limit,
                "no {needle:?} in the log after {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the "Program 'NAME' is loaded" line of each of `names`. The line comes when
    /// every request VM exists, which can be after the first request was answered.
    pub fn wait_loaded(&self, names: &[&str]) {
        for n in names {
            self.wait_log(
                &format!("Program '{n}' is loaded ("),
                Duration::from_secs(10),
            );
        }
    }

    /// A new (keep-alive) connection.
    pub fn connect(&self) -> Conn {
        Conn::new(self.port)
    }

    /// `clients` keep-alive connections at once, each sending `each` GETs of `path`: the
    /// answers' bodies, client by client.
    pub fn get_concurrently(&self, clients: usize, each: usize, path: &str) -> Vec<String> {
        let port = self.port;
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..clients)
                .map(|_| {
                    sc.spawn(move || {
                        let mut c = Conn::new(port);
                        (0..each)
                            .map(|_| c.send("GET", path, &[], b"").text())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    }

    /// One request on a fresh connection (see [`request`]).
    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(self.port, method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], b"")
    }

    /// GET that must answer 200; the body.
    pub fn ok(&self, path: &str) -> String {
        let r = self.get(path);
        assert_eq!(
            r.status,
            200,
            "GET {path}: {}\nlog:\n{}",
            r.text(),
            self.log()
        );
        r.text()
    }

    /// GET that must answer 503 naming `program`; the body.
    pub fn unavailable(&self, path: &str, program: &str) -> String {
        let r = self.get(path);
        let t = r.text();
        assert_eq!(r.status, 503, "GET {path}: {t}\nlog:\n{}", self.log());
        assert!(
            t.contains(&format!("'{program}'")),
            "the 503 of {path} does not name program '{program}': {t}"
        );
        t
    }

    /// /_edgevm/stats.
    pub fn stats(&self) -> serde_json::Value {
        let r = self.get("/_edgevm/stats");
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("stats are not JSON ({e}):\n{}", r.text()))
    }

    /// The number `key` of program `prog` in /_edgevm/stats.
    pub fn stat(&self, prog: &str, key: &str) -> f64 {
        let st = self.stats();
        let p = st["programs"]
            .get(prog)
            .unwrap_or_else(|| panic!("no program {prog} in stats:\n{st:#}"));
        p.get(key)
            .unwrap_or_else(|| panic!("no {key} for {prog} in stats:\n{st:#}"))
            .as_f64()
            .unwrap_or_else(|| panic!("{key} of {prog} is not a number:\n{st:#}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("edgevm serve is running").id()
    }

    /// SIGTERM to the server (by PID).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM {}: {st}", self.pid());
    }

    /// Wait for the server to exit after a SIGTERM; it must exit 0, without a panic, within
    /// `limit` (else it is killed). The log.
    pub fn wait_exit(&mut self, limit: Duration) -> String {
        let mut child = self.child.take().expect("edgevm serve is running");
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let log = self.log();
                assert_eq!(st.code(), Some(0), "edgevm serve exit status {st}:\n{log}");
                assert!(!log.contains("panicked"), "edgevm panicked:\n{log}");
                return log;
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "edgevm serve still running {limit:?} after SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM; a clean exit within 5 s; the log.
    pub fn stop(mut self) -> String {
        self.sigterm();
        self.wait_exit(Duration::from_secs(5))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------
// HTTP client
// ------------------------------------------------------------------------------------------

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-case names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn all_headers(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One request on a fresh connection to `127.0.0.1:port`, with `Connection: close`.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut h = headers.to_vec();
    h.push(("Connection", "close"));
    Conn::new(port).send(method, path, &h, body)
}

/// A client connection (keep-alive capable).
pub struct Conn {
    reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Conn {
    pub fn new(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to edgevm serve");
        Conn::from_stream(stream)
    }

    /// A client over an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Conn {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Send one request and read its response.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
        self.read_response(method == "HEAD")
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Read one response (`head_only`: the answer to a HEAD, no body).
    pub fn read_response(&mut self, head_only: bool) -> Result<Resp, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("reading status line: {e}"))?;
        let mut parts = line.split_whitespace();
        if parts.next().map(|v| v.starts_with("HTTP/1.")) != Some(true) {
            return Err(format!("bad status line {line:?}"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .map_err(|e| format!("reading headers: {e}"))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or(format!("bad header {l:?}"))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        // HEAD and 1xx/204/304 responses have no body (RFC 9112 6.3).
        let bodyless = head_only || status < 200 || status == 204 || status == 304;
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        if bodyless {
        } else if chunked {
            resp.body = self
                .read_chunked()
                .map_err(|e| format!("reading chunked body: {e}"))?;
        } else if let Some(n) = resp.header("content-length") {
            let n: usize = n.parse().map_err(|_| "bad content-length")?;
            resp.body.resize(n, 0);
            self.reader
                .read_exact(&mut resp.body)
                .map_err(|e| format!("reading body: {e}"))?;
        } else {
            self.reader
                .read_to_end(&mut resp.body)
                .map_err(|e| format!("reading body: {e}"))?;
        }
        Ok(resp)
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            let size = line.split(';').next().unwrap().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                // Trailer section up to the empty line.
                loop {
                    line.clear();
                    let n = self
                        .reader
                        .read_line(&mut line)
                        .map_err(|e| e.to_string())?;
                    if n == 0 || line.trim_end().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let at = body.len();
            body.resize(at + size, 0);
            self.reader
                .read_exact(&mut body[at..])
                .map_err(|e| e.to_string())?;
            let mut crlf = [0u8; 2];
            self.reader
                .read_exact(&mut crlf)
                .map_err(|e| e.to_string())?;
        }
    }
}
