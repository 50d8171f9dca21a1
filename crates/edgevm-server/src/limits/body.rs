//! Request bodies: reading them under the size limit and the server-wide memory budget.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
// tokio's clock: paused in tests and in the HTTP fuzz target, so timeouts fire at once there.
use tokio::time::Instant;

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
pub(super) const TRIM_AFTER: usize = 16 << 20;

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
    pub(super) async fn grow(&mut self, n: usize, deadline: Instant) -> bool {
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
