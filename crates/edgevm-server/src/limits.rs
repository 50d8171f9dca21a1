//! What one HTTP client can hold on to, and for how long.
//!
//! The HTTP front end ([`crate::http`]) serves untrusted clients. Besides hyper's own limits on
//! the request head (size and number of headers, answered with 431) and the body size limit
//! (413), this module bounds the time and the connections a client can take:
//!
//! * **Connections**: at most [`crate::http::HttpOptions::max_connections`] are served at
//!   once. At the limit the kept-alive connection idle the longest (no request in progress or
//!   starting) is closed to admit a new one, so clients holding idle connections cannot lock
//!   others out. With none idle, the new connection is **refused**: it gets a `503 Service
//!   Unavailable` (`Connection: close`, `Retry-After: 1`) written without waiting and is
//!   closed at once. It is not queued: a queue would keep the client's socket open with no
//!   answer, which is exactly what an attacker holding connections wants. An optional
//!   per-address limit ([`crate::http::HttpOptions::max_connections_per_address`]) refuses
//!   the same way. [`raise_fd_limit`] lifts the process's open-file limit so that the limit,
//!   not the file descriptors, is what runs out.
//! * **Header timeout** ([`crate::http::HttpOptions::header_read_timeout`], slowloris): a new connection
//!   must deliver its first complete request head within it of being accepted, and on a
//!   kept-alive connection a request head must be complete within it of its first byte. The
//!   connection is closed otherwise (no response: hyper has no request to answer).
//! * **Idle timeout** ([`crate::http::HttpOptions::idle_timeout`]): a kept-alive connection with no request
//!   in progress, nothing arriving and nothing being written is closed after it. It also
//!   bounds a client that stops reading a response.
//! * **Body timeout** ([`crate::http::HttpOptions::body_timeout`]): the whole request body must arrive
//!   within it of the request head; otherwise 408 Request Timeout and the connection is
//!   closed. No VM is involved before the body is complete ([`read_body`]).
//! * **Body memory** ([`BodyBudget`]): the bodies buffered by all connections together stay
//!   within a server-wide budget; past it a body waits [`BUDGET_WAIT`], then gets 503.
//!
//! While a request is in progress (head received, response not yet handed to hyper) neither
//! the header nor the idle timeout runs: the program's own `max_request_time` bounds that.
//!
//! Mechanism: each connection's stream is wrapped in [`TrackedIo`] (notes when bytes move),
//! its service in [`TrackedService`] (notes when requests start and end), and its hyper
//! connection future runs under [`supervise`], which closes the connection when a deadline
//! computed from those notes passes. hyper's own `header_read_timeout` is not used: it also
//! starts right after each response, so it cannot tell a slow head from an idle keep-alive
//! connection.
//!
//! The notes are plain atomic stores: nothing wakes the supervisor when they change (three
//! wake-ups and a timer re-registration per request cost ~1-2 µs of CPU per request). It
//! sleeps until the current deadline but at most one *step* (the shortest timeout) at a time
//! and then looks again. That is never late: a deadline that arises after it went to sleep
//! (a request head starting, a request ending) lies at least one step after that moment, so
//! it is seen on waking and waited for exactly. A connection costs one timer wake-up per step
//! (10 s by default) at most.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::listen::{Conn, Peer};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
// tokio's clock: paused in tests and in the HTTP fuzz target, so timeouts fire at once there.
use tokio::time::Instant;
use tracing::{debug, warn};

/// File descriptors kept free of connections for VMs, program files and logs when
/// [`raise_fd_limit`] clamps `max_connections`.
pub const FD_RESERVE: u64 = 256;

/// What a refused connection gets before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 34\r\n\
retry-after: 1\r\n\
connection: close\r\n\
server: edgevm\r\n\
\r\n\
edgevm: too many open connections\n";

/// Raise the soft limit on open files to the hard limit; returns the limit now in force
/// (`u64::MAX` when unlimited). Every connection takes one file descriptor.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        lim.rlim_cur
    }
}

/// `max_connections` that fit in `fd_limit` open files with [`FD_RESERVE`] kept free.
pub fn connections_for_fds(max_connections: usize, fd_limit: u64) -> usize {
    let room = fd_limit.saturating_sub(FD_RESERVE).max(16);
    max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
}

// ------------------------------------------------------------------------------------------
// Admission
// ------------------------------------------------------------------------------------------

/// Counts open connections against [`crate::http::HttpOptions::max_connections`] (and, when
/// set, [`crate::http::HttpOptions::max_connections_per_address`]). At the limit, the
/// kept-alive connection idle the longest is closed to admit the new one; only when none is
/// idle is the new one refused.
pub(crate) struct Admission {
    max: usize,
    per_address: Option<usize>,
    state: std::sync::Mutex<Open>,
    refused: AtomicU64,
    evicted: AtomicU64,
    last_warning: AtomicU64,
    epoch: Instant,
}

/// The open connections.
#[derive(Default)]
struct Open {
    count: usize,
    next_id: u64,
    conns: std::collections::HashMap<u64, Arc<Activity>>,
    per_ip: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// An admitted connection's place; given back when dropped.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    id: u64,
    ip: Option<std::net::IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.count -= 1;
        open.conns.remove(&self.id);
        if let Some(ip) = self.ip {
            if let std::collections::hash_map::Entry::Occupied(mut e) = open.per_ip.entry(ip) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(max_connections: usize, per_address: Option<usize>) -> Arc<Admission> {
        Arc::new(Admission {
            max: max_connections.max(1),
            per_address: per_address.map(|n| n.max(1)),
            state: Default::default(),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `peer` whose activity is `act`, or `None` (after
    /// answering 503 and closing it). At the connection limit the kept-alive connection idle
    /// the longest is told to close (it goes within moments; the count may exceed the limit
    /// by the connections being closed so).
    pub(crate) fn admit(
        self: &Arc<Self>,
        stream: Conn,
        peer: Peer,
        act: &Arc<Activity>,
    ) -> Option<(Conn, Slot)> {
        let ip = match peer {
            Peer::Tcp(a) => Some(a.ip()),
            Peer::Unix => None,
        };
        let mut open = self.lock();
        let why = if let (Some(limit), Some(ip)) = (self.per_address, ip) {
            (open.per_ip.get(&ip).copied().unwrap_or(0) >= limit)
                .then_some("connection limit per client address reached")
        } else {
            None
        };
        let why = why.or_else(|| {
            if open.count < self.max {
                return None;
            }
            match oldest_idle(&open.conns) {
                Some(victim) => {
                    victim.evict();
                    let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
                    debug!(
                        evicted_total = n,
                        "connection limit: closing the longest-idle keep-alive connection"
                    );
                    None
                }
                None => Some("connection limit reached"),
            }
        });
        if let Some(why) = why {
            drop(open);
            // Best effort and without waiting: the socket buffer takes this easily.
            stream.try_write(REFUSED);
            let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            let now = self.epoch.elapsed().as_secs() + 1;
            if self.last_warning.swap(now, Ordering::Relaxed) != now {
                warn!(
                    max_connections = self.max,
                    refused_total = n,
                    "{why}: refusing new connections with 503"
                );
            }
            return None;
        }
        open.count += 1;
        let id = open.next_id;
        open.next_id += 1;
        open.conns.insert(id, act.clone());
        if let (Some(ip), Some(_)) = (ip, self.per_address) {
            *open.per_ip.entry(ip).or_default() += 1;
        }
        drop(open);
        let ip = ip.filter(|_| self.per_address.is_some());
        Some((
            stream,
            Slot {
                admission: self.clone(),
                id,
                ip,
            },
        ))
    }
}

/// The kept-alive connection idle the longest (and not already told to close), if any.
fn oldest_idle(conns: &std::collections::HashMap<u64, Arc<Activity>>) -> Option<&Arc<Activity>> {
    conns
        .values()
        .filter_map(|a| a.idle_since().map(|t| (t, a)))
        .min_by_key(|(t, _)| *t)
        .map(|(_, a)| a)
}

// ------------------------------------------------------------------------------------------
// Per-connection activity
// ------------------------------------------------------------------------------------------

/// The timeouts of [`crate::http::HttpOptions`] that the supervisor enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    header: Option<Duration>,
    idle: Option<Duration>,
}

impl Timeouts {
    /// The header and the idle timeout (`None`: off).
    pub(crate) fn new(header: Option<Duration>, idle: Option<Duration>) -> Timeouts {
        Timeouts { header, idle }
    }
}

/// What a connection is doing, shared by its stream, its service and its supervisor.
/// Times are milliseconds since `epoch` (`head_started`: plus one, 0 = none).
pub(crate) struct Activity {
    epoch: Instant,
    in_flight: AtomicU32,
    requests: AtomicU64,
    last_io: AtomicU64,
    head_started: AtomicU64,
    /// Told to close (to admit a new connection at the limit).
    evict: tokio::sync::Notify,
    evicting: std::sync::atomic::AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            evict: tokio::sync::Notify::new(),
            evicting: Default::default(),
        })
    }

    /// Since when a kept-alive connection has been idle (no request in progress, none
    /// starting, at least one served); `None` for anything else, or one already told to close.
    fn idle_since(&self) -> Option<Instant> {
        let idle = self.requests.load(Ordering::Relaxed) > 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
            && !self.evicting.load(Ordering::Relaxed);
        idle.then(|| self.at(self.last_io.load(Ordering::Relaxed)))
    }

    /// Tell the connection to close (see [`supervise`]).
    fn evict(&self) {
        self.evicting.store(true, Ordering::Relaxed);
        self.evict.notify_one();
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Bytes arrived.
    fn on_read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            // The header deadline starts with the first byte of a head (see `expiry` for why
            // the supervisor need not be told).
            let _ = self.head_started.compare_exchange(
                0,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Bytes were written.
    fn on_write(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// When the connection must be closed if nothing changes, and why; `None` while a
    /// request is in progress or when the applicable timeout is off.
    fn deadline(&self, t: Timeouts) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return t.header.map(|d| {
                (
                    self.epoch + d,
                    "no request head on a new connection in time",
                )
            });
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 {
            return t
                .header
                .map(|d| (self.at(head - 1) + d, "request head not complete in time"));
        }
        let last = self.last_io.load(Ordering::Relaxed);
        t.idle
            .map(|d| (self.at(last) + d, "idle keep-alive connection"))
    }
}

/// Wait until the connection has to be closed; the reason. Sleeps until the current deadline,
/// at most one step (the shortest timeout) at a time: any deadline that arises while it
/// sleeps (a head starting, a request ending) lies at least a step after the moment it went to
/// sleep, so it is seen on waking and never missed. Nothing has to wake it when the
/// connection's activity changes.
async fn expiry(act: &Activity, t: Timeouts) -> &'static str {
    let Some(step) = [t.header, t.idle].into_iter().flatten().min() else {
        return std::future::pending().await;
    };
    // (A zero timeout would make this spin while a request runs.)
    let step = step.max(Duration::from_millis(10));
    loop {
        let now = Instant::now();
        let wake = match act.deadline(t) {
            Some((deadline, why)) if deadline <= now => return why,
            Some((deadline, _)) => deadline.min(now + step),
            None => now + step,
        };
        tokio::time::sleep_until(wake).await;
    }
}

/// Run a connection future until it ends or a timeout of `t` closes it (by dropping it,
/// which closes the socket). The connection's own result, or `Ok` after a timeout.
pub(crate) async fn supervise<F, E>(conn: F, act: Arc<Activity>, t: Timeouts) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    // Told to close to make room: only while still idle (a request that started meanwhile
    // is served; the connection limit is then exceeded by one until something closes).
    let evicted = async {
        loop {
            act.evict.notified().await;
            let idle = act.in_flight.load(Ordering::Relaxed) == 0
                && act.head_started.load(Ordering::Relaxed) == 0;
            if idle {
                return;
            }
        }
    };
    tokio::select! {
        r = conn => r,
        why = expiry(&act, t) => {
            debug!("closing connection: {why}");
            Ok(())
        }
        _ = evicted => {
            debug!("closing the longest-idle keep-alive connection to admit a new one");
            Ok(())
        }
    }
}

/// A stream that records in [`Activity`] when bytes move.
pub struct TrackedIo<T> {
    inner: T,
    act: Arc<Activity>,
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, act: Arc<Activity>) -> Self {
        TrackedIo { inner, act }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.act.on_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A service that records in [`Activity`] when requests start and end (the response is
/// ready, or the request was abandoned because the client went away).
pub struct TrackedService<S> {
    inner: S,
    act: Arc<Activity>,
}

impl<S> TrackedService<S> {
    pub(crate) fn new(inner: S, act: Arc<Activity>) -> Self {
        TrackedService { inner, act }
    }
}

/// Ends the request in [`Activity`] when dropped (completed or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

impl<S, B> hyper::service::Service<Request<B>> for TrackedService<S>
where
    S: hyper::service::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        self.act.request_started();
        let guard = InFlight(self.act.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

// ------------------------------------------------------------------------------------------
// Request bodies
// ------------------------------------------------------------------------------------------

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit (announced or as received).
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Not complete within the body timeout.
    #[error("request body not received within {} s", .0.as_secs_f64())]
    TimedOut(Duration),
    /// The client sent a broken body or went away.
    #[error("could not read request body: {0}")]
    Failed(String),
    /// The server-wide budget for buffered bodies ([`BodyBudget`]) stayed full.
    #[error("server busy: too much request body data buffered; retry later")]
    OverBudget,
}

impl BodyError {
    /// The HTTP status to answer with (the connection is closed after it either way).
    pub fn status(&self) -> hyper::StatusCode {
        match self {
            BodyError::TooLarge(_) => hyper::StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => hyper::StatusCode::REQUEST_TIMEOUT,
            BodyError::Failed(_) => hyper::StatusCode::BAD_REQUEST,
            BodyError::OverBudget => hyper::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// How long a body waits for room in a full [`BodyBudget`] before it gets 503.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// After a burst that buffered at least this much, memory goes back to the system once no
/// body is buffered any more.
const TRIM_AFTER: usize = 16 << 20;

/// The server-wide budget for buffered request bodies
/// ([`crate::http::HttpOptions::body_memory`]). Every body byte received is counted against
/// it until its request is finished; a body that finds no room waits [`BUDGET_WAIT`] for some
/// and then gets 503 with `Retry-After`. One body may always take the whole budget (so a
/// budget below a body limit makes such bodies wait for each other rather than fail). When
/// the last buffered body is released after a burst, the allocator gives its free memory
/// back to the system (glibc `malloc_trim`).
#[derive(Clone)]
pub struct BodyBudget(Arc<BudgetState>);

struct BudgetState {
    total: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    freed: tokio::sync::Notify,
    trims: AtomicU64,
}

impl std::fmt::Debug for BodyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyBudget({} bytes)", self.0.total)
    }
}

impl BodyBudget {
    /// A budget of `bytes` (at least 1).
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget(Arc::new(BudgetState {
            total: bytes.max(1),
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            trims: AtomicU64::new(0),
        }))
    }

    /// The default: an eighth of the machine's memory, at least 64 MiB.
    pub fn default_bytes() -> usize {
        // SAFETY: sysconf only reads system configuration.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ram = (pages.max(0) as u64).saturating_mul(size.max(0) as u64);
        usize::try_from(ram / 8).unwrap_or(usize::MAX).max(64 << 20)
    }

    /// The budget in bytes.
    pub fn total(&self) -> usize {
        self.0.total
    }

    /// Bytes buffered right now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// How often memory was given back after a burst.
    pub fn trims(&self) -> u64 {
        self.0.trims.load(Ordering::Relaxed)
    }

    /// An empty lease on this budget.
    pub fn lease(&self) -> BodyLease {
        BodyLease {
            budget: self.clone(),
            held: 0,
        }
    }

    /// Count `n` more bytes for a body that holds `already`, if they fit.
    fn try_take(&self, n: usize, already: usize) -> bool {
        let st = &self.0;
        let mut used = st.used.load(Ordering::Relaxed);
        loop {
            // One body alone may take the whole budget, whatever its size.
            let fits = used + n <= st.total || used == already;
            if !fits {
                return false;
            }
            match st
                .used
                .compare_exchange_weak(used, used + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    st.peak.fetch_max(used + n, Ordering::Relaxed);
                    return true;
                }
                Err(u) => used = u,
            }
        }
    }

    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let st = &self.0;
        let left = st.used.fetch_sub(n, Ordering::AcqRel) - n;
        st.freed.notify_waiters();
        if left == 0 && st.peak.load(Ordering::Relaxed) >= TRIM_AFTER {
            st.peak.store(0, Ordering::Relaxed);
            st.trims.fetch_add(1, Ordering::Relaxed);
            give_memory_back();
        }
    }
}

/// Return the allocator's free memory to the system (after a burst of large bodies). With a
/// runtime, half a second later on a blocking thread, so that the connections of the burst
/// have let go of their buffers too.
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trim = || {
            // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
            unsafe { libc::malloc_trim(0) };
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tokio::task::spawn_blocking(trim).await;
            })),
            Err(_) => trim(),
        }
    }
}

/// Bytes of one request body counted against a [`BodyBudget`]; given back when dropped.
pub struct BodyLease {
    budget: BodyBudget,
    held: usize,
}

impl BodyLease {
    /// Count `n` more bytes, waiting until `deadline` at most for room.
    async fn grow(&mut self, n: usize, deadline: Instant) -> bool {
        loop {
            let freed = self.budget.0.freed.notified();
            if self.budget.try_take(n, self.held) {
                self.held += n;
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

/// Read a whole request body of at most `max` bytes within `timeout` (`None`: no limit),
/// counting it against `budget` (the lease gives it back when dropped: keep it until the
/// request is finished). Announced sizes above `max` are refused before reading anything,
/// chunked bodies as soon as they cross it.
pub async fn read_body(
    mut body: Incoming,
    max: usize,
    timeout: Option<Duration>,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyLease), BodyError> {
    let mut lease = budget.lease();
    if body.size_hint().lower() > max as u64 {
        return Err(BodyError::TooLarge(max));
    }
    if body.is_end_stream() {
        // No body (most GETs): nothing to wait for, no timer.
        return Ok((Bytes::new(), lease));
    }
    let collect = async {
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Failed(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len += data.len();
            if len > max {
                return Err(BodyError::TooLarge(max));
            }
            if !lease.grow(data.len(), Instant::now() + BUDGET_WAIT).await {
                return Err(BodyError::OverBudget);
            }
            chunks.push(data);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = Vec::with_capacity(len);
                for c in chunks.drain(..) {
                    all.extend_from_slice(&c);
                }
                Bytes::from(all)
            }
        })
    };
    let bytes = match timeout {
        None => collect.await?,
        Some(t) => tokio::time::timeout(t, collect)
            .await
            .unwrap_or(Err(BodyError::TimedOut(t)))?,
    };
    Ok((bytes, lease))
}

/// Read and throw away a request body already answered: at most `max` bytes within
/// `timeout`, nothing kept. Dropping the body early makes hyper close the connection.
pub async fn discard_body(mut body: Incoming, max: usize, timeout: Option<Duration>) {
    let drain = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            if let Some(d) = frame.data_ref() {
                seen = seen.saturating_add(d.len());
                if seen > max {
                    return;
                }
            }
        }
    };
    match timeout {
        None => drain.await,
        Some(t) => {
            let _ = tokio::time::timeout(t, drain).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_body_budget_makes_bodies_wait_then_refuses_them() {
        let b = BodyBudget::new(100);
        let mut one = b.lease();
        assert!(one.grow(60, Instant::now() + BUDGET_WAIT).await);
        let mut two = b.lease();
        assert!(two.grow(40, Instant::now() + BUDGET_WAIT).await);
        // Full: waits BUDGET_WAIT (paused clock) and gives up.
        let t0 = Instant::now();
        assert!(!two.grow(1, Instant::now() + BUDGET_WAIT).await);
        assert!(t0.elapsed() >= BUDGET_WAIT);
        assert_eq!(b.used(), 100);
        // Room made while waiting lets it in.
        let waiter = tokio::spawn(async move {
            let ok = two.grow(50, Instant::now() + BUDGET_WAIT).await;
            (ok, two)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(one);
        let (ok, two) = waiter.await.unwrap();
        assert!(ok);
        assert_eq!(b.used(), 90);
        drop(two);
        assert_eq!(b.used(), 0);
        // A body alone may take more than the whole budget.
        let mut big = b.lease();
        assert!(big.grow(150, Instant::now()).await);
        assert!(big.grow(150, Instant::now()).await);
        let mut other = b.lease();
        assert!(!other.grow(1, Instant::now()).await);
        drop(big);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn memory_goes_back_after_a_burst() {
        let b = BodyBudget::new(64 << 20);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut l = b.lease();
            assert!(l.grow(TRIM_AFTER, Instant::now()).await);
            let mut small = b.lease();
            assert!(small.grow(10, Instant::now()).await);
            drop(l);
            // Something still buffered: not yet.
            assert_eq!(b.trims(), 0);
            drop(small);
            assert_eq!(b.trims(), 1);
            // A small burst does not trim.
            let mut l = b.lease();
            assert!(l.grow(1000, Instant::now()).await);
            drop(l);
            assert_eq!(b.trims(), 1);
        });
    }

    #[test]
    fn connections_fit_in_the_fd_limit() {
        assert_eq!(connections_for_fds(10_000, 1024), 768);
        assert_eq!(connections_for_fds(100, 1024), 100);
        assert_eq!(connections_for_fds(10_000, u64::MAX), 10_000);
        assert_eq!(connections_for_fds(10_000, 100), 16);
        assert!(raise_fd_limit() >= 16);
    }
}
