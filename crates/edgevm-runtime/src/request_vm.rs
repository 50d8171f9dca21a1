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

use crate::error::CallvError;
use crate::request::{GuestRequest, GuestResponse};
use crate::reset::HotPages;
use crate::storage::StorageHandle;
use crate::vm::{ForkedVm, Frozen, RunError};

pub use crate::invoker::Invoker;
use crate::invoker::Outcome;

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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
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
    /// The client of a streamed response went away (or stopped reading): the program was
    /// stopped, through no fault of its own.
    ClientGone,
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

/// One request VM.
pub struct RequestVm {
    pub(crate) inv: Invoker,
    pub(crate) frozen: Arc<Frozen>,
    pub(crate) ephemeral: bool,
    /// Pages privately copied since the last full reset (keep-working-memory accounting).
    pub(crate) working: Vec<u64>,
    /// Requests handled.
    pub requests: u64,
    /// Full resets done.
    pub full_resets: u64,
    /// Exit count (without timer exits) when the current request began.
    pub(crate) exits0: u64,
    /// Which pages stay writable between requests (see reset.rs).
    pub(crate) hot: HotPages,
    /// Scratch: the kept pages the last reset found unchanged.
    pub(crate) unchanged: Vec<usize>,
    /// Where a streamed response of the current request goes (set by the pool before the
    /// request moves to a blocking thread); without one a streamed body is collected.
    pub(crate) stream_sink: Option<crate::stream::StreamSink>,
}

/// What [`RequestVm::begin`] came to.
pub enum Step {
    /// The request is answered (or failed) and the VM is reset: ready for the next one.
    Done(Result<GuestResponse, RequestFailure>, RequestStats),
    /// The time slice ran out first: the handler is stopped mid-way. Finish it with
    /// [`RequestVm::resume`] — on this or any other thread — before anything else.
    Preempted,
}

pub(crate) fn fail(kind: FailureKind, message: impl Into<String>) -> Outcome {
    Outcome::Failed(RequestFailure {
        message: message.into(),
        kind,
    })
}

pub(crate) fn run_error_failure(e: RunError) -> RequestFailure {
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

pub(crate) fn callv_failure(e: CallvError) -> RequestFailure {
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
        let mut vm = ForkedVm::from_frozen_in(&frozen, shell)?;
        let ephemeral = frozen.ephemeral_override.unwrap_or(settings.ephemeral);
        let pages = vm.machine.mem.pages();
        // The new VM stands exactly at the frozen point.
        let entry = vm.entry_state(frozen.use_xsave);
        let mut inv = Invoker::new(vm, entry, settings, storage);
        // An event loop resumes from the frozen paused point; a non-ephemeral one runs on to
        // its next wait after each response and is resumed there.
        inv.paused_regs = frozen.paused.map(|_| frozen.regs);
        inv.continue_loop = !ephemeral;
        Ok(RequestVm {
            inv,
            frozen,
            ephemeral,
            working: vec![0; pages.div_ceil(64)],
            requests: 0,
            full_resets: 0,
            exits0: 0,
            hot: HotPages::default(),
            unchanged: Vec::new(),
            stream_sink: None,
        })
    }

    /// Set this VM's index in its pool (what `vcpureqid()` returns in it).
    pub fn set_index(&mut self, index: u32) {
        self.inv.index = index;
    }

    /// This VM's index in its pool.
    pub fn index(&self) -> u32 {
        self.inv.index
    }

    /// How many pages are kept writable between requests now ("hot pages", see
    /// `after_request`).
    pub fn hot_pages(&self) -> usize {
        self.hot.len()
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

    /// Send a streamed response of the current request to `sink` (see
    /// [`crate::stream`]); without this a streamed body is collected into the response.
    pub fn stream_to(&mut self, sink: crate::stream::StreamSink) {
        self.stream_sink = Some(sink);
    }

    fn finish(
        &mut self,
        req: &GuestRequest,
        outcome: Outcome,
    ) -> (Result<GuestResponse, RequestFailure>, RequestStats) {
        let outcome = match outcome {
            Outcome::Streaming(s) => {
                let sink = self.stream_sink.take();
                match self.inv.finish_stream(s, sink) {
                    Ok(r) => Outcome::Response(r),
                    Err(f) => Outcome::Failed(f),
                }
            }
            other => other,
        };
        self.stream_sink = None;
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
                    if std::mem::take(&mut self.inv.broken) {
                        self.full_reset();
                        stats.full_reset = true;
                    }
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
            Outcome::Preempted | Outcome::Streaming(_) => {
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
            // A streamed response went out already: on_error cannot answer instead.
            Err(f) if self.inv.vm.handlers.on_error != 0 && !self.inv.streamed => {
                let r = self.inv.call_on_error(req, &f);
                self.full_reset();
                r.ok_or(f)
            }
            other => other,
        };
        stats.reset_time = t.elapsed();
        (result, stats)
    }
}

#[cfg(test)]
#[test]
fn request_vms_can_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<RequestVm>();
}
