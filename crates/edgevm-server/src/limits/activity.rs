//! Per-connection activity: the header, idle and body deadlines (`Activity`, `supervise`)
//! and the stream/service wrappers that note when bytes and requests move.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
// tokio's clock: paused in tests and in the HTTP fuzz target, so timeouts fire at once there.
use tokio::time::Instant;
use tracing::debug;

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
    pub(super) fn idle_since(&self) -> Option<Instant> {
        let idle = self.requests.load(Ordering::Relaxed) > 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
            && !self.evicting.load(Ordering::Relaxed);
        idle.then(|| self.at(self.last_io.load(Ordering::Relaxed)))
    }

    /// Tell the connection to close (see [`supervise`]).
    pub(super) fn evict(&self) {
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
