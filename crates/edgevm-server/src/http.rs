//! The HTTP/1 front end (hyper 1.x on tokio).
//!
//! Every request is routed by the first path segment of its URL: `/<program>` and anything
//! below it (`/<program>/a/b?x=1`) goes to the program named `<program>` through
//! [`ProgramHost::serve`]. The program sees the request target exactly as the client sent it
//! (path and query, Varnish `req.url`), the method (HEAD included), the headers and the whole
//! body. Paths whose first segment is `metrics` or `_edgevm` are reserved for an
//! [`AdminHandler`]; `/` itself answers 404 with a short hint.
//!
//! The server is HTTP/1 only, keeps connections alive, limits request headers
//! ([`HttpOptions::max_header_bytes`], answered by hyper with 431 and a closed connection) and
//! bodies ([`HttpOptions::max_body_bytes`], answered with 413 without reading the rest), bounds
//! connections and the time clients may take (see [`crate::limits`]), and shuts down
//! gracefully: it stops accepting, lets in-flight requests finish (up to
//! [`HttpOptions::shutdown_grace`]) and returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgevm_runtime::{GuestRequest, GuestResponse, ProgramHost, ServeError};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::drain::Drain;
use crate::limits::{self, Activity, Admission, Timeouts, TrackedIo, TrackedService};
use crate::listen::{Listener, Peer, UnixListen};
use crate::logtext::client_text;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeout_tests;

/// The response body type of every response this server produces (always fully buffered).
type RespBody = Full<Bytes>;

/// hyper's default read buffer limit (`8192 + 4096 * 100`); raised when headers may be larger.
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;
/// hyper's default limit on the number of request headers.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The health endpoint: an admin path also served on a programs-only listener.
pub const HEALTH_PATH: &str = "/_edgevm/health";

/// First path segments that never reach a program.
/// (The configuration refuses programs of these names: `edgevm check` and `serve` say so.)
pub const RESERVED_SEGMENTS: &[&str] = edgevm_config::RESERVED_PROGRAM_NAMES;

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
    fn builder(&self) -> http1::Builder {
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

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Programs and admin endpoints (no separate admin listener).
    All,
    /// Programs only: the public listener when there is an admin listener.
    Programs,
    /// Admin endpoints only.
    Admin,
}

/// State shared by all connections of one listener.
struct Shared {
    opts: HttpOptions,
    host: Arc<dyn ProgramHost>,
    admin: Option<Arc<dyn AdminHandler>>,
    role: Role,
}

/// A bound, not yet running, HTTP server. Use [`HttpServer::bind`] then [`HttpServer::run`];
/// [`serve`] does both.
pub struct HttpServer {
    listener: Listener,
    shared: Arc<Shared>,
    /// The separate admin listener, if configured.
    admin_listener: Option<Listener>,
}

impl HttpServer {
    /// Bind `opts.unix` if set, else `opts.listen`.
    pub async fn bind(
        opts: HttpOptions,
        host: Arc<dyn ProgramHost>,
        admin: Option<Arc<dyn AdminHandler>>,
    ) -> io::Result<HttpServer> {
        let listener = match &opts.unix {
            Some(u) => crate::listen::bind_unix(u)?,
            None => Listener::Tcp(TcpListener::bind(opts.listen).await?),
        };
        let admin_listener = match &opts.admin_listen {
            Some(AdminListen::Unix(u)) => Some(crate::listen::bind_unix(u)?),
            Some(AdminListen::Tcp(a)) => Some(Listener::Tcp(TcpListener::bind(a).await?)),
            None => None,
        };
        let role = if admin_listener.is_some() {
            Role::Programs
        } else {
            Role::All
        };
        Ok(HttpServer {
            listener,
            shared: Arc::new(Shared {
                opts,
                host,
                admin,
                role,
            }),
            admin_listener,
        })
    }

    /// Serve on an already bound listener (`opts.listen` is then ignored).
    pub fn from_listener(
        listener: TcpListener,
        opts: HttpOptions,
        host: Arc<dyn ProgramHost>,
        admin: Option<Arc<dyn AdminHandler>>,
    ) -> HttpServer {
        HttpServer {
            listener: Listener::Tcp(listener),
            shared: Arc::new(Shared {
                opts,
                host,
                admin,
                role: Role::All,
            }),
            admin_listener: None,
        }
    }

    /// The TCP address actually bound (useful with port 0); an error for a Unix socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Unix(..) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "listening on a Unix socket",
            )),
        }
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight requests finish
    /// (at most [`HttpOptions::shutdown_grace`]) and return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let HttpServer {
            listener,
            shared,
            admin_listener,
        } = self;
        let Some(admin_listener) = admin_listener else {
            return run_listener(listener, shared, shutdown).await;
        };
        // Two listeners, one shutdown.
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut admin_opts = shared.opts.clone();
        admin_opts.max_connections = admin_opts.max_connections.min(ADMIN_MAX_CONNECTIONS);
        let admin_shared = Arc::new(Shared {
            opts: admin_opts,
            host: shared.host.clone(),
            admin: shared.admin.clone(),
            role: Role::Admin,
        });
        let signal = async move {
            shutdown.await;
            let _ = tx.send(true);
        };
        let (_, public, admin) = tokio::join!(
            signal,
            run_listener(listener, shared, stopped(rx.clone())),
            run_listener(admin_listener, admin_shared, stopped(rx)),
        );
        public.and(admin)
    }
}

/// Serve one listener with `shared` until `shutdown` completes (see [`HttpServer::run`]).
async fn run_listener(
    listener: Listener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // Logged only now that the address is bound (a failed bind is an error instead).
    let what = match shared.role {
        Role::All => "edgevm serving",
        Role::Programs => "edgevm serving programs",
        Role::Admin => "edgevm serving admin endpoints",
    };
    match listener.describe() {
        unix if unix.starts_with("unix:") => info!("{what} on {unix}"),
        tcp => info!("{what} on http://{tcp}/"),
    }
    let opts = shared.opts.clone();
    accept_loop(
        listener,
        &opts,
        move |peer| {
            let shared = shared.clone();
            service_fn(move |mut req: Request<Incoming>| {
                // Who sent it: decides whether X-Edgevm-Arg is trusted.
                req.extensions_mut().insert(peer);
                handle(shared.clone(), req)
            })
        },
        shutdown,
    )
    .await
}

/// Bind `opts.listen` and serve program requests until `shutdown` completes; then shut down
/// gracefully (see [`HttpServer::run`]).
pub async fn serve(
    opts: HttpOptions,
    host: Arc<dyn ProgramHost>,
    admin: Option<Arc<dyn AdminHandler>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    HttpServer::bind(opts, host, admin)
        .await?
        .run(shutdown)
        .await
}

/// Blocking convenience: build a tokio runtime (one worker thread per CPU), serve until
/// SIGTERM or SIGINT, drain for [`HttpOptions::drain_period`] (a second signal ends the drain
/// early), shut down gracefully and return.
pub fn run_server(
    opts: HttpOptions,
    host: Arc<dyn ProgramHost>,
    admin: Option<Arc<dyn AdminHandler>>,
) -> io::Result<()> {
    let rt = http_runtime()?;
    let result = rt.block_on(async {
        let stop = drain_then_stop(opts.drain.clone(), opts.drain_period)?;
        serve(opts, host, admin, stop).await
    });
    // Connections still open after the grace period are dropped here.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The multi-thread runtime the server runs on.
fn http_runtime() -> io::Result<tokio::runtime::Runtime> {
    // Request VMs run on these threads (see edgevm-runtime's pool.rs): one per CPU.
    let workers = edgevm_runtime::env::http_threads();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("edgevm-http")
        .enable_all()
        .build()
}

/// Install SIGTERM and SIGINT handlers now; the returned future completes on either.
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = int.recv() => info!("SIGINT received, shutting down"),
        }
    })
}

/// Install SIGTERM and SIGINT handlers now; the returned future completes `period` after the
/// first of them (or at a second one), having set `drain` at the first.
fn drain_then_stop(drain: Drain, period: Duration) -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = int.recv() => info!("SIGINT received, shutting down"),
        }
        drain.start();
        if period.is_zero() {
            return;
        }
        info!(
            seconds = period.as_secs_f64(),
            "draining: health answers 503, still serving"
        );
        tokio::select! {
            _ = tokio::time::sleep(period) => info!("drain period over"),
            _ = term.recv() => info!("second SIGTERM: drain ended early"),
            _ = int.recv() => info!("second SIGINT: drain ended early"),
        }
    })
}

/// Serve one connection over any byte stream (an in-memory one for the HTTP fuzz target) with
/// the same hyper settings, limits and routing as [`HttpServer::run`]; returns when the
/// connection ends or a timeout of [`crate::limits`] closes it.
pub async fn serve_io<I>(
    io: I,
    opts: HttpOptions,
    host: Arc<dyn ProgramHost>,
    admin: Option<Arc<dyn AdminHandler>>,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = opts.builder();
    let timeouts = Timeouts::new(opts.header_read_timeout, opts.idle_timeout);
    let shared = Arc::new(Shared {
        opts,
        host,
        admin,
        role: Role::All,
    });
    let act = Activity::new();
    let service = TrackedService::new(
        service_fn(move |req| handle(shared.clone(), req)),
        act.clone(),
    );
    let conn = builder.serve_connection(TokioIo::new(TrackedIo::new(io, act.clone())), service);
    limits::supervise(conn, act, timeouts).await
}

/// Accept connections and serve each with a fresh service from `make_service` until
/// `shutdown` completes; then drain gracefully.
async fn accept_loop<F, S>(
    listener: Listener,
    opts: &HttpOptions,
    make_service: F,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    F: Fn(Peer) -> S,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<RespBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = opts.builder();
    let grace = opts.shutdown_grace;
    let timeouts = Timeouts::new(opts.header_read_timeout, opts.idle_timeout);
    let admission = Admission::new(opts.max_connections, opts.max_connections_per_address);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let act = Activity::new();
                    let Some((stream, slot)) = admission.admit(stream, peer, &act) else {
                        continue;
                    };
                    let io = TokioIo::new(TrackedIo::new(stream, act.clone()));
                    let service = TrackedService::new(make_service(peer), act.clone());
                    let conn = graceful.watch(builder.serve_connection(io, service));
                    tokio::spawn(async move {
                        if let Err(e) = limits::supervise(conn, act, timeouts).await {
                            debug!(%peer, "connection ended with error: {e}");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Per-connection errors (reset before accept) are harmless; running out
                    // of file descriptors is not, so back off a little.
                    warn!("accept failed: {e}");
                    if !is_connection_error(&e) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
        }
    }
    drop(listener);
    let open = graceful.count();
    info!(open, "stopped accepting; draining open connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("graceful shutdown: connections still open after {grace:?}; giving up on them");
    } else {
        info!("graceful shutdown complete");
    }
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A response before the final touches of [`finish`].
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Close the connection after this response (e.g. an unread request body).
    close: bool,
}

impl Answer {
    /// A short `text/plain` answer: `msg` and a newline.
    fn text(status: StatusCode, msg: impl std::fmt::Display) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Answer {
            status,
            headers,
            body: Bytes::from(format!("{msg}\n")),
            close: false,
        }
    }
}

/// What routing decided about a request.
struct Outcome {
    answer: Answer,
    program: Option<String>,
    error: Option<ServeError>,
    exits: Option<u64>,
}

impl From<Answer> for Outcome {
    fn from(answer: Answer) -> Outcome {
        Outcome {
            answer,
            program: None,
            error: None,
            exits: None,
        }
    }
}

/// A request id: unique in this process, and (its first part being the server's start time)
/// across restarts. Error responses carry it (body and `X-Request-Id`), log lines too.
#[derive(Clone, Copy)]
struct RequestId(u32, u64);

impl RequestId {
    fn next() -> RequestId {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        static START: OnceLock<u32> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let start = *START.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32)
        });
        RequestId(start, NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}-{:x}", self.0, self.1)
    }
}

/// The service: route one request and produce its response.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let log = shared.opts.log_requests
        && tracing::enabled!(target: "edgevm::access", tracing::Level::INFO);
    let path = log.then(|| req.uri().path().to_owned());
    let id = RequestId::next();
    let outcome = route(&shared, req, id).await;
    let status = outcome.answer.status;
    if let Some(admin) = &shared.admin {
        admin.record(&RequestRecord {
            program: outcome.program.as_deref(),
            method: method.as_str(),
            status: status.as_u16(),
            elapsed: start.elapsed(),
            error: outcome.error.as_ref(),
            exits: outcome.exits,
        });
    }
    if let Some(path) = path {
        // Method and path are the client's: escaped (the program name is a configured one).
        info!(
            target: "edgevm::access",
            "{} {} program={} status={} time_ms={:.3} exits={} id={id}",
            client_text(method.as_str()),
            client_text(&path),
            outcome.program.as_deref().map_or("-".into(), |p| client_text(p).to_string()),
            status.as_u16(),
            start.elapsed().as_secs_f64() * 1e3,
            outcome.exits.map_or("-".into(), |e| e.to_string()),
        );
    }
    let mut answer = outcome.answer;
    // Draining: clients (load balancers) reconnect elsewhere.
    answer.close |= shared.opts.drain.is_draining();
    Ok(finish(
        answer,
        method == Method::HEAD,
        shared.opts.server_header,
    ))
}

/// Decide where a request goes and get its answer.
async fn route(shared: &Shared, req: Request<Incoming>, id: RequestId) -> Outcome {
    if req.method() == Method::CONNECT {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported").into();
    }
    if let Err((status, why)) = crate::strict::check_head(&req, shared.opts.lenient_http) {
        crate::client_warn!(
            target = %client_text(request_target(&req)),
            "refused request: {why}"
        );
        let answer = Answer::text(status, why);
        return unread_body_answer(shared, answer, req.into_body()).into();
    }
    let path = req.uri().path();
    let Some(segment) = path
        .strip_prefix('/')
        .map(|p| p.split('/').next().unwrap_or(""))
    else {
        return Answer::text(StatusCode::NOT_FOUND, "not found").into();
    };
    if segment.is_empty() {
        return Answer::text(
            StatusCode::NOT_FOUND,
            "edgevm: no program given; request /<program>/...",
        )
        .into();
    }
    let reserved = RESERVED_SEGMENTS.contains(&segment);
    // With a separate admin listener, each listener serves only its own kind of path; the
    // health endpoint is on both (load balancers probe the address they send traffic to).
    let programs_only = shared.role == Role::Programs && path != HEALTH_PATH;
    if (reserved && programs_only) || (!reserved && shared.role == Role::Admin) {
        let nf = Answer::text(StatusCode::NOT_FOUND, "not found");
        return unread_body_answer(shared, nf, req.into_body()).into();
    }
    if reserved {
        return admin(shared, req).await.into();
    }
    let program = segment.to_owned();
    let mut outcome = run_program(shared, &program, req, id).await;
    outcome.program = Some(program);
    outcome
}

/// Answer a reserved path through the admin handler (404 without one). The handler decides
/// from the request head ([`AdminHandler::check`]) before any byte of the body is read, and
/// runs on a blocking thread: a live update boots a whole program.
async fn admin(shared: &Shared, req: Request<Incoming>) -> Answer {
    let Some(handler) = shared.admin.clone() else {
        let nf = Answer::text(StatusCode::NOT_FOUND, "not found");
        return unread_body_answer(shared, nf, req.into_body());
    };
    let mut areq = AdminRequest {
        method: req.method().as_str().to_owned(),
        url: request_target(&req).to_owned(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: copy_headers(req.headers()),
        body: Vec::new(),
    };
    let limit = match handler.check(&areq) {
        AdminCheck::Answer(resp) => {
            return unread_body_answer(shared, guest_answer(resp), req.into_body())
        }
        AdminCheck::ReadBody(limit) => limit,
        AdminCheck::ReadNormalBody => shared.opts.max_body_bytes,
    };
    let opts = &shared.opts;
    let _lease =
        match limits::read_body(req.into_body(), limit, opts.body_timeout, &opts.body_memory).await
        {
            Ok((b, lease)) => {
                areq.body = Vec::from(b);
                lease
            }
            Err(e) => {
                crate::client_warn!(path = %client_text(&areq.path), "{e}");
                return body_error(e);
            }
        };
    match tokio::task::spawn_blocking(move || handler.handle(&areq)).await {
        Ok(Some(resp)) => guest_answer(resp),
        Ok(None) => Answer::text(StatusCode::NOT_FOUND, "not found"),
        Err(_) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, "admin handler failed"),
    }
}

/// An answer decided without reading the request body. If the client sent one, the
/// connection is closed after the answer; until then the body is read and thrown away (up to
/// the normal body limit, within the body timeout, nothing kept), so that a client still
/// sending it gets to read the answer instead of a connection reset.
fn unread_body_answer(shared: &Shared, mut answer: Answer, body: Incoming) -> Answer {
    if !hyper::body::Body::is_end_stream(&body) {
        answer.close = true;
        let (max, timeout) = (shared.opts.max_body_bytes, shared.opts.body_timeout);
        tokio::spawn(limits::discard_body(body, max, timeout));
    }
    answer
}

/// The request target as the client sent it: path and query.
fn request_target<B>(req: &Request<B>) -> &str {
    req.uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or_else(|| req.uri().path())
}

/// Request headers as (name, value) strings, in the order hyper keeps them: first appearance
/// of each name, repeated names grouped. Names are lower case; non-UTF-8 bytes are replaced.
fn copy_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            let value = match v.to_str() {
                Ok(s) => s.to_owned(),
                Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            };
            (n.as_str().to_owned(), value)
        })
        .collect()
}

/// The request header a trusted front end passes a program's `arg` in.
pub const ARG_HEADER: &str = "x-edgevm-arg";

/// The program's `arg` and the headers it sees: the value of [`ARG_HEADER`] when the
/// connection comes from one of [`HttpOptions::trusted_frontends`] ("" otherwise), and the
/// request headers without [`ARG_HEADER`] (never passed on as a header, trusted or not).
fn take_arg(
    opts: &HttpOptions,
    parts: &hyper::http::request::Parts,
) -> (String, Vec<(String, String)>) {
    let mut headers = copy_headers(&parts.headers);
    let given = headers.iter().any(|(n, _)| n == ARG_HEADER);
    if !given {
        return (String::new(), headers);
    }
    let trusted = parts
        .extensions
        .get::<Peer>()
        .is_some_and(|p| opts.trusted_frontends.iter().any(|t| p.trusted_by(t)));
    let arg = if trusted {
        headers
            .iter()
            .find(|(n, _)| n == ARG_HEADER)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    } else {
        debug!("X-Edgevm-Arg from a client not in trusted_frontends: ignored");
        String::new()
    };
    headers.retain(|(n, _)| n != ARG_HEADER);
    (arg, headers)
}

/// Read the body, hand the request to the program and wait for its answer.
async fn run_program(
    shared: &Shared,
    program: &str,
    req: Request<Incoming>,
    id: RequestId,
) -> Outcome {
    let max = shared.opts.max_body_bytes;
    let url = request_target(&req).to_owned();
    let (parts, body) = req.into_parts();
    let opts = &shared.opts;
    let (body, _lease) =
        match limits::read_body(body, max, opts.body_timeout, &opts.body_memory).await {
            Ok(b) => b,
            Err(e) => {
                crate::client_warn!(program = %client_text(program), "{e}");
                return body_error(e).into();
            }
        };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let (arg, headers) = take_arg(&shared.opts, &parts);
    let greq = GuestRequest {
        method: parts.method.as_str().to_owned(),
        url,
        arg,
        headers,
        content_type,
        body: body.into(),
        warmup: false,
    };

    match shared.host.serve(program, greq).await {
        Ok(resp) => Outcome {
            exits: resp.exits,
            answer: guest_answer(resp),
            program: None,
            error: None,
        },
        Err(err @ ServeError::ProgramNotFound(_)) => {
            // The name is the client's: no echo of it in the log line.
            crate::client_warn!(program = %client_text(program), "request for an unknown program");
            Outcome {
                answer: error_answer(shared.opts.error_details, program, &err, id),
                program: None,
                error: Some(err),
                exits: None,
            }
        }
        Err(err) => {
            let mut answer = error_answer(shared.opts.error_details, program, &err, id);
            if matches!(err, ServeError::QueueFull | ServeError::QueueTimeout) {
                // Overload: the client may try again shortly. Not logged per request (an
                // overloaded server would spend its time logging): the stats count them.
                answer
                    .headers
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                overload_warning(program, &err);
            } else {
                warn!(program, "request failed: {err} (request id {id})");
            }
            Outcome {
                answer,
                program: None,
                error: Some(err),
                exits: None,
            }
        }
    }
}

/// The answer to a request the program did not answer: the status, a short reason and the
/// request id (also in `X-Request-Id`); with `details`, the whole error (crash report, host
/// paths) and the request id.
fn error_answer(details: bool, program: &str, err: &ServeError, id: RequestId) -> Answer {
    let status = error_status(err);
    let mut a = if details {
        Answer::text(status, format_args!("{err} (request id {id})"))
    } else {
        let reason = match err {
            ServeError::ProgramNotFound(_) => "no such program".to_string(),
            ServeError::ProgramUnavailable(_) => format!("program '{program}' is unavailable"),
            ServeError::ProgramError(_) => format!("program '{program}' failed"),
            other => other.to_string(),
        };
        Answer::text(
            status,
            format_args!(
                "{} {}: {reason} (request id {id})",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        )
    };
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        a.headers.insert("x-request-id", v);
    }
    a
}

/// The answer to a request whose body could not be read: the connection is closed after it.
fn body_error(e: limits::BodyError) -> Answer {
    let mut a = Answer::text(e.status(), &e);
    a.close = true;
    if matches!(e, limits::BodyError::OverBudget) {
        a.headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    a
}

/// Log a refused request: every one at debug level, at most one a second as a warning.
fn overload_warning(program: &str, err: &ServeError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1;
    if LAST.swap(now, Ordering::Relaxed) != now {
        warn!(program, "request refused: {err} (more are counted in /_edgevm/stats: queue_full, queue_timeouts)");
    } else {
        debug!(program, "request refused: {err}");
    }
}

/// The HTTP status for a [`ServeError`].
pub fn error_status(err: &ServeError) -> StatusCode {
    match err {
        ServeError::ProgramNotFound(_) => StatusCode::NOT_FOUND,
        ServeError::ProgramUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServeError::QueueTimeout | ServeError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
        ServeError::ProgramError(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Headers a program may not set: framing and hop-by-hop headers, owned by the server.
fn is_forbidden_response_header(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Turn a program's (or admin handler's) response into an [`Answer`].
fn guest_answer(resp: GuestResponse) -> Answer {
    let status = match StatusCode::from_u16(resp.status) {
        Ok(s) if (200..=599).contains(&resp.status) => s,
        _ => {
            warn!(status = resp.status, "program answered an invalid status");
            return Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format_args!("program error: invalid status {}", resp.status),
            );
        }
    };
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + 1);
    for (name, value) in &resp.headers {
        let Ok(hname) = HeaderName::from_bytes(name.trim().as_bytes()) else {
            warn!(header = %name, "program set an invalid header name; dropped");
            continue;
        };
        if is_forbidden_response_header(&hname) {
            debug!(header = %name, "program set a framing/hop-by-hop header; ignored");
            continue;
        }
        let Ok(hvalue) = HeaderValue::from_str(value.trim()) else {
            warn!(header = %name, "program set an invalid header value; dropped");
            continue;
        };
        headers.append(hname, hvalue);
    }
    if !resp.content_type.is_empty() {
        match HeaderValue::from_str(resp.content_type.trim()) {
            Ok(v) => {
                headers.insert(header::CONTENT_TYPE, v);
            }
            Err(_) => warn!("program set an invalid content type; dropped"),
        }
    }
    Answer {
        status,
        headers,
        body: Bytes::from(resp.body),
        close: false,
    }
}

/// Final touches: framing headers, `Server`, HEAD and no-body statuses.
fn finish(answer: Answer, is_head: bool, server_header: bool) -> Response<RespBody> {
    let Answer {
        status,
        mut headers,
        body,
        close,
    } = answer;
    let bodyless_status = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if !bodyless_status {
        // For HEAD this is the length the body would have had.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if server_header && !headers.contains_key(header::SERVER) {
        headers.insert(header::SERVER, HeaderValue::from_static("edgevm"));
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let body = if is_head || bodyless_status {
        Bytes::new()
    } else {
        body
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// The native baseline for benchmarks: answer `Hello World!` (text/plain) on every path with
/// the same hyper stack and default [`HttpOptions`] limits, until `shutdown` completes.
pub async fn serve_static_hello(
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    serve_static_hello_on(listener, shutdown).await
}

/// [`serve_static_hello`] on an already bound listener.
pub async fn serve_static_hello_on(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let opts = HttpOptions::new(listener.local_addr()?);
    info!(addr = %opts.listen, "static hello baseline listening");
    accept_loop(
        Listener::Tcp(listener),
        &opts,
        |_| {
            service_fn(|_req: Request<Incoming>| async {
                let mut resp = Response::new(Full::new(Bytes::from_static(b"Hello World!")));
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(12u32));
                Ok::<_, Infallible>(resp)
            })
        },
        shutdown,
    )
    .await
}

/// Blocking convenience for the baseline: 2 worker threads, until SIGTERM or SIGINT.
pub fn run_static_hello(listen: SocketAddr) -> io::Result<()> {
    let rt = http_runtime()?;
    let result = rt.block_on(async {
        let stop = shutdown_signal()?;
        serve_static_hello(listen, stop).await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}
