//! What a program is configured with ([`ProgramSettings`]), the environment knobs of the
//! request path, and the per-program counters ([`Stats`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::histogram::Histogram;
use crate::request_vm::RequestSettings;
use crate::vm::VmOptions;

/// How long a request may wait for a free VM (the reference's 60 s).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// [`QUEUE_TIMEOUT`], or `EDGEVM_QUEUE_TIMEOUT_MS` from the environment when set (tests use
/// it to see the 503 without waiting a minute).
pub fn queue_timeout() -> Duration {
    static T: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        crate::env::queue_timeout_ms()
            .map(Duration::from_millis)
            .unwrap_or(QUEUE_TIMEOUT)
    })
}
/// Requests waiting beyond this many per program (for its boot or for a VM) are refused at
/// once, whatever `max_queue` says.
pub const MAX_QUEUE: usize = 8192;

/// How long a request runs on the thread that read it before it is moved to a blocking
/// thread: 4 ms, or `EDGEVM_INLINE_SLICE_US` (0: always run requests on a blocking thread).
pub fn inline_slice() -> Option<Duration> {
    static T: OnceLock<Option<Duration>> = OnceLock::new();
    *T.get_or_init(|| {
        let us = crate::env::inline_slice_us().unwrap_or(4000);
        (us > 0).then(|| Duration::from_micros(us))
    })
}

/// Everything about one program.
#[derive(Debug, Clone)]
pub struct ProgramSettings {
    /// Boot options.
    pub vm: VmOptions,
    /// Number of request VMs.
    pub concurrency: u32,
    /// Requests that may wait for a free VM (`max_queue`); more are refused at once
    /// ([`crate::ServeError::QueueFull`]). At most [`MAX_QUEUE`].
    pub max_queue: usize,
    /// Free the idle request VMs once no request took one for this long
    /// (`free_idle_vms_after`; see `idle.rs`).
    pub free_idle_vms_after: Option<Duration>,
    /// Free the frozen image too once every request VM is freed (`free_idle_image`; needs
    /// [`ProgramSettings::snapshot`]): the next request loads it back from the snapshot.
    pub free_idle_image: bool,
    /// Per-request policy.
    pub request: RequestSettings,
    /// Boot at server start.
    pub start: bool,
    /// Where it came from, for the load log line ("local" / "remote").
    pub origin: &'static str,
    /// Whether the file came from a cache.
    pub cached: bool,
    /// Mock requests sent to the main VM before it is frozen (`warmup`).
    pub warmup: Option<WarmupSettings>,
    /// Live-update key (empty: live update disabled).
    pub key: String,
    /// Boot a storage VM (`storage`).
    pub storage: bool,
    /// A separate storage program (from an archive); None = the same binary.
    pub storage_binary: Option<Arc<Vec<u8>>>,
    /// max_storage_time.
    pub max_storage_time: Duration,
    /// Where the binary comes from at boot; None = `vm.binary` as given.
    pub loader: Option<Loader>,
    /// The program's snapshot file (`cold_start_file`, or in the server's `snapshot_dir`):
    /// started from when it is valid, written after a boot (snapshot.rs). None: always boot.
    pub snapshot: Option<std::path::PathBuf>,
    /// The TCP server mode (`server`): the program serves connections itself
    /// (tcp_server.rs). Such a program starts with the server.
    pub server: Option<crate::tcp_server::ServerMode>,
}

/// A program's binaries as obtained at boot time (e.g. downloaded by the server).
#[derive(Debug, Clone)]
pub struct LoadedBinary {
    /// The request program.
    pub request: Vec<u8>,
    /// The storage program, when it differs (archive entry ending in "storage").
    pub storage: Option<Vec<u8>>,
    /// "local" / "remote", for the load log line.
    pub origin: &'static str,
    /// Whether a cached copy was used.
    pub cached: bool,
    /// Time spent downloading, if any.
    pub download_time: Option<Duration>,
}

/// Obtains a program's binary when it boots (lazily, on the boot thread): the runtime knows
/// nothing of URIs; the server supplies this. The second field is the file the loader reads
/// when that is all it does (a local file, no `download` list): a start from a snapshot
/// written from that very file, unchanged since, does not read it (snapshot.rs).
#[derive(Clone)]
pub struct Loader(
    pub Arc<dyn Fn() -> Result<LoadedBinary, String> + Send + Sync>,
    pub Option<std::path::PathBuf>,
);

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loader")
    }
}

/// The `warmup` setting.
#[derive(Debug, Clone)]
pub struct WarmupSettings {
    /// How many requests.
    pub num_requests: u32,
    /// URL of each.
    pub url: String,
    /// Method.
    pub method: String,
    /// Headers ("Key: value").
    pub headers: Vec<String>,
}

/// Per-program counters.
#[derive(Debug)]
pub struct Stats {
    /// Requests handled by a VM.
    pub requests: AtomicU64,
    /// Responses by class (2xx..5xx from the program).
    pub status_2xx: AtomicU64,
    /// 3xx.
    pub status_3xx: AtomicU64,
    /// 4xx.
    pub status_4xx: AtomicU64,
    /// 5xx (program's own or failures).
    pub status_5xx: AtomicU64,
    /// Timeouts.
    pub timeouts: AtomicU64,
    /// CPU exceptions.
    pub exceptions: AtomicU64,
    /// Memory limit hits.
    pub memory_errors: AtomicU64,
    /// Other failures (no response, exit, API misuse).
    pub other_errors: AtomicU64,
    /// Resets after requests.
    pub resets: AtomicU64,
    /// Full resets.
    pub full_resets: AtomicU64,
    /// VM exits, summed over requests.
    pub exits: AtomicU64,
    /// Requests that waited too long in the queue.
    pub queue_timeouts: AtomicU64,
    /// Requests refused at once because `max_queue` requests were waiting already.
    pub queue_full: AtomicU64,
    /// Total queue wait, microseconds.
    pub queue_wait_us: AtomicU64,
    /// Exits of the last request.
    pub last_exits: AtomicU64,
    /// Host memory held by the frozen image (bytes).
    pub memory_image_bytes: AtomicU64,
    /// Successful live updates.
    pub live_updates: AtomicU64,
    /// Requests that outlived their time slice on the HTTP worker and finished on a blocking
    /// thread.
    pub preempted: AtomicU64,
    /// Size of the request program's binary.
    pub binary_size: AtomicU64,
    /// Bytes of storage state carried across live updates.
    pub live_update_transfer_bytes: AtomicU64,
    /// Starts from a snapshot file instead of a boot.
    pub snapshot_starts: AtomicU64,
    /// Snapshot files written.
    pub snapshot_writes: AtomicU64,
    /// Snapshot files found stale, corrupt or refused (the program booted instead).
    pub snapshot_rejected: AtomicU64,
    /// 1 while the frozen image is in memory (0 before the first start and while freed).
    pub image_resident: AtomicU64,
    /// Frozen images freed because the program was idle (`free_idle_image`).
    pub images_freed: AtomicU64,
    /// Frozen images loaded back (or booted again) after that.
    pub images_reloaded: AtomicU64,
    /// `sys_fetch` counters (shared with the program's VMs through its `NetAccess`).
    pub fetch: Arc<crate::net::FetchCounters>,
    /// The TCP server mode's counters (`server`, `websocket_server`).
    pub tcp: Arc<crate::tcp_server::TcpCounters>,
    /// Time from a request reaching the program to its answer (queue wait included), for
    /// the requests a VM handled.
    pub request_time: Histogram,
    /// Time a request waited for the program's boot and a free VM.
    pub queue_time: Histogram,
    /// VM exits per request.
    pub request_exits: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        let z = AtomicU64::default;
        Stats {
            requests: z(),
            status_2xx: z(),
            status_3xx: z(),
            status_4xx: z(),
            status_5xx: z(),
            timeouts: z(),
            exceptions: z(),
            memory_errors: z(),
            other_errors: z(),
            resets: z(),
            full_resets: z(),
            exits: z(),
            queue_timeouts: z(),
            queue_full: z(),
            queue_wait_us: z(),
            last_exits: z(),
            memory_image_bytes: z(),
            live_updates: z(),
            preempted: z(),
            binary_size: z(),
            live_update_transfer_bytes: z(),
            snapshot_starts: z(),
            snapshot_writes: z(),
            snapshot_rejected: z(),
            image_resident: z(),
            images_freed: z(),
            images_reloaded: z(),
            fetch: Arc::default(),
            tcp: Arc::default(),
            request_time: Histogram::seconds(),
            queue_time: Histogram::seconds(),
            request_exits: Histogram::exits(),
        }
    }
}

/// A snapshot of [`Stats`] for reporting.
pub type StatsSnapshot = BTreeMap<&'static str, u64>;

impl Stats {
    /// Current values by name.
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BTreeMap::from([
            ("requests", l(&self.requests)),
            ("status_2xx", l(&self.status_2xx)),
            ("status_3xx", l(&self.status_3xx)),
            ("status_4xx", l(&self.status_4xx)),
            ("status_5xx", l(&self.status_5xx)),
            ("timeouts", l(&self.timeouts)),
            ("exceptions", l(&self.exceptions)),
            ("memory_errors", l(&self.memory_errors)),
            ("other_errors", l(&self.other_errors)),
            ("resets", l(&self.resets)),
            ("full_resets", l(&self.full_resets)),
            ("exits", l(&self.exits)),
            ("last_request_exits", l(&self.last_exits)),
            ("queue_timeouts", l(&self.queue_timeouts)),
            ("queue_full", l(&self.queue_full)),
            ("queue_wait_us", l(&self.queue_wait_us)),
            ("memory_image_bytes", l(&self.memory_image_bytes)),
            ("live_updates", l(&self.live_updates)),
            ("preempted", l(&self.preempted)),
            ("binary_size", l(&self.binary_size)),
            (
                "live_update_transfer_bytes",
                l(&self.live_update_transfer_bytes),
            ),
            ("snapshot_starts", l(&self.snapshot_starts)),
            ("snapshot_writes", l(&self.snapshot_writes)),
            ("snapshot_rejected", l(&self.snapshot_rejected)),
            ("image_resident", l(&self.image_resident)),
            ("images_freed", l(&self.images_freed)),
            ("images_reloaded", l(&self.images_reloaded)),
            ("fetches", l(&self.fetch.fetches)),
            ("fetch_failures", l(&self.fetch.failures)),
            ("fetch_bytes", l(&self.fetch.bytes)),
            ("tcp_connections_open", l(&self.tcp.open)),
            ("tcp_connections", l(&self.tcp.connections)),
            ("tcp_refused", l(&self.tcp.refused)),
            ("tcp_events", l(&self.tcp.events)),
            ("tcp_bytes_read", l(&self.tcp.bytes_read)),
            ("tcp_bytes_written", l(&self.tcp.bytes_written)),
            ("tcp_failures", l(&self.tcp.failures)),
        ])
    }
}
