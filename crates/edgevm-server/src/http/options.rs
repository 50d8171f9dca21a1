//! Settings of the HTTP front end (`HttpOptions`) and the admin hook (`AdminHandler`).

use super::*;
use std::net::SocketAddr;
use std::time::Duration;

use edgevm_runtime::{GuestResponse, ServeError};
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;

use crate::drain::Drain;
use crate::limits::{self};
use crate::listen::UnixListen;

/// Settings of the HTTP front end.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Address to listen on (TCP), unless [`HttpOptions::unix`] is set.
    pub listen: SocketAddr,
    /// A Unix socket to listen on instead of `listen`.
    pub unix: Option<UnixListen>,
    /// A separate listener for the admin endpoints (`/metrics`, `/_edgevm/...`). When set,
    /// the main listener serves programs only (admin paths answer 404 there) and this one
    /// serves the admin endpoints only. Default none: one listener serves both.
    pub admin_listen: Option<AdminListen>,
    /// After SIGTERM/SIGINT ([`run_server`]), how long to keep serving while [`Self::drain`]
    /// is set, before stopping to accept. Default 0.
    pub drain_period: Duration,
    /// The configuration's `"routes"` (first match wins; path routing when none matches).
    pub routes: Arc<Vec<edgevm_config::Route>>,
    /// Front ends (load balancers) whose `X-Edgevm-Arg` header becomes the program's `arg`.
    /// Default: none.
    pub trusted_frontends: Vec<edgevm_config::TrustedFrontend>,
    /// The drain state: set at SIGTERM/SIGINT; while set, every response closes its
    /// connection (and the health endpoint answers 503).
    pub drain: Drain,
    /// Largest request body accepted; larger ones get 413 Payload Too Large (announced sizes
    /// are refused before reading anything, chunked bodies as soon as they cross the limit).
    /// Default 16 MiB.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted; larger ones get 431 Request
    /// Header Fields Too Large and the connection is closed. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Most request headers accepted (431 beyond). Default 100.
    pub max_headers: usize,
    /// Time a client has to send a complete request head (from accepting a new connection,
    /// or from the first byte of a later request head) before the connection is closed.
    /// `None` disables the timeout. Default 10 s. See [`crate::limits`].
    pub header_read_timeout: Option<Duration>,
    /// Time a kept-alive connection may sit with no request in progress and no bytes moving
    /// before it is closed. `None` disables the timeout. Default 60 s.
    pub idle_timeout: Option<Duration>,
    /// Time a client has to send the whole request body after its head; 408 and a closed
    /// connection after it. `None` disables the timeout. Default 60 s.
    pub body_timeout: Option<Duration>,
    /// Most connections served at once; more are answered 503 and closed. Default 10000.
    pub max_connections: usize,
    /// Most connections from one client IP address at once; more are answered 503 and
    /// closed. `None` (default): no per-address limit. Unix-socket clients are not counted.
    pub max_connections_per_address: Option<usize>,
    /// Keep HTTP/1.1 connections alive between requests. Default true.
    pub keep_alive: bool,
    /// On shutdown, how long in-flight requests may take to finish before the server returns
    /// anyway. Default 30 s.
    pub shutdown_grace: Duration,
    /// Add `Server: edgevm` to responses that don't set a Server header. Default true.
    pub server_header: bool,
    /// The server-wide budget for buffered request bodies (all listeners together); see
    /// [`limits::BodyBudget`]. Default: an eighth of the machine's memory, at least 64 MiB.
    pub body_memory: limits::BodyBudget,
    /// Accept requests RFC 9112 says to refuse: no, an empty or several `Host` headers,
    /// transfer codings other than `chunked` (passed through undecoded). Default false: 400
    /// and 501 (see [`crate::strict`]).
    pub lenient_http: bool,
    /// Log one info line per request (target `edgevm::access`). Default true.
    pub log_requests: bool,
    /// Error responses tell the client why the program failed (crash report, host paths);
    /// by default they carry only the status, the program and the request id, and the
    /// details go to the log. Default false.
    pub error_details: bool,
}

impl HttpOptions {
    /// Defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        HttpOptions {
            listen,
            unix: None,
            admin_listen: None,
            drain_period: Duration::ZERO,
            drain: Drain::new(),
            routes: Arc::default(),
            trusted_frontends: Vec::new(),
            max_body_bytes: 16 << 20,
            max_header_bytes: 64 << 10,
            max_headers: HYPER_DEFAULT_MAX_HEADERS,
            header_read_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            body_timeout: Some(Duration::from_secs(60)),
            max_connections: 10_000,
            max_connections_per_address: None,
            keep_alive: true,
            shutdown_grace: Duration::from_secs(30),
            server_header: true,
            lenient_http: false,
            body_memory: limits::BodyBudget::new(limits::BodyBudget::default_bytes()),
            log_requests: true,
            error_details: false,
        }
    }

    /// The hyper connection builder these options describe.
    pub(super) fn builder(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .keep_alive(self.keep_alive)
            // Enforced by crate::limits instead (hyper's also runs while a connection is idle).
            .header_read_timeout(None)
            .max_header_size(self.max_header_bytes)
            // The read buffer must be able to hold a whole request head.
            .max_buf_size(HYPER_DEFAULT_MAX_BUF.max(self.max_header_bytes.saturating_add(8192)));
        if self.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            // hyper moves header parsing to the heap when this is set; only do so if asked.
            b.max_headers(self.max_headers);
        }
        b
    }
}

impl HttpOptions {
    /// Apply the settings a configuration (or the command line) gives; the rest keep their
    /// current values.
    pub fn apply_config(&mut self, s: &edgevm_config::ServerConfig) {
        if let Some(a) = s.listen {
            self.listen = a;
        }
        if let Some(path) = &s.listen_unix {
            self.unix = Some(crate::listen::UnixListen {
                path: path.clone(),
                mode: s.listen_mode,
                owner: s.listen_owner.clone(),
            });
        }
        match &s.admin_listen {
            Some(edgevm_config::ListenAt::Tcp(a)) => self.admin_listen = Some(AdminListen::Tcp(*a)),
            Some(edgevm_config::ListenAt::Unix(path)) => {
                self.admin_listen = Some(AdminListen::Unix(UnixListen {
                    path: path.clone(),
                    // Only the server's own user may connect unless the file is changed.
                    mode: Some(0o600),
                    owner: None,
                }))
            }
            None => {}
        }
        if let Some(d) = s.drain_seconds {
            self.drain_period = d;
        }
        if let Some(t) = &s.trusted_frontends {
            self.trusted_frontends = t.clone();
        }
        if let Some(n) = s.max_connections {
            self.max_connections = n;
        }
        if let Some(n) = s.max_connections_per_address {
            self.max_connections_per_address = Some(n);
        }
        if let Some(d) = s.header_timeout {
            self.header_read_timeout = Some(d);
        }
        if let Some(d) = s.idle_timeout {
            self.idle_timeout = Some(d);
        }
        if let Some(d) = s.body_timeout {
            self.body_timeout = Some(d);
        }
        if let Some(n) = s.max_header_size {
            self.max_header_bytes = n;
        }
        if let Some(n) = s.max_headers {
            self.max_headers = n;
        }
        if let Some(n) = s.max_body_size {
            self.max_body_bytes = n;
        }
        if let Some(n) = s.max_body_memory {
            self.body_memory = limits::BodyBudget::new(n);
        }
        if let Some(b) = s.lenient_http {
            self.lenient_http = b;
        }
        if let Some(b) = s.log_requests {
            self.log_requests = b;
        }
        if let Some(b) = s.error_details {
            self.error_details = b;
        }
    }
}

impl Default for HttpOptions {
    /// Defaults, listening on 127.0.0.1:8080.
    fn default() -> Self {
        HttpOptions::new(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

/// A request for an admin endpoint (`/metrics`, `/metrics/...`, `/_edgevm/...`).
#[derive(Debug, Clone)]
pub struct AdminRequest {
    /// "GET", "POST", ...
    pub method: String,
    /// The request target in origin form (path and query).
    pub url: String,
    /// The path part of `url`.
    pub path: String,
    /// The query part of `url` (after `?`), if any.
    pub query: Option<String>,
    /// Request headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Request body: empty in [`AdminHandler::check`]; in [`AdminHandler::handle`] what was
    /// read within the limit `check` chose.
    pub body: Vec<u8>,
}

impl AdminRequest {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What an [`AdminHandler`] decides from a request head, before any byte of the body is read.
#[derive(Debug)]
pub enum AdminCheck {
    /// Answer this without reading the body (a wrong method, path, program or key). A body the
    /// client sent is not read: the connection is closed after the answer.
    Answer(GuestResponse),
    /// Read the body, at most this many bytes (413 beyond), then call
    /// [`AdminHandler::handle`].
    ReadBody(usize),
    /// Read the body within the server's normal limit ([`HttpOptions::max_body_bytes`]), then
    /// call [`AdminHandler::handle`].
    ReadNormalBody,
}

/// What the server tells an [`AdminHandler`] about each finished request (for metrics).
#[derive(Debug)]
#[non_exhaustive]
pub struct RequestRecord<'a> {
    /// The program the request was routed to; `None` for `/`, admin paths and requests
    /// refused before routing.
    pub program: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The HTTP status sent.
    pub status: u16,
    /// Time from receiving the request head to having the response ready.
    pub elapsed: Duration,
    /// Why the program produced no response, when it didn't.
    pub error: Option<&'a ServeError>,
    /// VM exits of the request, when a request VM answered it.
    pub exits: Option<u64>,
}

/// Hook for the reserved admin paths (metrics, stats, ...). It gets first look at every
/// request whose first path segment is one of [`RESERVED_SEGMENTS`]; answering `None` (or
/// having no admin handler at all) gives 404.
///
/// `handle` runs on the server's async worker threads: it must be quick and must not block.
pub trait AdminHandler: Send + Sync + 'static {
    /// Look at a request head (method, path, headers; the body is not read yet) and decide
    /// whether to answer at once or which body limit applies. The default reads bodies within
    /// the server's normal limit.
    fn check(&self, _req: &AdminRequest) -> AdminCheck {
        AdminCheck::ReadNormalBody
    }

    /// Answer an admin request whose body [`AdminHandler::check`] let in, or `None` for "no
    /// such endpoint" (404).
    fn handle(&self, req: &AdminRequest) -> Option<GuestResponse>;

    /// Called once per finished request (program, admin or refused), for metrics.
    fn record(&self, _record: &RequestRecord<'_>) {}
}

/// Where the separate admin listener listens ([`HttpOptions::admin_listen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket (created with mode 0600).
    Unix(UnixListen),
}

/// Most connections the separate admin listener serves at once (its own limit, beside
/// [`HttpOptions::max_connections`] of the main listener).
pub const ADMIN_MAX_CONNECTIONS: usize = 256;
