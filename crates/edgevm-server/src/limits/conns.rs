//! Connections: the fd limit, the server-wide and per-address connection caps (`Admission`).

use super::activity::Activity;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::listen::{Conn, Peer};
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
