//! A program ([`Program`]) and its pool of request VMs: boot on demand (program_boot.rs), a
//! FIFO wait for a free VM, and each request run on the thread that read it for a time slice,
//! then on a blocking thread (docs/DESIGN.md, "Where requests run"). All programs together
//! and live updates: runtime.rs; settings and counters: settings.rs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicUsize;
use std::sync::OnceLock;

use crate::error::BootError;
use crate::request::{GuestRequest, GuestResponse, ServeError};
use crate::request_vm::{FailureKind, RequestFailure, RequestStats, RequestVm, Step};
use crate::storage::StorageHandle;
use crate::stream::StreamSink;

pub use crate::runtime::{Runtime, UpdateError};
pub use crate::settings::{
    inline_slice, queue_timeout, LoadedBinary, Loader, ProgramSettings, Stats, StatsSnapshot,
    WarmupSettings, MAX_QUEUE, QUEUE_TIMEOUT,
};

/// KVM VMs made ahead for a program's request VMs, while its main VM boots (see
/// [`edgevm_kvm::VmShell`]): forking then only maps the memory and sets registers.
///
/// A boot needs `concurrency` KVM VMs: each is made either ahead by the preparation thread
/// or by a fork that finds none ready, never both. Both sides claim one of the boot's
/// `left` units before making a VM; a fork that finds every unit claimed and a VM still in
/// the making waits for it. Once the boot's forks are done, [`Shells::close`] drops what is
/// left, so no KVM VM is made that no request VM will use.
pub(crate) struct Shells<T = edgevm_kvm::VmShell> {
    state: Mutex<ShellState<T>>,
    made: Condvar,
}

struct ShellState<T> {
    ready: Vec<T>,
    /// Units not claimed yet by either side.
    left: u32,
    /// VMs the preparation thread is making now.
    making: u32,
    /// No more VMs wanted (a VM finished after this is dropped).
    closed: bool,
}

impl<T> Shells<T> {
    /// Room for `n` KVM VMs.
    pub(crate) fn with_budget(n: u32) -> Self {
        Self {
            state: Mutex::new(ShellState {
                ready: Vec::new(),
                left: n,
                making: 0,
                closed: false,
            }),
            made: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ShellState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For a fork: a VM made ahead, waiting for one in the making if every unit is claimed.
    /// None: the fork makes its own (it has claimed a unit, or none are left at all).
    pub(crate) fn take(&self) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(v) = st.ready.pop() {
                return Some(v);
            }
            if st.left > 0 {
                st.left -= 1;
                return None;
            }
            if st.making == 0 {
                return None;
            }
            st = self.made.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// For the preparation thread: claim one unit (false: none left, stop).
    fn claim(&self) -> bool {
        let mut st = self.lock();
        if st.left == 0 {
            return false;
        }
        st.left -= 1;
        st.making += 1;
        true
    }

    /// For the preparation thread: a claimed VM is made (or failed: None).
    fn made(&self, vm: Option<T>) {
        let mut st = self.lock();
        st.making -= 1;
        let late = match vm {
            Some(v) if !st.closed => {
                st.ready.push(v);
                None
            }
            v => v,
        };
        drop(st);
        self.made.notify_all();
        drop(late);
    }

    /// Make up to the budget's VMs ahead (the preparation thread's loop); stops at the first
    /// failure (the forks then make their own and report it).
    pub(crate) fn prepare<E>(&self, make: impl Fn() -> Result<T, E>) {
        while self.claim() {
            match make() {
                Ok(v) => self.made(Some(v)),
                Err(_) => {
                    self.made(None);
                    break;
                }
            }
        }
    }

    /// The boot's forks are done (or the VMs are freed): drop what is left and make no more.
    pub(crate) fn close(&self) {
        let ready = {
            let mut st = self.lock();
            st.left = 0;
            st.closed = true;
            std::mem::take(&mut st.ready)
        };
        drop(ready);
    }
}

#[cfg(test)]
mod shell_tests {
    use super::Shells;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Barrier};

    #[test]
    fn forks_and_the_preparation_thread_make_no_more_than_the_budget() {
        // Every interleaving of a slow preparation thread and fast forks: n made in total.
        for delay_us in [0u64, 50, 500, 3000] {
            let made = Arc::new(AtomicU32::new(0));
            let sh = Arc::new(Shells::<u32>::with_budget(4));
            let (s2, m2) = (sh.clone(), made.clone());
            let prep = std::thread::spawn(move || {
                s2.prepare(|| {
                    std::thread::sleep(std::time::Duration::from_micros(delay_us));
                    Ok::<_, ()>(m2.fetch_add(1, Ordering::SeqCst))
                })
            });
            let start = Arc::new(Barrier::new(4));
            let forks: Vec<_> = (0..4)
                .map(|_| {
                    let (sh, made, start) = (sh.clone(), made.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        if sh.take().is_none() {
                            made.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for f in forks {
                f.join().unwrap();
            }
            sh.close();
            prep.join().unwrap();
            assert_eq!(made.load(Ordering::SeqCst), 4, "delay {delay_us} us");
            assert!(sh.lock().ready.is_empty());
        }
    }

    #[test]
    fn a_failed_preparation_leaves_the_forks_to_make_their_own() {
        let sh = Shells::<u32>::with_budget(3);
        sh.prepare(|| Err::<u32, _>("no KVM"));
        assert!(sh.take().is_none());
        assert!(sh.take().is_none());
        assert!(sh.take().is_none());
        // Past the budget (a refill after the boot): no waiting, the fork makes its own.
        assert!(sh.take().is_none());
    }

    #[test]
    fn a_vm_finished_after_close_is_dropped() {
        let sh = Shells::<u32>::with_budget(2);
        assert!(sh.claim());
        sh.close();
        sh.made(Some(7));
        assert!(sh.lock().ready.is_empty());
        assert!(!sh.claim());
        assert!(sh.take().is_none());
    }
}

/// The request VMs of a ready program.
pub(crate) struct VmPool {
    /// The frozen image (None while freed by `free_idle_image`: idle.rs).
    pub(crate) frozen: crate::idle::ImageSlot,
    pub(crate) storage: Option<StorageHandle>,
    pub(crate) shells: Arc<Shells>,
    /// Idle VMs (boxed: a request moves its VM in and out of here), each with the thread
    /// that ran it last.
    pub(crate) idle: Mutex<Vec<(Box<RequestVm>, Option<std::thread::ThreadId>)>>,
    /// One permit per idle VM; waiters are served in arrival order.
    pub(crate) permits: tokio::sync::Semaphore,
}

impl VmPool {
    /// An idle VM, preferring one this thread ran last: running a vCPU on another thread
    /// than before costs more (KVM reloads its state; measured here ~15 µs), and its pages
    /// are warm in this CPU's caches. Otherwise the most recently used one.
    pub(crate) fn take(&self) -> Option<Box<RequestVm>> {
        let me = thread_id();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let i = idle
            .iter()
            .rposition(|(_, t)| *t == Some(me))
            .or_else(|| idle.len().checked_sub(1))?;
        Some(idle.swap_remove(i).0)
    }

    pub(crate) fn put(&self, vm: Box<RequestVm>) {
        let t = Some(thread_id());
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((vm, t));
        self.permits.add_permits(1);
    }
}

/// This thread's id, without `std::thread::current()`'s reference count traffic.
pub(crate) fn thread_id() -> std::thread::ThreadId {
    thread_local!(static ID: std::thread::ThreadId = std::thread::current().id());
    ID.with(|id| *id)
}

/// Decrements a counter when dropped.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
pub(crate) enum State {
    NotStarted,
    Booting,
    Ready { vms: u32, ready_ms: f64 },
    Failed(Arc<BootError>),
}

/// One configured program.
pub struct Program {
    pub(crate) name: String,
    pub(crate) settings: ProgramSettings,
    pub(crate) state: Mutex<State>,
    pub(crate) changed: Condvar,
    /// Bumped at every state change, for requests waiting asynchronously for the boot.
    pub(crate) changed_async: tokio::sync::watch::Sender<u64>,
    /// The request VMs, once ready.
    pub(crate) pool: OnceLock<Arc<VmPool>>,
    /// Requests waiting for the boot or for a VM.
    pub(crate) waiting: AtomicUsize,
    /// Replaced by a live update: VMs coming back are freed once nobody waits for one.
    pub(crate) retired: std::sync::atomic::AtomicBool,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The storage VM, once booted.
    pub(crate) storage: Mutex<Option<StorageHandle>>,
    /// A live update's new program while it boots: its boot-time gauges (binary size, image
    /// size) wait in `held` until the update succeeds, so a refused update changes nothing
    /// that the stats of the running program show.
    pub(crate) candidate: std::sync::atomic::AtomicBool,
    pub(crate) held: [AtomicU64; 2],
    /// Request VMs that exist and when one was last used (`idle.rs`).
    pub(crate) residency: crate::idle::Residency,
    /// Boot failures and the next retry (`retry.rs`).
    pub(crate) retry: crate::retry::Retry,
    /// The ready program takes request bodies streamed (`set_backend_stream_post`).
    pub(crate) streams_post: std::sync::atomic::AtomicBool,
    /// The TCP server of a program in server mode, once ready (tcp_server.rs).
    pub(crate) tcp: Mutex<Option<crate::tcp_server::TcpServer>>,
    /// A request tried the snapshot file on its own thread and found it unusable (said why
    /// already): the boot thread it started boots without trying it again (program_boot.rs).
    pub(crate) snapshot_tried: std::sync::atomic::AtomicBool,
}

impl Program {
    /// A program that is not started yet.
    pub fn new(name: &str, settings: ProgramSettings) -> Arc<Program> {
        Program::with_stats(name, settings, Arc::new(Stats::default()))
    }

    /// A program that continues the counters of `stats` (live update).
    pub fn with_stats(
        name: &str,
        mut settings: ProgramSettings,
        stats: Arc<Stats>,
    ) -> Arc<Program> {
        settings.vm.net.counters = stats.fetch.clone();
        if settings.snapshot.is_some() {
            // Its start will be faster than making a KVM VM: keep some made (spare.rs).
            crate::spare::want(settings.vm.memory_size() as usize);
        }
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
            residency: Default::default(),
            retry: Default::default(),
            streams_post: Default::default(),
            tcp: Mutex::new(None),
            snapshot_tried: Default::default(),
        })
    }

    /// Set the boot-time gauges: in `stats`, or held back while this is a live update's
    /// candidate (see [`Program::publish_gauges`]).
    pub(crate) fn set_boot_gauge(&self, which: usize, value: u64) {
        if self.candidate.load(Ordering::Acquire) {
            self.held[which].store(value, Ordering::Relaxed);
        } else {
            let g = [&self.stats.binary_size, &self.stats.memory_image_bytes];
            g[which].store(value, Ordering::Relaxed);
        }
    }

    /// A live update's candidate became the program: its held gauges go into `stats`.
    pub(crate) fn publish_gauges(&self) {
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
        self.start_if(|st| matches!(st, State::NotStarted));
    }

    /// Boot again after a failure (`retry.rs`).
    pub(crate) fn start_from_failed(self: &Arc<Self>) {
        self.start_if(|st| matches!(st, State::Failed(_)));
    }

    /// Start booting on a background thread if the state is one `from` accepts.
    fn start_if(self: &Arc<Self>, from: impl Fn(&State) -> bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !from(&st) {
            return;
        }
        *st = State::Booting;
        drop(st);
        self.changed.notify_all();
        self.changed_async.send_modify(|v| *v += 1);
        self.spawn_boot();
    }

    /// Claim the start of a program that is not started: true if this caller now starts it
    /// (the state is `Booting`), false if it is started or being started already.
    pub(crate) fn claim_start(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*st, State::NotStarted) {
            return false;
        }
        *st = State::Booting;
        drop(st);
        self.changed.notify_all();
        self.changed_async.send_modify(|v| *v += 1);
        true
    }

    /// The boot thread of a program whose state is `Booting`.
    pub(crate) fn spawn_boot(self: &Arc<Self>) {
        let me = self.clone();
        let r = std::thread::Builder::new()
            .name(format!("boot:{}", self.name))
            .spawn(move || {
                // A bug while booting must not leave the program "booting" forever.
                let p = me.clone();
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || p.boot())).is_err()
                {
                    me.set_failed(BootError::Panicked);
                }
            });
        if let Err(e) = r {
            self.set_failed(BootError::Thread(e));
        }
    }

    /// Wait until the program is ready or failed (or the timeout passes). True if ready.
    pub fn wait_ready(&self, timeout: Duration) -> Result<bool, Arc<BootError>> {
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

    pub(crate) fn set_failed(self: &Arc<Self>, why: BootError) {
        // A storage VM booted before the failure goes (a retry boots its own).
        self.storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let candidate = self.candidate.load(Ordering::Acquire);
        let shown = why.to_string();
        self.set_state(State::Failed(Arc::new(why)));
        if candidate {
            tracing::warn!(
                "Live update of '{}' refused (the old program keeps serving): {shown}",
                self.name
            );
            return;
        }
        // (After the state is Failed: the retry watcher drops programs that are not.)
        let retry = match self.schedule_retry() {
            Some(wait) => format!(
                " (retried in {} s, or at once when {} changes)",
                wait.as_secs(),
                self.settings.vm.program_path.display()
            ),
            None => String::new(),
        };
        if self.retry.repeated(&shown) {
            // The same failure again: said once at error level already.
            tracing::debug!("Program '{}' failed to start: {shown}{retry}", self.name);
        } else {
            tracing::error!("Program '{}' failed to start: {shown}{retry}", self.name);
        }
    }

    pub(crate) fn set_state(&self, st: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = st;
        self.changed.notify_all();
        // Requests waiting for the boot see it.
        self.changed_async.send_modify(|v| *v += 1);
    }

    /// Wait (asynchronously) until the program is ready; start it if needed.
    pub(crate) async fn ready_pool(self: &Arc<Self>) -> Result<Arc<VmPool>, ServeError> {
        let mut rx = self.changed_async.subscribe();
        loop {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match st {
                State::Failed(e) => return Err(ServeError::ProgramUnavailable(e.to_string())),
                State::Ready { .. } => {
                    if let Some(p) = self.pool.get() {
                        return Ok(p.clone());
                    }
                }
                // A program with a snapshot file starts from it right here, on the
                // request's thread (program_boot.rs); otherwise on its boot thread.
                State::NotStarted => {
                    if !self.start_here() {
                        self.start();
                    }
                    continue;
                }
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
                // VMs freed while the program was idle come back first.
                self.refill(&pool).await?;
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
        let waited = queued.elapsed();
        self.stats
            .queue_wait_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.stats.queue_time.observe_duration(waited);
        let Some(mut vm) = pool.take() else {
            // Cannot happen: a permit stands for an idle VM.
            pool.permits.add_permits(1);
            return Err(ServeError::ProgramError(
                "internal error: no idle VM".into(),
            ));
        };
        // From here on nothing awaits until the VM is back in the pool or owned by the
        // blocking task, so a client that goes away cannot lose a VM.
        // With a slice the request starts here, on the HTTP worker, and moves to a blocking
        // thread only when the slice ends; without one (EDGEVM_INLINE_SLICE_US=0) it runs on
        // a blocking thread from the start.
        // A streamed request body is waited for: never on the HTTP worker.
        let slice = inline_slice().filter(|_| req.body_in.is_none());
        let begun = slice.map(|s| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.begin(&req, Some(s))))
        });
        match begun {
            Some(Ok(Step::Done(result, rs))) => {
                self.complete(&pool, Some(vm), Ok((result, rs)), queued)
            }
            Some(Err(_)) => self.complete(&pool, None, Err(()), queued),
            Some(Ok(Step::Preempted)) | None => {
                let started = begun.is_some();
                if started {
                    self.stats.preempted.fetch_add(1, Ordering::Relaxed);
                }
                // A streamed response's head comes back through `head` while the blocking
                // task goes on producing its body (stream.rs) and then completes the request.
                let (sink, mut head) = StreamSink::new(tokio::runtime::Handle::current());
                vm.stream_to(sink);
                let me = self.clone();
                let p = pool.clone();
                let mut task = tokio::task::spawn_blocking(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if !started {
                            if let Step::Done(r, s) = vm.begin(&req, None) {
                                return (r, s);
                            }
                        }
                        vm.resume(&req)
                    }));
                    match r {
                        Ok(x) => me.complete(&p, Some(vm), Ok(x), queued),
                        Err(_) => me.complete(&p, None, Err(()), queued),
                    }
                });
                let internal = |_| {
                    Err(ServeError::ProgramError(
                        "internal error in edgevm while handling the request".into(),
                    ))
                };
                // The head first: a short stream may be over (its chunks waiting in the
                // channel) by the time this looks.
                tokio::select! {
                    biased;
                    h = &mut head => match h {
                        Ok(resp) => Ok(resp),
                        Err(_) => task.await.unwrap_or_else(internal),
                    },
                    r = &mut task => r.unwrap_or_else(internal),
                }
            }
        }
    }

    /// Whether the program takes request bodies streamed (see
    /// [`crate::ProgramHost::streams_body`]); waits for it to be ready (at most the queue
    /// timeout; false if it does not get ready).
    pub async fn streams_body(self: Arc<Self>) -> bool {
        if self.pool.get().is_none() {
            let ready = tokio::time::timeout(queue_timeout(), self.ready_pool()).await;
            if !matches!(ready, Ok(Ok(_))) {
                return false;
            }
        }
        self.streams_post.load(Ordering::Acquire)
    }

    /// Count a finished request, put its VM back (a fresh one if edgevm panicked while
    /// handling it) and turn the result into the answer.
    pub(crate) fn complete(
        &self,
        pool: &VmPool,
        vm: Option<Box<RequestVm>>,
        outcome: Result<(Result<GuestResponse, RequestFailure>, RequestStats), ()>,
        queued: Instant,
    ) -> Result<GuestResponse, ServeError> {
        let stats = &self.stats;
        let Ok((result, rs)) = outcome else {
            // A bug in edgevm, not in the program: answer, and replace the VM.
            self.residency.dropped();
            tracing::error!(
                "{}: internal error while handling a request; replacing the VM",
                self.name
            );
            match pool
                .frozen
                .get()
                .map(|f| self.fork(&f, &pool.storage, &pool.shells, 0))
            {
                Some(Ok(v)) => pool.put(v),
                Some(Err(e)) => tracing::error!("{}: cannot replace the VM: {e}", self.name),
                None => {}
            }
            stats.status_5xx.fetch_add(1, Ordering::Relaxed);
            return Err(ServeError::ProgramError(
                "internal error in edgevm while handling the request".into(),
            ));
        };
        self.residency.touch();
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.request_time.observe_duration(queued.elapsed());
        stats.request_exits.observe_count(rs.exits);
        stats.exits.fetch_add(rs.exits, Ordering::Relaxed);
        stats.last_exits.store(rs.exits, Ordering::Relaxed);
        if let Some(vm) = vm {
            if vm.is_ephemeral() || rs.full_reset {
                stats.resets.fetch_add(1, Ordering::Relaxed);
            }
            if self.retired.load(Ordering::SeqCst) && self.waiting.load(Ordering::SeqCst) == 0 {
                drop(vm);
                self.residency.dropped();
            } else {
                pool.put(vm);
            }
        }
        if rs.full_reset {
            stats.full_resets.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(mut resp) => {
                resp.exits = Some(rs.exits);
                let c = match resp.status {
                    200..=299 => &stats.status_2xx,
                    300..=399 => &stats.status_3xx,
                    400..=499 => &stats.status_4xx,
                    _ => &stats.status_5xx,
                };
                c.fetch_add(1, Ordering::Relaxed);
                Ok(resp)
            }
            Err(f) if f.kind == FailureKind::ClientGone => {
                // The response went out in part; nothing the program did wrong.
                tracing::info!("{}: {}", self.name, f.message);
                Err(ServeError::ProgramError(f.message))
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
        // Its TCP server stops: connections closed, systems ended (on a thread of its own:
        // a system may be in the middle of a batch).
        if let Some(t) = self.tcp.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.signal_stop();
            let _ = std::thread::Builder::new()
                .name(format!("tcpstop:{}", self.name))
                .spawn(move || drop(t));
        }
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
                if vm.is_some() {
                    self.residency.dropped();
                }
                drop(vm);
            }
        }
    }

    /// Request VMs that exist now (idle or running; fewer than `concurrency` after idle ones
    /// were freed), and how many were (freed while idle, forked again) so far.
    pub fn resident_vms(&self) -> (u32, u64, u64) {
        let (freed, refilled) = self.residency.counts();
        (self.residency.resident(), freed, refilled)
    }

    /// Number of request VMs and time to ready, once ready.
    pub fn ready_info(&self) -> Option<(u32, f64)> {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            State::Ready { vms, ready_ms } => Some((*vms, *ready_ms)),
            _ => None,
        }
    }
}
