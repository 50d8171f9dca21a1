//! A request VM: one copy-on-write fork of a frozen program, answering one request at a time
//! (on whichever thread runs it, see pool.rs) and reset after each.
//!
//! Per request, on the common path: the host writes the request into the I/O area, sets the
//! registers through sync_regs (RIP = request entry stub, RAX = handler, SysV arguments), and
//! enters the guest once. The stub restores the frozen FPU/SSE state with `fxrstor` (CPL3, no
//! exit) and calls the handler; `sys_backend_response` is the one exit. Header calls made with
//! edgevm's `kvm_api.h` are served inside the guest from the I/O area.
//!
//! Reset (ephemeral): KVM's dirty log plus the host's own writes say which pages changed; with
//! `ephemeral_keep_working_memory` they are copied back from the image (fastest measured here,
//! the private pages are kept); otherwise their private copies are dropped with MADV_DONTNEED
//! (memory goes back to the host). The process state (brk, mmap areas, signal handlers) is a
//! clone of the frozen one; registers and FPU are set on entry. After a crash, timeout, memory
//! overrun, exit or missing response the VM is reset fully: every private page is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgevm_abi::api;
use edgevm_abi::io::{self, IoError, RequestData};
use edgevm_abi::layout;
use edgevm_abi::linux::{fill_random, Output};
use edgevm_kvm::{PageSet, Vcpu, PAGE_SIZE};

use crate::error::CallvError;
use crate::request::{GuestRequest, GuestResponse};
use crate::storage::{Answer, StorageCall, StorageHandle};
use crate::vm::{EntryState, Event, Frozen, MainVm, RunError};

/// Stack below the frozen RSP that request handlers are expected to use on every request;
/// reset by copying back even when other pages are dropped.
const HOT_STACK: u64 = 64 << 10;

/// At most this many hot pages (dirtied by two requests in a row: 2 MiB) are left writable and
/// copied back after every request; beyond it every page is write-protected again.
const MAX_KEPT_PAGES: usize = 512;

/// A hot page that came back unchanged this many requests in a row is protected again.
const IDLE_HOT_LIMIT: u8 = 3;

/// Guest output (stdout, stderr, sys_log) one request may print; the rest is dropped with a
/// note, so a hostile program cannot flood the server's log.
pub const REQUEST_OUTPUT_BUDGET: usize = 64 << 10;

/// Largest response body a program may return.
pub const MAX_RESPONSE_BODY: u64 = 64 << 20;

/// Per-request policy (from the configuration).
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// max_request_time.
    pub max_request_time: Duration,
    /// max_request_memory, bytes.
    pub max_request_memory: u64,
    /// limit_workmem_after_req, bytes (0 = no limit).
    pub limit_workmem_after_req: u64,
    /// ephemeral.
    pub ephemeral: bool,
    /// ephemeral_keep_working_memory.
    pub keep_working_memory: bool,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            max_request_time: Duration::from_secs(8),
            max_request_memory: 64 << 20,
            limit_workmem_after_req: 0,
            ephemeral: true,
            keep_working_memory: false,
        }
    }
}

/// How a request went wrong (HTTP 500 unless the program's on_error answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFailure {
    /// The message (as the reference: "HTTP response not set. Program crashed?", ...).
    pub message: String,
    /// Kind, for statistics.
    pub kind: FailureKind,
}

/// Kinds of request failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// CPU exception.
    Exception,
    /// max_request_time.
    Timeout,
    /// max_request_memory.
    Memory,
    /// exit() during a request.
    Exit,
    /// No response.
    NoResponse,
    /// Bad API use (pointer, header, status...).
    Api,
    /// Anything else.
    Other,
}

/// Figures about one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestStats {
    /// VM exits while handling it.
    pub exits: u64,
    /// Pages restored or dropped by the reset after it.
    pub reset_pages: usize,
    /// Whether the reset was a full one.
    pub full_reset: bool,
    /// Time spent in the reset.
    pub reset_time: Duration,
}

/// Calls a program's handlers in a VM: writes the request, enters the guest once, serves the
/// request-context hypercalls and reads the response. Used by request VMs and, for `warmup`,
/// by the main VM before it is frozen.
pub struct Invoker {
    /// The VM.
    pub vm: MainVm,
    /// What every handler call starts from (stack, TLS/GS bases, user segments, FPU image).
    entry: EntryState,
    /// Limits for one call.
    settings: RequestSettings,
    cache_control: Option<String>,
    /// The program's storage VM, if it has one.
    storage: Option<StorageHandle>,
    /// This VM's index in its program's pool (`vcpureqid()`).
    index: u32,
    /// A storage call the handler waits for (the request was preempted while waiting).
    pending_storage: Option<PendingStorage>,
    /// VM exits of the storage VM in this request's storage calls.
    storage_exits: u64,
}

/// One request VM.
pub struct RequestVm {
    inv: Invoker,
    frozen: Arc<Frozen>,
    ephemeral: bool,
    /// Pages privately copied since the last full reset (keep-working-memory accounting).
    working: Vec<u64>,
    /// Requests handled.
    pub requests: u64,
    /// Full resets done.
    pub full_resets: u64,
    /// Exit count (without timer exits) when the current request began.
    exits0: u64,
    /// The dirty log of the previous request (which pages are hot).
    prev_dirty: PageSet,
    /// Hot pages that came back unchanged, and for how many requests in a row.
    hot_idle: std::collections::HashMap<usize, u8>,
    /// Scratch: the kept pages the last reset found unchanged.
    unchanged: Vec<usize>,
}

enum Outcome {
    Response(GuestResponse),
    Failed(RequestFailure),
    /// The time slice ran out; the handler is stopped mid-way and continues with
    /// [`Invoker::resume_handler`] (on any thread).
    Preempted,
}

/// A storage call made by a request and not answered yet.
struct PendingStorage {
    call: StorageCall,
    dst: u64,
    dstlen: u64,
}

enum StorageStep {
    /// Answered at once (refused): the return value.
    Done(u64),
    /// Queued.
    Waiting(PendingStorage),
}

/// What [`RequestVm::begin`] came to.
pub enum Step {
    /// The request is answered (or failed) and the VM is reset: ready for the next one.
    Done(Result<GuestResponse, RequestFailure>, RequestStats),
    /// The time slice ran out first: the handler is stopped mid-way. Finish it with
    /// [`RequestVm::resume`] — on this or any other thread — before anything else.
    Preempted,
}

fn fail(kind: FailureKind, message: impl Into<String>) -> Outcome {
    Outcome::Failed(RequestFailure {
        message: message.into(),
        kind,
    })
}

fn run_error_failure(e: RunError) -> RequestFailure {
    let kind = match &e {
        RunError::Crash(_) => FailureKind::Exception,
        RunError::Timeout { .. } => FailureKind::Timeout,
        RunError::MemoryLimit { .. } => FailureKind::Memory,
        _ => FailureKind::Other,
    };
    let message = match e {
        RunError::Timeout { limit, .. } => {
            format!("Backend VM timed out ({:.1}s)", limit.as_secs_f64())
        }
        other => other.to_string(),
    };
    RequestFailure { message, kind }
}

fn callv_failure(e: CallvError) -> RequestFailure {
    let kind = match e {
        CallvError::BadArguments(_) => FailureKind::Api,
        CallvError::Failed(_) => FailureKind::Other,
    };
    RequestFailure {
        message: e.to_string(),
        kind,
    }
}

impl RequestVm {
    /// Fork a request VM from `frozen` (any thread may run it afterwards).
    pub fn new(
        frozen: Arc<Frozen>,
        settings: RequestSettings,
        storage: Option<StorageHandle>,
    ) -> Result<Self, RunError> {
        RequestVm::new_in(frozen, settings, storage, None)
    }

    /// [`RequestVm::new`] in a VM prepared ahead ([`edgevm_kvm::VmShell`], with dirty
    /// logging), e.g. while the main VM booted.
    pub fn new_in(
        frozen: Arc<Frozen>,
        settings: RequestSettings,
        storage: Option<StorageHandle>,
        shell: Option<edgevm_kvm::VmShell>,
    ) -> Result<Self, RunError> {
        let mut vm = MainVm::from_frozen_in(&frozen, shell)?;
        let ephemeral = frozen.ephemeral_override.unwrap_or(settings.ephemeral);
        let pages = vm.machine.mem.pages();
        // The new VM stands exactly at the frozen point.
        let entry = vm.entry_state(frozen.use_xsave);
        let inv = Invoker::new(vm, entry, settings, storage);
        Ok(RequestVm {
            inv,
            frozen,
            ephemeral,
            working: vec![0; pages.div_ceil(64)],
            requests: 0,
            full_resets: 0,
            exits0: 0,
            prev_dirty: PageSet::new(),
            hot_idle: Default::default(),
            unchanged: Vec::new(),
        })
    }

    /// Set this VM's index in its pool (what `vcpureqid()` returns in it).
    pub fn set_index(&mut self, index: u32) {
        self.inv.index = index;
    }

    /// How many pages are kept writable between requests now ("hot pages", see
    /// `after_request`).
    pub fn hot_pages(&self) -> usize {
        self.hot_idle.len()
    }

    /// Whether this VM resets after every request.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// Handle one request to the end; the VM is ready for the next one when this returns.
    pub fn handle(
        &mut self,
        req: &GuestRequest,
    ) -> (Result<GuestResponse, RequestFailure>, RequestStats) {
        match self.begin(req, None) {
            Step::Done(r, s) => (r, s),
            Step::Preempted => self.resume(req),
        }
    }

    /// Start handling `req` on this thread. With a `slice`, a handler still running when the
    /// slice is over is stopped ([`Step::Preempted`]) so the caller can hand the VM to a thread
    /// that may block, and call [`RequestVm::resume`] there: the thread that read the request
    /// runs short requests itself, with no hand-off, and is never held up by a long one for
    /// more than about one slice.
    pub fn begin(&mut self, req: &GuestRequest, slice: Option<Duration>) -> Step {
        self.requests += 1;
        self.exits0 = self.inv.vm.machine.cpu.exit_count() - self.inv.vm.timer_exits;
        self.inv.storage_exits = 0;
        match self.inv.call_handler(req, slice) {
            Outcome::Preempted => Step::Preempted,
            outcome => {
                let (r, s) = self.finish(req, outcome);
                Step::Done(r, s)
            }
        }
    }

    /// Finish a request stopped by its time slice (see [`RequestVm::begin`]), on the
    /// current thread, without a slice.
    pub fn resume(
        &mut self,
        req: &GuestRequest,
    ) -> (Result<GuestResponse, RequestFailure>, RequestStats) {
        let outcome = self.inv.resume_handler();
        self.finish(req, outcome)
    }

    fn finish(
        &mut self,
        req: &GuestRequest,
        outcome: Outcome,
    ) -> (Result<GuestResponse, RequestFailure>, RequestStats) {
        let mut stats = RequestStats {
            // Time-slice ends are the runtime's exits, not the program's.
            // The storage VM's exits on this request's path count too.
            exits: (self.inv.vm.machine.cpu.exit_count() - self.inv.vm.timer_exits)
                .wrapping_sub(self.exits0)
                .wrapping_add(self.inv.storage_exits),
            ..Default::default()
        };
        let t = Instant::now();
        let result = match outcome {
            Outcome::Response(r) => match self.after_request() {
                Ok((pages, full)) => {
                    stats.reset_pages = pages;
                    stats.full_reset = full;
                    Ok(r)
                }
                Err(f) => {
                    self.full_reset();
                    stats.full_reset = true;
                    Err(f)
                }
            },
            Outcome::Failed(f) => {
                self.full_reset();
                stats.full_reset = true;
                Err(f)
            }
            Outcome::Preempted => {
                // resume_handler never preempts; be safe anyway.
                self.full_reset();
                stats.full_reset = true;
                Err(RequestFailure {
                    message: "internal error: request preempted twice".into(),
                    kind: FailureKind::Other,
                })
            }
        };
        let result = match result {
            Err(f) if self.inv.vm.handlers.on_error != 0 => {
                let r = self.inv.call_on_error(req, &f);
                self.full_reset();
                r.ok_or(f)
            }
            other => other,
        };
        stats.reset_time = t.elapsed();
        (result, stats)
    }

    /// After a successful request: reset (ephemeral) and enforce memory limits.
    /// Returns (pages reset, whether the reset was full).
    fn after_request(&mut self) -> Result<(usize, bool), RequestFailure> {
        self.inv.vm.linux.set_request_limit(None);
        // Pages dirtied by this request and the previous one are "hot": they stay writable
        // (no write-protection fault next time) and are copied back after every request. A
        // hot page is reported dirty whether or not it was written, so one that came back
        // unchanged (found by the previous resets' comparison with the image) for
        // IDLE_HOT_LIMIT requests in a row is write-protected again.
        let prev = std::mem::take(&mut self.prev_dirty);
        let idle = &mut self.hot_idle;
        let log = self.inv.vm.machine.cpu.take_dirty_log_keeping(|d| {
            let mut k = d.intersection(&prev);
            k.retain(|page| idle.get(&page).is_none_or(|&c| c < IDLE_HOT_LIMIT));
            idle.retain(|&p, _| k.contains(p));
            if k.len() <= MAX_KEPT_PAGES {
                k
            } else {
                idle.clear();
                PageSet::new()
            }
        });
        let (dirty, kept) = match log {
            Ok(x) => x,
            Err(e) => {
                return Err(RequestFailure {
                    message: e.to_string(),
                    kind: FailureKind::Other,
                })
            }
        };
        // What this request dirtied is the next request's "previous" log.
        self.prev_dirty = dirty;
        let dirty = &self.prev_dirty;
        let dirtied = dirty.len() as u64 * PAGE_SIZE as u64;
        if dirtied > self.inv.settings.max_request_memory {
            return Err(RequestFailure {
                message: format!(
                    "Backend VM memory exception: the request wrote {} MiB, over max_request_memory ({} MiB)",
                    dirtied >> 20,
                    self.inv.settings.max_request_memory >> 20
                ),
                kind: FailureKind::Memory,
            });
        }
        if !self.ephemeral {
            return Ok((0, false));
        }
        let hot = if self.inv.settings.keep_working_memory {
            for &(w, d) in dirty.words() {
                if let Some(x) = self.working.get_mut(w as usize) {
                    *x |= d;
                }
            }
            // Every page is copied back, none dropped.
            0..u64::MAX
        } else {
            // The handler's stack frames (below the frozen RSP) are written by every request:
            // copy those back, drop everything else.
            let rsp = self.frozen.regs.rsp;
            rsp.saturating_sub(HOT_STACK)..rsp.saturating_add(4096)
        };
        let reset = self.inv.vm.machine.mem.discard_pages(
            &self.frozen.image,
            dirty,
            hot,
            &kept,
            &mut self.unchanged,
        );
        let pages = match reset {
            Ok((copied, dropped)) => copied + dropped,
            Err(e) => {
                self.unchanged.clear();
                return Err(RequestFailure {
                    message: e.to_string(),
                    kind: FailureKind::Other,
                });
            }
        };
        // Idle counts for the next request's choice of hot pages (`unchanged` is in page
        // order, a subset of `kept`).
        for page in kept.pages() {
            let c = self.hot_idle.entry(page).or_insert(0);
            *c = if self.unchanged.binary_search(&page).is_ok() {
                c.saturating_add(1)
            } else {
                0
            };
        }
        self.unchanged.clear();
        self.inv.vm.linux = self.frozen.linux.clone();
        let limit = self.inv.settings.limit_workmem_after_req;
        if self.inv.settings.keep_working_memory && limit > 0 {
            let working: u64 = self
                .working
                .iter()
                .map(|w| u64::from(w.count_ones()))
                .sum::<u64>()
                * PAGE_SIZE as u64;
            if working > limit {
                self.full_reset();
                return Ok((pages, true));
            }
        }
        Ok((pages, false))
    }

    /// Drop every private page and restore the frozen process state. A VM whose vCPU still
    /// holds a failed request's half-done instruction is replaced by a fresh one.
    pub fn full_reset(&mut self) {
        self.full_resets += 1;
        if self.inv.vm.stale {
            match MainVm::from_frozen(&self.frozen) {
                Ok(mut vm) => {
                    vm.printer
                        .log("the failed request left an unfinished I/O instruction; VM replaced");
                    self.inv.entry = vm.entry_state(self.frozen.use_xsave);
                    self.inv.vm = vm;
                }
                Err(e) => self
                    .inv
                    .vm
                    .printer
                    .log(&format!("cannot replace the VM after a failure: {e}")),
            }
        }
        let _ = self.inv.vm.machine.cpu.take_dirty_log();
        self.prev_dirty.clear();
        self.hot_idle.clear();
        if let Err(e) = self.inv.vm.machine.mem.discard_private() {
            self.inv.vm.printer.log(&format!("full reset failed: {e}"));
        }
        self.working.iter_mut().for_each(|w| *w = 0);
        self.inv.vm.linux = self.frozen.linux.clone();
    }
}

impl Invoker {
    /// An invoker over `vm`, whose handler calls start from `entry`.
    pub fn new(
        vm: MainVm,
        entry: EntryState,
        settings: RequestSettings,
        storage: Option<StorageHandle>,
    ) -> Self {
        Invoker {
            vm,
            entry,
            settings,
            cache_control: None,
            storage,
            index: 0,
            pending_storage: None,
            storage_exits: 0,
        }
    }

    /// `storage_callv(func, n, bufs, dst, dstlen)` from a request.
    fn storage_callv(&mut self) -> Result<StorageStep, RequestFailure> {
        let Some(storage) = self.storage.clone() else {
            self.vm
                .printer
                .log("storage_call() needs \"storage\": true in the program's configuration");
            return Ok(StorageStep::Done(u64::MAX));
        };
        let args = crate::storage::read_callv(&mut self.vm)
            .map_err(|e| callv_failure(CallvError::BadArguments(e)))?;
        let Some((func, inputs, dst, dstlen)) = args else {
            return Ok(StorageStep::Done(u64::MAX));
        };
        let call = storage.begin(func, inputs, dstlen);
        Ok(StorageStep::Waiting(PendingStorage { call, dst, dstlen }))
    }

    /// The answer to a storage call: copy the result and compute the return value.
    fn storage_finish(
        &mut self,
        (dst, dstlen): (u64, u64),
        res: Answer,
    ) -> Result<u64, RequestFailure> {
        crate::storage::finish_callv(&mut self.vm, dst, dstlen, res).map_err(callv_failure)
    }

    /// `storage_callv` from the request handler: take the storage VM's turn and run the call
    /// on this thread (storage.rs). On an HTTP worker (in a time slice) only until the slice
    /// is over, waiting for the turn included: the call then goes on wherever the request
    /// resumes ([`Outcome::Preempted`]), keeping its place in the queue.
    fn storage_hypercall(&mut self) -> Result<Option<u64>, RequestFailure> {
        match self.storage_callv()? {
            StorageStep::Done(v) => Ok(Some(v)),
            StorageStep::Waiting(p) => self.advance_storage(p),
        }
    }

    /// Advance a storage call (see [`StorageCall::advance`]): Ok(Some(return value)), or
    /// Ok(None) when the slice is over first (kept in `pending_storage`).
    fn advance_storage(&mut self, mut p: PendingStorage) -> Result<Option<u64>, RequestFailure> {
        let slice = self.vm.slice_left();
        let r = p.call.advance(slice, self.vm.time_left());
        self.storage_exits += std::mem::take(&mut p.call.exits);
        let Some(res) = r else {
            self.pending_storage = Some(p);
            return Ok(None);
        };
        // The storage VM may have run on this thread: point its timer back at this VM.
        if let Err(e) = self.vm.arm_timer() {
            return Err(run_error_failure(e));
        }
        self.storage_finish((p.dst, p.dstlen), res).map(Some)
    }

    /// Run the right handler for `req`; Ok(response) or the failure (no reset here).
    pub fn invoke(&mut self, req: &GuestRequest) -> Result<GuestResponse, RequestFailure> {
        match self.call_handler(req, None) {
            Outcome::Response(r) => Ok(r),
            Outcome::Failed(f) => Err(f),
            Outcome::Preempted => match self.resume_handler() {
                Outcome::Response(r) => Ok(r),
                Outcome::Failed(f) => Err(f),
                Outcome::Preempted => Err(RequestFailure {
                    message: "internal error: request preempted twice".into(),
                    kind: FailureKind::Other,
                }),
            },
        }
    }

    fn call_handler(&mut self, req: &GuestRequest, slice: Option<Duration>) -> Outcome {
        let h = self.vm.handlers;
        let method = req.method.as_str();
        let (handler, kind) = if h.request != 0 {
            (h.request, 3)
        } else if (method == "GET" || method == "HEAD") && h.get != 0 {
            (h.get, 1)
        } else if method != "GET" && method != "HEAD" && h.post != 0 {
            (h.post, 2)
        } else if h.get != 0 {
            (h.get, 1)
        } else {
            return fail(
                FailureKind::Api,
                format!("the program has no handler for {method} requests"),
            );
        };
        if req.body.len() as u64 > layout::INPUT_AREA_SIZE {
            return fail(
                FailureKind::Api,
                "request body larger than the program's input area",
            );
        }
        let ptrs = match self.write_request(req) {
            Ok(p) => p,
            Err(e) => return fail(FailureKind::Api, e.to_string()),
        };
        let body_addr = if req.body.is_empty() {
            0
        } else {
            self.vm.layout.input_area
        };
        let args = match kind {
            3 => vec![io::REQUEST_STRUCT],
            2 => vec![
                ptrs.url,
                ptrs.arg,
                ptrs.content_type,
                body_addr,
                req.body.len() as u64,
            ],
            _ => vec![ptrs.url, ptrs.arg],
        };
        // Below the frozen frame of wait_for_requests() and its red zone.
        let rsp = self.entry.rsp.wrapping_sub(512);
        if let Err(e) = self.vm.enter_handler(&self.entry, handler, rsp, &args) {
            return Outcome::Failed(run_error_failure(e));
        }
        self.vm
            .linux
            .set_request_limit(Some(self.settings.max_request_memory));
        self.cache_control = None;
        self.vm.printer.set_budget(Some(REQUEST_OUTPUT_BUDGET));
        self.vm.set_slice(slice);
        if let Err(e) = self
            .vm
            .start_deadline(self.settings.max_request_time, "request (max_request_time)")
        {
            return Outcome::Failed(run_error_failure(e));
        }
        self.run_and_settle()
    }

    /// Continue a handler stopped by its time slice, on the current thread, to the end.
    fn resume_handler(&mut self) -> Outcome {
        if let Err(e) = self.vm.resume_deadline() {
            self.pending_storage = None;
            self.vm.stop_deadline();
            self.vm.restore_user_mode(&self.entry);
            return Outcome::Failed(run_error_failure(e));
        }
        self.run_and_settle()
    }

    /// Run the handler until it answers, fails or is preempted; stop or pause the deadline.
    fn run_and_settle(&mut self) -> Outcome {
        let r = self.run_request();
        if matches!(r, Outcome::Preempted) {
            // The VM may move to another thread now: this thread's timer lets go of it.
            self.vm.pause_deadline();
            return r;
        }
        self.vm.stop_deadline();
        self.vm.printer.flush();
        // A storage call still pending when the handler failed gives up its place.
        self.pending_storage = None;
        r
    }

    fn write_request(&mut self, req: &GuestRequest) -> Result<io::RequestPtrs, IoError> {
        let input = self.vm.layout.input_area;
        if !req.body.is_empty() {
            self.vm
                .machine
                .mem
                .write(input, &req.body)
                .map_err(|err| IoError::BadPointer {
                    call: "request",
                    err,
                })?;
        }
        let mut info = [0u8; 8];
        info[4..].copy_from_slice(&self.index.to_le_bytes());
        self.vm
            .machine
            .mem
            .write(io::VCPU_INFO, &info)
            .map_err(|err| IoError::BadPointer {
                call: "request",
                err,
            })?;
        let mut seed = [0u8; 16];
        fill_random(&mut seed);
        io::write_request(
            &mut self.vm.machine.mem,
            &RequestData {
                method: &req.method,
                url: &req.url,
                arg: &req.arg,
                content_type: &req.content_type,
                headers: &req.headers,
                body: (
                    if req.body.is_empty() { 0 } else { input },
                    req.body.len() as u64,
                ),
                warmup: req.warmup,
                prng: [
                    u64::from_le_bytes(seed[..8].try_into().unwrap_or_default()),
                    u64::from_le_bytes(seed[8..].try_into().unwrap_or_default()),
                ],
            },
        )
    }

    fn run_request(&mut self) -> Outcome {
        let out = self.run_request_inner();
        if matches!(out, Outcome::Failed(_)) {
            self.vm.restore_user_mode(&self.entry);
        }
        out
    }

    fn run_request_inner(&mut self) -> Outcome {
        if let Some(p) = self.pending_storage.take() {
            match self.advance_storage(p) {
                Ok(Some(v)) => self.vm.machine.cpu.regs_mut().rax = v,
                Ok(None) => return Outcome::Preempted,
                Err(f) => return Outcome::Failed(f),
            }
        }
        loop {
            let ev = match self.vm.run_until_event() {
                Ok(ev) => ev,
                Err(e) => return Outcome::Failed(run_error_failure(e)),
            };
            match ev {
                Event::Preempted => return Outcome::Preempted,
                Event::Exited(code) => {
                    return fail(
                        FailureKind::Exit,
                        format!("the program exited (status {code}) during a request"),
                    )
                }
                Event::Returned => {
                    return fail(
                        FailureKind::NoResponse,
                        "HTTP response not set. Program crashed?",
                    )
                }
                Event::Hypercall(api::BACKEND_RESPONSE) => return self.read_response(),
                Event::Hypercall(api::STORAGE_CALLV) => match self.storage_hypercall() {
                    Ok(Some(v)) => self.vm.machine.cpu.regs_mut().rax = v,
                    Ok(None) => return Outcome::Preempted,
                    Err(f) => return Outcome::Failed(f),
                },
                Event::Hypercall(num) => {
                    if let Err(f) = self.api_call(num) {
                        return Outcome::Failed(f);
                    }
                }
            }
        }
    }

    /// Hypercalls of the request context (the reference-header path; edgevm's header serves
    /// most of these inside the guest).
    fn api_call(&mut self, num: u32) -> Result<(), RequestFailure> {
        let r = *self.vm.machine.cpu.regs();
        let mem = &mut self.vm.machine.mem;
        let api_err = |e: IoError| RequestFailure {
            message: e.to_string(),
            kind: FailureKind::Api,
        };
        let read = |mem: &edgevm_kvm::GuestMemory, p: u64, l: u64, call: &'static str| {
            if l > 65535 {
                return Err(RequestFailure {
                    message: format!("length {l} passed to {call} is too large"),
                    kind: FailureKind::Api,
                });
            }
            mem.read_vec(p, l as usize).map_err(|err| RequestFailure {
                message: IoError::BadPointer { call, err }.to_string(),
                kind: FailureKind::Api,
            })
        };
        let ret: u64 = match num {
            api::HTTP_APPEND => {
                let f = read(mem, r.rsi, r.rdx, "http_append")?;
                io::append(mem, r.rdi.min(1), &f, "http_append").map_err(api_err)?;
                0
            }
            api::HTTP_SET => {
                let f = read(mem, r.rsi, r.rdx, "http_set")?;
                io::set(mem, r.rdi.min(1), &f).map_err(api_err)?;
                0
            }
            api::HTTP_FIND => {
                let key = read(mem, r.rsi, r.rdx, "http_find")?;
                match io::find(mem, r.rdi.min(1), &key) {
                    None => 0,
                    Some(v) if r.rcx == 0 => v.len() as u64,
                    Some(v) if (v.len() as u64) < r.r8 => {
                        let mut z = v.clone();
                        z.push(0);
                        mem.write(r.rcx, &z).map_err(|err| {
                            api_err(IoError::BadPointer {
                                call: "http_find",
                                err,
                            })
                        })?;
                        v.len() as u64
                    }
                    Some(_) => 0,
                }
            }
            api::HTTP_METHOD => {
                let m = self.method_bytes();
                let mem = &mut self.vm.machine.mem;
                if r.rdi == 0 {
                    m.len() as u64
                } else if (m.len() as u64) < r.rsi {
                    let mut z = m.clone();
                    z.push(0);
                    mem.write(r.rdi, &z).map_err(|err| {
                        api_err(IoError::BadPointer {
                            call: "http_method",
                            err,
                        })
                    })?;
                    m.len() as u64
                } else {
                    0
                }
            }
            api::SET_CACHEABLE => {
                self.cache_control = Some(cache_control(
                    r.rdi != 0,
                    r.rsi as f64 / 1000.0,
                    r.rdx as f64 / 1000.0,
                ));
                0
            }
            api::BEGIN_STREAMING => {
                return Err(RequestFailure {
                    message: "streaming responses (begin_streaming_response) are not supported yet"
                        .into(),
                    kind: FailureKind::Api,
                })
            }
            api::WAIT_FOR_REQUESTS | api::WAIT_FOR_REQUESTS_PAUSED => {
                return Err(RequestFailure {
                    message: "wait_for_requests() called during a request".into(),
                    kind: FailureKind::Api,
                })
            }
            api::STORAGE_ALLOW => u64::MAX,
            api::STORAGE_TASK => match self.storage.clone() {
                Some(st) => {
                    crate::storage::task_hypercall(&mut self.vm, |f, d, a, b| st.task(f, d, a, b))
                }
                None => {
                    self.vm.printer.log(
                        "storage_task() needs \"storage\": true in the program's configuration",
                    );
                    u64::MAX
                }
            },
            api::STOP_STORAGE_TASK => match &self.storage {
                Some(st) => u64::from(st.stop_task(r.rdi)),
                None => 0,
            },
            api::MAKE_EPHEMERAL => {
                self.vm
                    .printer
                    .log("sys_make_ephemeral() is only allowed before wait_for_requests()");
                u64::MAX
            }
            other => {
                self.vm.unsupported_call(other);
                return Ok(());
            }
        };
        self.vm.machine.cpu.regs_mut().rax = ret;
        Ok(())
    }

    fn method_bytes(&self) -> Vec<u8> {
        let mem = &self.vm.machine.mem;
        let p = mem.read_u64(io::REQUEST_STRUCT).unwrap_or(0);
        mem.read_cstr(p, 64).unwrap_or_default()
    }

    fn read_response(&mut self) -> Outcome {
        let r = *self.vm.machine.cpu.regs();
        let mem = &self.vm.machine.mem;
        let status = r.rdi as u16 as i16;
        if !(200..=599).contains(&status) {
            return fail(
                FailureKind::Api,
                format!(
                    "invalid HTTP status {status} passed to backend_response (must be 200-599)"
                ),
            );
        }
        if r.rdx >= 4096 {
            return fail(
                FailureKind::Api,
                "content type passed to backend_response is 4096 bytes or longer",
            );
        }
        if r.r8 > MAX_RESPONSE_BODY {
            return fail(
                FailureKind::Api,
                format!(
                    "response body of {} bytes is larger than the {} MiB limit",
                    r.r8,
                    MAX_RESPONSE_BODY >> 20
                ),
            );
        }
        // Guest memory refuses the supervisor area (GDT, page tables, ...) as it does for every
        // call: only program memory can be sent.
        let ctype = match mem.read_vec(r.rsi, r.rdx as usize) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    FailureKind::Api,
                    format!("bad content type pointer passed to backend_response: {e}"),
                )
            }
        };
        let body = match mem.read_vec(r.rcx, r.r8 as usize) {
            Ok(b) => b,
            Err(e) => {
                return fail(
                    FailureKind::Api,
                    format!("bad body pointer passed to backend_response: {e}"),
                )
            }
        };
        let mut headers = match io::response_headers(mem) {
            Ok(h) => h,
            Err(e) => return fail(FailureKind::Api, e.to_string()),
        };
        if r.r9 != 0 {
            match self.read_extra(r.r9) {
                Ok(mut extra) => headers.append(&mut extra),
                Err(f) => return Outcome::Failed(f),
            }
        }
        if let Some(cc) = self.cache_control.take() {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("cache-control"));
            headers.push(("Cache-Control".into(), cc));
        }
        Outcome::Response(GuestResponse {
            status: status as u16,
            content_type: String::from_utf8_lossy(&ctype).into_owned(),
            headers,
            body,
        })
    }

    fn read_extra(&mut self, at: u64) -> Result<Vec<(String, String)>, RequestFailure> {
        let mem = &self.vm.machine.mem;
        let bad = |what: String| RequestFailure {
            message: format!("bad BackendResponseExtra passed to backend_response: {what}"),
            kind: FailureKind::Api,
        };
        let x = mem.read_vec(at, 24).map_err(|e| bad(e.to_string()))?;
        let hp = u64::from_le_bytes(x[0..8].try_into().unwrap_or_default());
        let n = u16::from_le_bytes([x[8], x[9]]);
        let cached = x[10] != 0;
        let f = |o: usize| f32::from_le_bytes(x[o..o + 4].try_into().unwrap_or_default()) as f64;
        let (ttl, grace) = (f(12), f(16));
        if n > 64 {
            return Err(bad(format!("{n} headers (at most 64)")));
        }
        let mut out = Vec::new();
        for i in 0..n as u64 {
            let e = mem
                .read_vec(hp.wrapping_add(16 * i), 16)
                .map_err(|e| bad(e.to_string()))?;
            let p = u64::from_le_bytes(e[0..8].try_into().unwrap_or_default());
            let l = u64::from_le_bytes(e[8..16].try_into().unwrap_or_default());
            if l > 65535 {
                return Err(bad(format!("header {i} is {l} bytes long")));
            }
            let field = mem
                .read_vec(p, l as usize)
                .map_err(|e| bad(e.to_string()))?;
            let colon = io::validate_field(&field)
                .map_err(|why| bad(format!("header {:?}: {why}", io::shown_field(&field))))?;
            out.push((
                String::from_utf8_lossy(&field[..colon]).into_owned(),
                String::from_utf8_lossy(&field[colon + 2..]).into_owned(),
            ));
        }
        if cached || ttl > 0.0 {
            self.cache_control = Some(cache_control(cached, ttl, grace));
        }
        Ok(out)
    }

    fn call_on_error(&mut self, req: &GuestRequest, f: &RequestFailure) -> Option<GuestResponse> {
        let ptrs = self.write_request(req).ok()?;
        // The exception text goes into the request-body area.
        let mut msg = f.message.clone().into_bytes();
        msg.push(0);
        let at = self.vm.layout.input_area;
        self.vm.machine.mem.write(at, &msg).ok()?;
        let (handler, rsp) = (self.vm.handlers.on_error, self.entry.rsp.wrapping_sub(512));
        self.vm
            .enter_handler(&self.entry, handler, rsp, &[ptrs.url, ptrs.arg, at])
            .ok()?;
        self.vm
            .start_deadline(Duration::from_secs(1), "on_error handler")
            .ok()?;
        let out = self.run_request();
        self.vm.stop_deadline();
        self.vm.printer.flush();
        match out {
            Outcome::Response(r) => Some(r),
            Outcome::Preempted => None,
            Outcome::Failed(f2) => {
                self.vm
                    .printer
                    .log(&format!("on_error handler failed too: {}", f2.message));
                None
            }
        }
    }
}

fn cache_control(cached: bool, ttl: f64, grace: f64) -> String {
    if cached && ttl > 0.0 {
        let mut s = format!("public, max-age={}", ttl.round() as u64);
        if grace > 0.0 {
            s.push_str(&format!(
                ", stale-while-revalidate={}",
                grace.round() as u64
            ));
        }
        s
    } else {
        "private, no-store".into()
    }
}

#[cfg(test)]
#[test]
fn request_vms_can_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<RequestVm>();
}
