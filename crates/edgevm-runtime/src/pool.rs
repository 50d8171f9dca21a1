//! Programs and their request-VM pools; the runtime the HTTP layer talks to.
//!
//! A program boots lazily on its first request (or at server start with `start`): a boot
//! thread runs the main VM to `wait_for_requests()`, freezes it, forks the first request VM
//! (the program is ready from then on) and then the other `concurrency - 1`. No VM or memory
//! slot is created per request.
//!
//! **Where a request runs.** The request VMs wait in a pool; a request takes one (waiting, in
//! arrival order, at most 60 s — then 503) and runs it *on the thread that read the request*
//! (an HTTP worker), with a time slice ([`inline_slice`], 4 ms). Handing every request to a
//! dedicated VM thread and back cost two thread wake-ups (~30 µs each on this nested machine,
//! a few µs on bare metal) — more than the VM cycle itself; running it in place costs none. A
//! request still running when its slice is over is stopped at an instruction boundary and
//! finished on a blocking thread (`spawn_blocking`), so a slow or hostile program holds an
//! HTTP worker for at most about one slice. KVM allows a vCPU to be run from any thread
//! (measured here: the first run after a move costs ~15 µs more); the run timer is the
//! thread's own (see `timer.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicUsize;
use std::sync::OnceLock;

use crate::request::{GuestRequest, GuestResponse, ProgramHost, ServeError, ServeFuture};
use crate::request_vm::{
    FailureKind, Invoker, RequestFailure, RequestSettings, RequestStats, RequestVm, Step,
};
use crate::storage::StorageHandle;
use crate::vm::{BootOutcome, Frozen, MainVm, VmOptions};

/// How long a request may wait for a free VM (the reference's 60 s).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// [`QUEUE_TIMEOUT`], or `EDGEVM_QUEUE_TIMEOUT_MS` from the environment when set (tests use
/// it to see the 503 without waiting a minute).
pub fn queue_timeout() -> Duration {
    static T: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("EDGEVM_QUEUE_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
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
        let us = std::env::var("EDGEVM_INLINE_SLICE_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(4000);
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
    /// ([`ServeError::QueueFull`]). At most [`MAX_QUEUE`].
    pub max_queue: usize,
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
/// nothing of URIs; the server supplies this.
#[derive(Clone)]
pub struct Loader(pub Arc<dyn Fn() -> Result<LoadedBinary, String> + Send + Sync>);

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
#[derive(Debug, Default)]
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
        ])
    }
}

/// KVM VMs made ahead for a program's request VMs, while its main VM boots (see
/// [`edgevm_kvm::VmShell`]): forking then only maps the memory and sets registers.
#[derive(Default)]
struct Shells(Mutex<Vec<edgevm_kvm::VmShell>>);

impl Shells {
    fn take(&self) -> Option<edgevm_kvm::VmShell> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }
}

/// The request VMs of a ready program.
struct VmPool {
    frozen: Arc<Frozen>,
    storage: Option<StorageHandle>,
    shells: Arc<Shells>,
    /// Idle VMs (boxed: a request moves its VM in and out of here), each with the thread
    /// that ran it last.
    idle: Mutex<Vec<(Box<RequestVm>, Option<std::thread::ThreadId>)>>,
    /// One permit per idle VM; waiters are served in arrival order.
    permits: tokio::sync::Semaphore,
}

impl VmPool {
    /// An idle VM, preferring one this thread ran last: running a vCPU on another thread
    /// than before costs more (KVM reloads its state; measured here ~15 µs), and its pages
    /// are warm in this CPU's caches. Otherwise the most recently used one.
    fn take(&self) -> Option<Box<RequestVm>> {
        let me = thread_id();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let i = idle
            .iter()
            .rposition(|(_, t)| *t == Some(me))
            .or_else(|| idle.len().checked_sub(1))?;
        Some(idle.swap_remove(i).0)
    }

    fn put(&self, vm: Box<RequestVm>) {
        let t = Some(thread_id());
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((vm, t));
        self.permits.add_permits(1);
    }
}

/// This thread's id, without `std::thread::current()`'s reference count traffic.
fn thread_id() -> std::thread::ThreadId {
    thread_local!(static ID: std::thread::ThreadId = std::thread::current().id());
    ID.with(|id| *id)
}

/// Decrements a counter when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
enum State {
    NotStarted,
    Booting,
    Ready { vms: u32, ready_ms: f64 },
    Failed(String),
}

/// One configured program.
pub struct Program {
    name: String,
    settings: ProgramSettings,
    state: Mutex<State>,
    changed: Condvar,
    /// Bumped at every state change, for requests waiting asynchronously for the boot.
    changed_async: tokio::sync::watch::Sender<u64>,
    /// The request VMs, once ready.
    pool: OnceLock<Arc<VmPool>>,
    /// Requests waiting for the boot or for a VM.
    waiting: AtomicUsize,
    /// Replaced by a live update: VMs coming back are freed once nobody waits for one.
    retired: std::sync::atomic::AtomicBool,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The storage VM, once booted.
    storage: Mutex<Option<StorageHandle>>,
    /// A live update's new program while it boots: its boot-time gauges (binary size, image
    /// size) wait in `held` until the update succeeds, so a refused update changes nothing
    /// that the stats of the running program show.
    candidate: std::sync::atomic::AtomicBool,
    held: [AtomicU64; 2],
}

impl Program {
    /// A program that is not started yet.
    pub fn new(name: &str, settings: ProgramSettings) -> Arc<Program> {
        Program::with_stats(name, settings, Arc::new(Stats::default()))
    }

    /// A program that continues the counters of `stats` (live update).
    pub fn with_stats(name: &str, settings: ProgramSettings, stats: Arc<Stats>) -> Arc<Program> {
        Arc::new(Program {
            name: name.to_string(),
            settings,
            state: Mutex::new(State::NotStarted),
            changed: Condvar::new(),
            changed_async: tokio::sync::watch::Sender::new(0),
            pool: OnceLock::new(),
            waiting: AtomicUsize::new(0),
            retired: Default::default(),
            stats,
            storage: Mutex::new(None),
            candidate: Default::default(),
            held: Default::default(),
        })
    }

    /// Set the boot-time gauges: in `stats`, or held back while this is a live update's
    /// candidate (see [`Program::publish_gauges`]).
    fn set_boot_gauge(&self, which: usize, value: u64) {
        if self.candidate.load(Ordering::Acquire) {
            self.held[which].store(value, Ordering::Relaxed);
        } else {
            let g = [&self.stats.binary_size, &self.stats.memory_image_bytes];
            g[which].store(value, Ordering::Relaxed);
        }
    }

    /// A live update's candidate became the program: its held gauges go into `stats`.
    fn publish_gauges(&self) {
        self.candidate.store(false, Ordering::Release);
        self.stats
            .binary_size
            .store(self.held[0].load(Ordering::Relaxed), Ordering::Relaxed);
        self.stats
            .memory_image_bytes
            .store(self.held[1].load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Settings.
    pub fn settings(&self) -> &ProgramSettings {
        &self.settings
    }

    /// "not started", "booting", "ready", or "failed: why".
    pub fn status(&self) -> String {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            State::NotStarted => "not started".into(),
            State::Booting => "booting".into(),
            State::Ready { .. } => "ready".into(),
            State::Failed(e) => format!("failed: {e}"),
        }
    }

    /// Start booting (once) on a background thread.
    pub fn start(self: &Arc<Self>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*st, State::NotStarted) {
            return;
        }
        *st = State::Booting;
        drop(st);
        let me = self.clone();
        let r = std::thread::Builder::new()
            .name(format!("boot:{}", self.name))
            .spawn(move || {
                // A bug while booting must not leave the program "booting" forever.
                let p = me.clone();
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || p.boot())).is_err()
                {
                    me.set_failed("internal error in edgevm while booting the program".into());
                }
            });
        if let Err(e) = r {
            self.set_failed(format!("cannot start boot thread: {e}"));
        }
    }

    /// Wait until the program is ready or failed (or the timeout passes). True if ready.
    pub fn wait_ready(&self, timeout: Duration) -> Result<bool, String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*st {
                State::Ready { .. } => return Ok(true),
                State::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn set_failed(&self, why: String) {
        if self.settings.origin == "live update" {
            tracing::warn!(
                "Live update of '{}' refused (the old program keeps serving): {why}",
                self.name
            );
        } else {
            tracing::error!("Program '{}' failed to start: {why}", self.name);
        }
        self.set_state(State::Failed(why));
    }

    fn set_state(&self, st: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = st;
        self.changed.notify_all();
        // Requests waiting for the boot see it.
        self.changed_async.send_modify(|v| *v += 1);
    }

    /// Boot the storage VM and start its thread.
    fn boot_storage(&self, settings: &ProgramSettings) -> Result<StorageHandle, String> {
        let mut opts = settings.vm.clone();
        opts.storage = true;
        if let Some(b) = &settings.storage_binary {
            opts.binary = b.clone();
        }
        crate::storage::start(opts, settings.max_storage_time, queue_timeout())
            .map_err(|e| e.to_string())
    }

    fn boot(self: Arc<Self>) {
        let t0 = Instant::now();
        let mut settings = self.settings.clone();
        let mut download = None;
        if let Some(loader) = &settings.loader {
            match (loader.0)() {
                Ok(b) => {
                    settings.vm.binary = Arc::new(b.request);
                    settings.storage_binary = b.storage.map(Arc::new);
                    settings.origin = b.origin;
                    settings.cached = b.cached;
                    download = b.download_time;
                }
                Err(e) => return self.set_failed(e),
            }
        }
        // Make the request VMs' KVM VMs while the program boots (on another CPU); the forks
        // after the freeze then only map memory and set registers.
        let shells = Arc::new(Shells::default());
        {
            let (sh, n) = (shells.clone(), self.settings.concurrency.max(1));
            let spawned = std::thread::Builder::new()
                .name(format!("prepare:{}", self.name))
                .spawn(move || {
                    // Below the boot thread's priority: the boot decides when the program is
                    // ready; this only uses what CPU is left (Linux: per-thread nice).
                    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
                    // SAFETY: plain system call on this thread's own id; failure is harmless.
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) };
                    for _ in 0..n {
                        match edgevm_kvm::VmShell::new(true) {
                            Ok(v) => sh.0.lock().unwrap_or_else(|e| e.into_inner()).push(v),
                            Err(_) => break,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::debug!("{}: no VM preparation thread: {e}", self.name);
            }
        }
        let storage = if settings.storage {
            match self.boot_storage(&settings) {
                Ok(h) => Some(h),
                Err(e) => return self.set_failed(e),
            }
        } else {
            None
        };
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = storage.clone();
        self.set_boot_gauge(0, settings.vm.binary.len() as u64);
        let opts = settings.vm.clone();
        let (vm, _report) = match MainVm::boot_with_storage(opts, storage.clone()) {
            Ok(x) => x,
            Err(e) => return self.set_failed(e.to_string()),
        };
        match _report.outcome {
            BootOutcome::Exited(code) => {
                return self.set_failed(format!(
                    "Program did not wait for requests (it exited with status {code} before calling wait_for_requests())"
                ))
            }
            BootOutcome::Ready => {}
        }
        let h = vm.handlers;
        if h.get == 0 && h.post == 0 && h.request == 0 {
            return self.set_failed(
                "the program registered no request handler (set_backend_get/post/request) before wait_for_requests()".into(),
            );
        }
        let vm = match &self.settings.warmup {
            Some(w) => match self.warm_up(vm, w, storage.clone()) {
                Ok(vm) => vm,
                Err(e) => return self.set_failed(e),
            },
            None => vm,
        };
        let frozen = match vm.freeze() {
            // The ELF is in the image now: the binary's bytes are not needed any more.
            Ok(mut f) => {
                f.opts.binary = Arc::default();
                Arc::new(f)
            }
            Err(e) => return self.set_failed(e.to_string()),
        };
        self.set_boot_gauge(1, frozen.image.backing_bytes());
        let n = self.settings.concurrency.max(1);
        // The first VM makes the program ready; the others follow on helper threads.
        let first = match self.fork(&frozen, &storage, &shells, 0) {
            Ok(vm) => vm,
            Err(e) => return self.set_failed(e),
        };
        let pool = Arc::new(VmPool {
            frozen: frozen.clone(),
            storage: storage.clone(),
            shells,
            idle: Mutex::new(Vec::with_capacity(n as usize)),
            permits: tokio::sync::Semaphore::new(0),
        });
        pool.put(first);
        let _ = self.pool.set(pool.clone());
        let ready_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ephemeral = frozen
            .ephemeral_override
            .unwrap_or(self.settings.request.ephemeral);
        let kind = match (ephemeral, self.settings.request.keep_working_memory) {
            (true, true) => " ephemeral-kwm",
            (true, false) => " ephemeral",
            _ => "",
        };
        let downloads = download
            .map(|d| format!("downloads={:.2}ms, ", d.as_secs_f64() * 1e3))
            .unwrap_or_default();
        tracing::info!(
            "Program '{}' is loaded ({}, {}, vm={n}{kind}, huge=0/0, {downloads}ready={ready_ms:.2} ms)",
            self.name,
            settings.origin,
            if settings.cached { "cached" } else { "not cached" },
        );
        self.set_state(State::Ready { vms: n, ready_ms });
        self.fork_rest(&pool, n);
    }

    /// Fork one request VM (index `i`).
    fn fork(
        &self,
        frozen: &Arc<Frozen>,
        storage: &Option<StorageHandle>,
        shells: &Shells,
        i: u32,
    ) -> Result<Box<RequestVm>, String> {
        let mut vm = RequestVm::new_in(
            frozen.clone(),
            self.settings.request.clone(),
            storage.clone(),
            shells.take(),
        )
        .map_err(|e| format!("cannot create a request VM: {e}"))?;
        vm.set_index(i);
        Ok(Box::new(vm))
    }

    /// Fork VMs 1..n into the pool, on up to as many threads as there are CPUs.
    fn fork_rest(self: &Arc<Self>, pool: &Arc<VmPool>, n: u32) {
        let next = Arc::new(std::sync::atomic::AtomicU32::new(1));
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get()) as u32;
        let threads = (n - 1).min(cpus);
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for t in 0..threads {
            let (me, pool, next) = (self.clone(), pool.clone(), next.clone());
            let h = std::thread::Builder::new()
                .name(format!("fork{t}:{}", self.name))
                .spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    match me.fork(&pool.frozen, &pool.storage, &pool.shells, i) {
                        Ok(vm) => pool.put(vm),
                        Err(e) => tracing::error!("{}: {e}", me.name),
                    }
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => tracing::error!("{}: cannot start a fork thread: {e}", self.name),
            }
        }
        for h in handles {
            let _ = h.join();
        }
        tracing::debug!(
            "Program '{}': {} more request VMs forked in {:.2} ms",
            self.name,
            n - 1,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }

    /// Send the warmup requests to the main VM, then put it back exactly at its
    /// wait_for_requests() point (registers and TLS), warmed.
    fn warm_up(
        &self,
        vm: MainVm,
        w: &WarmupSettings,
        storage: Option<StorageHandle>,
    ) -> Result<MainVm, String> {
        use edgevm_kvm::Vcpu;
        let regs = *vm.machine.cpu.regs();
        let (fs, gs) = (vm.machine.cpu.fs_base(), vm.machine.cpu.gs_base());
        let mut vm = vm;
        let xsave = vm.install_entry_fpu().map_err(|e| e.to_string())?;
        let entry = vm.entry_state(xsave);
        let mut inv = Invoker::new(vm, entry, self.settings.request.clone(), storage);
        let headers = w
            .headers
            .iter()
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let req = GuestRequest {
            method: w.method.clone(),
            url: w.url.clone(),
            headers,
            warmup: true,
            ..Default::default()
        };
        let t = Instant::now();
        for i in 0..w.num_requests {
            if let Err(f) = inv.invoke(&req) {
                return Err(format!(
                    "warmup request {} of {} failed: {}",
                    i + 1,
                    w.num_requests,
                    f.message
                ));
            }
        }
        let mut vm = inv.vm;
        *vm.machine.cpu.regs_mut() = regs;
        // The frozen state is the one before warmup: registers, and the FS and GS bases a
        // handler may have moved (arch_prctl) — every request would start with them.
        if vm.machine.cpu.fs_base() != fs {
            vm.machine.cpu.set_fs_base(fs).map_err(|e| e.to_string())?;
        }
        if vm.machine.cpu.gs_base() != gs {
            vm.machine.cpu.set_gs_base(gs).map_err(|e| e.to_string())?;
        }
        tracing::info!(
            "Program '{}' warmed up with {} requests in {:.2} ms",
            self.name,
            w.num_requests,
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(vm)
    }

    /// Wait (asynchronously) until the program is ready; start it if needed.
    async fn ready_pool(self: &Arc<Self>) -> Result<Arc<VmPool>, ServeError> {
        let mut rx = self.changed_async.subscribe();
        loop {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match st {
                State::Failed(e) => return Err(ServeError::ProgramUnavailable(e)),
                State::Ready { .. } => {
                    if let Some(p) = self.pool.get() {
                        return Ok(p.clone());
                    }
                }
                State::NotStarted => self.start(),
                State::Booting => {}
            }
            if rx.changed().await.is_err() {
                return Err(ServeError::ShuttingDown);
            }
        }
    }

    /// Serve one request: wait for the program and a free VM (in arrival order, at most the
    /// queue timeout), run the VM on this thread for a slice, and finish it on a blocking
    /// thread if it needs longer. Needs a tokio runtime (for the timeout and
    /// `spawn_blocking`).
    pub async fn serve(self: Arc<Self>, req: GuestRequest) -> Result<GuestResponse, ServeError> {
        let queued = Instant::now();
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUE {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(ServeError::QueueFull);
        }
        let waiting = Waiting(&self.waiting);
        if self.retired.load(Ordering::SeqCst)
            && self
                .pool
                .get()
                .is_some_and(|p| p.permits.available_permits() == 0)
        {
            // Looked up just before a live update swapped this program out, and its VMs
            // are being freed: answer at once rather than wait for one that never comes.
            return Err(ServeError::ShuttingDown);
        }
        let limit = queue_timeout();
        let timed_out = || {
            self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
            ServeError::QueueTimeout
        };
        // Fast paths first (a ready program, a free VM): no timer, no subscription.
        let pool = match self.pool.get() {
            Some(p) => p.clone(),
            None => match tokio::time::timeout(limit, self.ready_pool()).await {
                Ok(p) => p?,
                Err(_) => return Err(timed_out()),
            },
        };
        // try_acquire never overtakes a queued request: while requests wait, released
        // permits go to them, not to the free count.
        match pool.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(ServeError::ShuttingDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // `waiting` counts this request too: at most `max_queue` wait.
                if self.waiting.load(Ordering::Relaxed) > self.settings.max_queue {
                    self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    return Err(ServeError::QueueFull);
                }
                let left = limit.saturating_sub(queued.elapsed());
                match tokio::time::timeout(left, pool.permits.acquire()).await {
                    Ok(Ok(permit)) => permit.forget(),
                    Ok(Err(_)) => return Err(ServeError::ShuttingDown),
                    Err(_) => return Err(timed_out()),
                }
            }
        }
        drop(waiting);
        self.stats
            .queue_wait_us
            .fetch_add(queued.elapsed().as_micros() as u64, Ordering::Relaxed);
        let Some(mut vm) = pool.take() else {
            // Cannot happen: a permit stands for an idle VM.
            pool.permits.add_permits(1);
            return Err(ServeError::ProgramError(
                "internal error: no idle VM".into(),
            ));
        };
        // From here on nothing awaits until the VM is back in the pool or owned by the
        // blocking task, so a client that goes away cannot lose a VM.
        let begun = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vm.begin(&req, inline_slice())
        }));
        match begun {
            Ok(Step::Done(result, rs)) => self.complete(&pool, Some(vm), Ok((result, rs))),
            Err(_) => self.complete(&pool, None, Err(())),
            Ok(Step::Preempted) => {
                self.stats.preempted.fetch_add(1, Ordering::Relaxed);
                let me = self.clone();
                let p = pool.clone();
                let task = tokio::task::spawn_blocking(move || {
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.resume(&req)));
                    match r {
                        Ok(x) => me.complete(&p, Some(vm), Ok(x)),
                        Err(_) => me.complete(&p, None, Err(())),
                    }
                });
                task.await.unwrap_or_else(|_| {
                    Err(ServeError::ProgramError(
                        "internal error in edgevm while handling the request".into(),
                    ))
                })
            }
        }
    }

    /// Count a finished request, put its VM back (a fresh one if edgevm panicked while
    /// handling it) and turn the result into the answer.
    fn complete(
        &self,
        pool: &VmPool,
        vm: Option<Box<RequestVm>>,
        outcome: Result<(Result<GuestResponse, RequestFailure>, RequestStats), ()>,
    ) -> Result<GuestResponse, ServeError> {
        let stats = &self.stats;
        let Ok((result, rs)) = outcome else {
            // A bug in edgevm, not in the program: answer, and replace the VM.
            tracing::error!(
                "{}: internal error while handling a request; replacing the VM",
                self.name
            );
            match self.fork(&pool.frozen, &pool.storage, &pool.shells, 0) {
                Ok(v) => pool.put(v),
                Err(e) => tracing::error!("{}: cannot replace the VM: {e}", self.name),
            }
            stats.status_5xx.fetch_add(1, Ordering::Relaxed);
            return Err(ServeError::ProgramError(
                "internal error in edgevm while handling the request".into(),
            ));
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.exits.fetch_add(rs.exits, Ordering::Relaxed);
        stats.last_exits.store(rs.exits, Ordering::Relaxed);
        if let Some(vm) = vm {
            if vm.is_ephemeral() || rs.full_reset {
                stats.resets.fetch_add(1, Ordering::Relaxed);
            }
            if self.retired.load(Ordering::SeqCst) && self.waiting.load(Ordering::SeqCst) == 0 {
                drop(vm);
            } else {
                pool.put(vm);
            }
        }
        if rs.full_reset {
            stats.full_resets.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(resp) => {
                let c = match resp.status {
                    200..=299 => &stats.status_2xx,
                    300..=399 => &stats.status_3xx,
                    400..=499 => &stats.status_4xx,
                    _ => &stats.status_5xx,
                };
                c.fetch_add(1, Ordering::Relaxed);
                Ok(resp)
            }
            Err(f) => {
                let c = match f.kind {
                    FailureKind::Timeout => &stats.timeouts,
                    FailureKind::Exception => &stats.exceptions,
                    FailureKind::Memory => &stats.memory_errors,
                    _ => &stats.other_errors,
                };
                c.fetch_add(1, Ordering::Relaxed);
                stats.status_5xx.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{}: {}", self.name, f.message);
                Err(ServeError::ProgramError(f.message))
            }
        }
    }

    /// Stop taking requests (a live update replaced this program): requests already waiting
    /// for it still get its VMs; idle VMs are freed now, busy ones when they finish and
    /// nobody waits any more, and the storage VM with the last of them.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        // The storage VM goes once the last request VM holding its handle is gone.
        self.storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(pool) = self.pool.get() {
            // Free the idle VMs now (a permit stands for each; taking both keeps them
            // consistent for anybody still waiting); busy ones are freed as they finish.
            while self.waiting.load(Ordering::SeqCst) == 0 {
                let Ok(permit) = pool.permits.try_acquire() else {
                    break;
                };
                permit.forget();
                let vm = pool.take();
                drop(vm);
            }
        }
    }

    /// Number of request VMs and time to ready, once ready.
    pub fn ready_info(&self) -> Option<(u32, f64)> {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            State::Ready { vms, ready_ms } => Some((*vms, *ready_ms)),
            _ => None,
        }
    }
}

/// All programs; the [`ProgramHost`] the HTTP layer uses.
#[derive(Default)]
pub struct Runtime {
    programs: HashMap<String, Arc<Program>>,
    /// Programs replaced by live updates since start, by name (what requests now use).
    updated: RwLock<HashMap<String, Arc<Program>>>,
    /// Set once `updated` has an entry: until then requests skip its lock.
    any_updated: std::sync::atomic::AtomicBool,
}

/// Why a live update was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// No such program (404).
    NotFound(String),
    /// No key configured, or the wrong key (403).
    Forbidden(String),
    /// The new program could not start; the old one keeps serving (400).
    Refused(String),
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpdateError::NotFound(m) | UpdateError::Forbidden(m) | UpdateError::Refused(m) => {
                f.write_str(m)
            }
        }
    }
}

/// Compare secrets without an early exit.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Runtime {
    /// An empty runtime.
    pub fn new() -> Self {
        Runtime::default()
    }

    /// Add a program (replacing one of the same name).
    pub fn add(&mut self, name: &str, settings: ProgramSettings) -> Arc<Program> {
        let p = Program::new(name, settings);
        self.programs.insert(name.to_string(), p.clone());
        p
    }

    /// Register a program that cannot run; requests to it get 503 with `why`.
    pub fn add_failed(&mut self, name: &str, why: String) {
        let settings = ProgramSettings {
            vm: VmOptions::new(name, Default::default(), Vec::new()),
            concurrency: 1,
            max_queue: MAX_QUEUE,
            request: RequestSettings::default(),
            start: false,
            origin: "local",
            cached: false,
            warmup: None,
            key: String::new(),
            storage: false,
            storage_binary: None,
            max_storage_time: Duration::from_secs(10),
            loader: None,
        };
        let p = Program::new(name, settings);
        *p.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Failed(why);
        self.programs.insert(name.to_string(), p);
    }

    /// Start the programs configured with `start`.
    pub fn start_eager(&self) {
        for (_, p) in self.programs() {
            if p.settings.start {
                p.start();
            }
        }
    }

    /// The current program of that name (after any live update).
    pub fn program(&self, name: &str) -> Option<Arc<Program>> {
        if self.any_updated.load(Ordering::Acquire) {
            if let Some(p) = self
                .updated
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
            {
                return Some(p.clone());
            }
        }
        self.programs.get(name).cloned()
    }

    /// All current programs, sorted by name.
    pub fn programs(&self) -> Vec<(String, Arc<Program>)> {
        let mut v: Vec<_> = self
            .programs
            .keys()
            .filter_map(|n| self.program(n).map(|p| (n.clone(), p)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether `key` allows a live update of `name` (the program, or why not): the check a
    /// live update starts with, made before its body is read.
    pub fn check_update_key(&self, name: &str, key: &str) -> Result<Arc<Program>, UpdateError> {
        let Some(old) = self.program(name) else {
            return Err(UpdateError::NotFound(format!("no such program: '{name}'")));
        };
        let want = &old.settings.key;
        if want.is_empty() {
            return Err(UpdateError::Forbidden(format!(
                "live update is disabled for '{name}': no key is configured"
            )));
        }
        if !same_key(want.as_bytes(), key.as_bytes()) {
            return Err(UpdateError::Forbidden(format!(
                "wrong live-update key for '{name}'"
            )));
        }
        Ok(old)
    }

    /// Live update: boot `binary` with the program's settings and, once it is ready, swap it in
    /// atomically. Requests already queued or running finish on the old program, whose VMs are
    /// then freed. A program that fails to boot is refused with its error and the old one keeps
    /// serving. `key` must equal the program's configured key; no key configured, no update.
    pub fn live_update(
        &self,
        name: &str,
        key: &str,
        binary: Vec<u8>,
    ) -> Result<String, UpdateError> {
        let old = self.check_update_key(name, key)?;
        if binary.is_empty() {
            return Err(UpdateError::Refused("empty program binary".into()));
        }
        let mut settings = old.settings.clone();
        settings.vm.binary = Arc::new(binary);
        settings.loader = None;
        settings.storage_binary = None;
        settings.origin = "live update";
        settings.cached = false;
        let budget = settings.vm.max_boot_time + Duration::from_secs(30);
        let new = Program::with_stats(name, settings, old.stats.clone());
        new.candidate.store(true, Ordering::Release);
        new.start();
        match new.wait_ready(budget) {
            Ok(true) => {}
            Ok(false) => {
                new.retire();
                return Err(UpdateError::Refused(format!(
                    "the new program for '{name}' did not become ready in time"
                )));
            }
            Err(e) => {
                return Err(UpdateError::Refused(format!(
                    "the new program for '{name}' failed to start: {e}"
                )))
            }
        }
        // Written next to `filename` now, renamed over it once the update is committed: a
        // restarted server runs what this one runs.
        let pending =
            match PendingBinary::write(&new.settings.vm.program_path, &new.settings.vm.binary) {
                Ok(p) => p,
                Err(e) => {
                    new.retire();
                    return Err(UpdateError::Refused(format!(
                        "the new program for '{name}' cannot be saved to {}: {e}",
                        new.settings.vm.program_path.display()
                    )));
                }
            };
        // Carry the storage state across: the old storage VM's on_live_update() hands it out,
        // the new one's on_live_restore() takes it in.
        let old_st = old
            .storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let new_st = new
            .storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let (Some(o), Some(n)) = (old_st, new_st) {
            let state = o.live_update_state().map_err(|e| {
                new.retire();
                UpdateError::Refused(format!("on_live_update of the old program failed: {e}"))
            })?;
            let bytes = state.len();
            if !state.is_empty() {
                n.live_restore(state).map_err(|e| {
                    new.retire();
                    UpdateError::Refused(format!("on_live_restore of the new program failed: {e}"))
                })?;
            }
            old.stats
                .live_update_transfer_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if let Some(p) = pending {
            if let Err(e) = p.commit() {
                new.retire();
                return Err(UpdateError::Refused(format!(
                    "the new program for '{name}' cannot be saved: {e}"
                )));
            }
        }
        let ms = new.ready_info().map(|r| r.1).unwrap_or(0.0);
        new.publish_gauges();
        self.updated
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), new);
        // Before retiring the old one: from now on every lookup finds the new program.
        self.any_updated.store(true, Ordering::Release);
        old.retire();
        old.stats.live_updates.fetch_add(1, Ordering::Relaxed);
        tracing::info!("Program '{name}' live-updated (ready={ms:.2} ms)");
        Ok(format!("Program '{name}' updated (ready in {ms:.2} ms)\n"))
    }
}

/// A live-updated binary written beside the program's file, not yet in its place. Dropped
/// without [`PendingBinary::commit`], the temporary file is removed.
struct PendingBinary {
    tmp: std::path::PathBuf,
    dest: std::path::PathBuf,
    committed: bool,
}

impl PendingBinary {
    /// Write `bytes` to a temporary file in the directory of `dest` (synced to disk, with
    /// `dest`'s permissions). `None` when the program has no file (`dest` empty).
    fn write(dest: &std::path::Path, bytes: &[u8]) -> std::io::Result<Option<PendingBinary>> {
        use std::io::Write;
        if dest.as_os_str().is_empty() {
            return Ok(None);
        }
        let file_name = dest.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".update-{}", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let pending = PendingBinary {
            tmp: tmp.clone(),
            dest: dest.to_owned(),
            committed: false,
        };
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Ok(md) = std::fs::metadata(dest) {
            f.set_permissions(md.permissions())?;
        }
        f.sync_all()?;
        Ok(Some(pending))
    }

    /// Rename the new binary over the program's file. A `<file>_storage` companion (the
    /// storage VM's binary at start) is removed: after a live update the storage VM runs the
    /// new binary too, and so will a restarted server.
    fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        let mut companion = self.dest.clone().into_os_string();
        companion.push("_storage");
        match std::fs::remove_file(&companion) {
            Ok(()) => tracing::info!(
                "{}: removed (the live update runs the new binary in the storage VM too)",
                std::path::Path::new(&companion).display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "{}: cannot remove after a live update: {e}",
                std::path::Path::new(&companion).display()
            ),
        }
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for PendingBinary {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl ProgramHost for Runtime {
    fn serve(&self, program: &str, req: GuestRequest) -> ServeFuture {
        match self.program(program) {
            Some(p) => Box::pin(p.serve(req)),
            None => {
                let e = ServeError::ProgramNotFound(program.to_string());
                Box::pin(async move { Err(e) })
            }
        }
    }
}
