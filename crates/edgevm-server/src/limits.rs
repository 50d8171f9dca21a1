//! What one HTTP client can hold on to, and for how long.
//!
//! The HTTP front end ([`crate::http`]) serves untrusted clients. Besides hyper's own limits on
//! the request head (size and number of headers, answered with 431) and the body size limit
//! (413), this module bounds the time and the connections a client can take:
//!
//! * **Connections**: at most [`crate::http::HttpOptions::max_connections`] are served at once. A connection
//!   beyond it is **refused**: it gets a `503 Service Unavailable` (`Connection: close`,
//!   `Retry-After: 1`) written without waiting and is closed at once. It is not queued: a
//!   queue would keep the client's socket open with no answer, which is exactly what an
//!   attacker holding connections wants. [`raise_fd_limit`] lifts the process's open-file
//!   limit so that the limit, not the file descriptors, is what runs out.
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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::listen::Conn;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// Counts open connections against [`crate::http::HttpOptions::max_connections`].
pub(crate) struct Admission {
    slots: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
    last_warning: AtomicU64,
    epoch: Instant,
}

impl Admission {
    pub(crate) fn new(max_connections: usize) -> Admission {
        let max = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            slots: Arc::new(Semaphore::new(max)),
            max,
            refused: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A slot for a new connection, or `None` (after answering 503 and closing it) when all
    /// are taken.
    pub(crate) fn admit(&self, stream: Conn) -> Option<(Conn, OwnedSemaphorePermit)> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some((stream, permit)),
            Err(_) => {
                // Best effort and without waiting: the socket buffer takes this easily.
                stream.try_write(REFUSED);
                let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let now = self.epoch.elapsed().as_secs() + 1;
                if self.last_warning.swap(now, Ordering::Relaxed) != now {
                    warn!(
                        max_connections = self.max,
                        refused_total = n,
                        "connection limit reached: refusing new connections with 503"
                    );
                }
                None
            }
        }
    }
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
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
        })
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
    tokio::select! {
        r = conn => r,
        why = expiry(&act, t) => {
            debug!("closing connection: {why}");
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
}

impl BodyError {
    /// The HTTP status to answer with (the connection is closed after it either way).
    pub fn status(&self) -> hyper::StatusCode {
        match self {
            BodyError::TooLarge(_) => hyper::StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => hyper::StatusCode::REQUEST_TIMEOUT,
            BodyError::Failed(_) => hyper::StatusCode::BAD_REQUEST,
        }
    }
}

/// Read a whole request body of at most `max` bytes within `timeout` (`None`: no limit).
/// Announced sizes above `max` are refused before reading anything, chunked bodies as soon as
/// they cross it.
pub async fn read_body(
    body: Incoming,
    max: usize,
    timeout: Option<Duration>,
) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > max as u64 {
        return Err(BodyError::TooLarge(max));
    }
    if body.is_end_stream() {
        // No body (most GETs): nothing to wait for, no timer.
        return Ok(Bytes::new());
    }
    let collect = async {
        match Limited::new(body, max).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(BodyError::TooLarge(max))
            }
            Err(e) => Err(BodyError::Failed(e.to_string())),
        }
    };
    match timeout {
        None => collect.await,
        Some(t) => tokio::time::timeout(t, collect)
            .await
            .unwrap_or(Err(BodyError::TimedOut(t))),
    }
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

    #[test]
    fn connections_fit_in_the_fd_limit() {
        assert_eq!(connections_for_fds(10_000, 1024), 768);
        assert_eq!(connections_for_fds(100, 1024), 100);
        assert_eq!(connections_for_fds(10_000, u64::MAX), 10_000);
        assert_eq!(connections_for_fds(10_000, 100), 16);
        assert!(raise_fd_limit() >= 16);
    }
}
