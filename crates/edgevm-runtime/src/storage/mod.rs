//! The storage VM: one long-lived VM per program (when `storage` is on) that keeps mutable
//! state across requests, serving `storage_callv()`s one at a time under a FIFO turn, on the
//! caller's thread, with clean-ups chained to the next call. How calls run, the turn and the
//! chaining: docs/DESIGN.md, "Storage VM".
//!
//! Tasks (`sys_storage_task(func, data, len, start_ms, period_ms)`, from request VMs or from
//! storage itself): `func(copy_of_data, len)` runs in the storage VM through the same queue as
//! calls, with nobody waiting for it (15 s budget, as the reference). With start = period = 0
//! it is queued at once (id 0); otherwise a scheduler thread queues it after `start_ms` and
//! then every `period_ms` (0: once), and the id it returns (1, 2, ...) stops it with
//! `stop_storage_task(id)`. At most [`MAX_TIMERS`] scheduled tasks per program, data at most
//! [`MAX_INPUT`] bytes. A task that fails is logged; storage keeps serving.
//!
//! Files: `turn.rs` (the FIFO turn), `calls.rs` (a request's storage call and the holder's
//! loop), `drive.rs` (running one open call), `tasks.rs` (scheduled tasks), `thread.rs` (the
//! storage thread and boot), `guest.rs` (the storage calls' guest arguments).

mod calls;
mod drive;
mod guest;
mod tasks;
mod thread;
mod turn;
#[cfg(test)]
mod turn_model;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::vm::{EntryState, MainVm};

pub use crate::error::StorageError;
pub use calls::StorageCall;
use calls::{CallState, Started};
pub(crate) use guest::{finish_callv, read_callv, task_hypercall};
pub(crate) use tasks::BootTasks;
use tasks::{Alive, Tasks};
pub use thread::start;
use turn::TurnState;

/// Most input buffers per call.
pub const MAX_BUFFERS: u64 = 64;
/// Most input bytes per call (copied onto the storage VM's 4 MiB stack).
pub const MAX_INPUT: usize = 2 << 20;

/// Most scheduled (timer) tasks at a time per program, as the reference.
pub const MAX_TIMERS: usize = 15;
/// How long a task may run.
pub const TASK_BUDGET: Duration = Duration::from_secs(15);
/// How long a function may clean up after storage_return.
const CLEANUP_BUDGET: Duration = Duration::from_secs(1);
/// Whether the holder whose call was answered at storage_return also runs the function's
/// clean-up right away (within its slice), or leaves it to the next holder of the turn, which
/// chains its own call behind it (measured: running it at once costs the same CPU plus the
/// exit that chaining removes).
const CLEANUP_NOW: bool = false;

/// What a call does.
enum Kind {
    /// storage_callv from a request (or from main() during boot).
    Func,
    /// A task: func(data, len); nobody waits for it.
    Task,
    /// Live update, old program: call its on_live_update(); its storage_return data is the
    /// state to carry over (empty without a callback).
    LiveUpdate,
    /// Live update, new program: call on_live_restore(len); its storage_return(dst, len) names
    /// where the carried state goes.
    LiveRestore(Vec<u8>),
    /// A remote call from a request VM (crate::remote): func(the six argument registers),
    /// through the keep-the-result stub; its answer is [`Returned`] with `len` = RAX and
    /// `data` = RDX (8 bytes, little-endian).
    Remote([u64; 6]),
}

/// A call not started yet.
struct Call {
    kind: Kind,
    func: u64,
    inputs: Vec<Vec<u8>>,
    dstlen: u64,
}

/// A call handed to the storage thread, with where its answer goes (nowhere for tasks).
struct Job {
    /// None: only finish what is left in the storage VM.
    call: Option<Call>,
    reply: Option<Sender<Answer>>,
}

/// What a storage function handed back with `storage_return(data, len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// The first `min(len, dstlen)` bytes at `data` (empty when `data` was NULL).
    pub data: Vec<u8>,
    /// The `len` the function passed, as is (what a caller with a NULL `dst` gets).
    pub len: u64,
}

/// What a storage call came to: `Ok(Some(r))` after storage_return, `Ok(None)` when the
/// function returned without calling it.
pub type Answer = Result<Option<Returned>, StorageError>;

/// Most bytes copied back from one storage call.
pub const MAX_RESULT: u64 = 64 << 20;

/// A request VM's handle on the storage VM.
#[derive(Clone)]
pub struct StorageHandle {
    core: Arc<Core>,
    timeout: Duration,
    /// The storage program's range when request VMs call into it (crate::remote).
    remote: Option<(u64, u64)>,
    /// The storage program's own binary, when request VMs call into it (kept by a live
    /// update of the request program).
    remote_binary: Option<Arc<Vec<u8>>>,
    /// Stops the task scheduler and the storage thread when the last handle goes (e.g. after
    /// a live update).
    _alive: Arc<Alive>,
}

/// One storage VM, shared by its program's request VMs, its storage thread and its task
/// scheduler.
struct Core {
    /// Who may use the storage VM now, and who waits for it (FIFO).
    turn: Mutex<TurnState>,
    /// The storage VM. Only the holder of the turn locks it (so it is never contended).
    served: Mutex<Served>,
    /// To the storage thread: a job, sent together with the turn.
    jobs: Sender<Job>,
    tasks: Arc<Tasks>,
    /// max_storage_time.
    budget: Duration,
    /// Ids of calls (which holder an unfinished call belongs to).
    next_id: AtomicU64,
    /// VM exits of the storage VM so far.
    exits: AtomicU64,
    /// The storage thread sleeps long: a holder that leaves a clean-up behind with nobody
    /// waiting hands it the turn to finish it.
    dozing: std::sync::atomic::AtomicBool,
}

/// A program's storage VM: booted like a main VM, in its own memory, and kept running for
/// good — never frozen (that needs an owned [`MainVm`]) and never reset (only a request VM's
/// [`crate::vm::ForkedVm`] memory can be).
pub(crate) struct StorageVm(MainVm);

impl std::ops::Deref for StorageVm {
    type Target = MainVm;
    fn deref(&self) -> &MainVm {
        &self.0
    }
}

impl std::ops::DerefMut for StorageVm {
    fn deref_mut(&mut self) -> &mut MainVm {
        &mut self.0
    }
}

/// The storage VM and the call it is in, used by whoever holds the turn.
struct Served {
    vm: StorageVm,
    entry: EntryState,
    allowed: Vec<u64>,
    open: Option<Open>,
    /// Guest address of the chain mailbox (see `calls::begin_chained`), when calls can be
    /// chained.
    mailbox: Option<u64>,
    /// When the open call was left to the next holder.
    left_at: Instant,
}

/// A call that started in the storage VM and has not ended.
struct Open {
    /// The [`Core::next_id`] of the call; its caller holds the turn while it runs.
    id: u64,
    kind: Kind,
    func: u64,
    dstlen: u64,
    result: Option<Returned>,
    /// Its caller has its answer (the function cleans up after storage_return) or is gone:
    /// whoever holds the turn finishes it.
    orphan: bool,
    /// Start the run deadline anew before the function runs on (clean-up: 1 s from then).
    restart: Option<(Duration, &'static str)>,
    /// max_storage_time (or the task budget) of this call.
    budget: Duration,
    /// Top of its input data on the stack (its live stack is below, down to its RSP).
    top: u64,
    /// Where it stands.
    phase: drive::Phase,
}

impl StorageHandle {
    /// Call `func` in storage with `inputs` from a thread that may block (main() during boot):
    /// the storage thread runs it. `Ok(Some(r))`: the function called `storage_return`
    /// (`r.data` holds at most `dstlen` bytes); `Ok(None)`: it returned without doing so (the
    /// caller gets -1, as in the reference). `Err`: the call was refused (not in the
    /// STORAGE_ALLOW list) or failed (crash, max_storage_time, exit).
    pub fn call(
        &self,
        func: u64,
        inputs: Vec<Vec<u8>>,
        dstlen: u64,
        wait: Option<Duration>,
    ) -> Answer {
        let limit = wait.map_or(self.timeout, |w| w.min(self.timeout));
        self.job(
            Call {
                kind: Kind::Func,
                func,
                inputs,
                dstlen,
            },
            limit,
        )
    }

    /// Queue `call` for the storage thread and wait up to `limit` for its answer.
    fn job(&self, call: Call, limit: Duration) -> Answer {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.core.enqueue(Job {
            call: Some(call),
            reply: Some(reply),
        })?;
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(StorageError::NoAnswer(limit)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(StorageError::Gone),
        }
    }

    /// A storage call from a request, to run on the request's own thread with
    /// [`StorageCall::advance`]. It takes its place in the queue now (calls run in the order
    /// they were made).
    pub fn begin(&self, func: u64, inputs: Vec<Vec<u8>>, dstlen: u64) -> StorageCall {
        self.queue(Call {
            kind: Kind::Func,
            func,
            inputs,
            dstlen,
        })
    }

    /// A remote call of `func(args...)` from a request (crate::remote), to run on the
    /// request's own thread like [`StorageHandle::begin`].
    pub fn begin_remote(&self, func: u64, args: [u64; 6]) -> StorageCall {
        self.queue(Call {
            kind: Kind::Remote(args),
            func,
            inputs: Vec::new(),
            dstlen: 0,
        })
    }

    /// `call`, in its place in the queue from now on.
    fn queue(&self, call: Call) -> StorageCall {
        let state = match self.core.take_turn() {
            Ok(turn) => CallState::Running(turn, Started::No(call)),
            Err(q) => CallState::Queued(q, call),
        };
        StorageCall {
            core: self.core.clone(),
            state,
            timeout: self.timeout,
            exits: 0,
        }
    }

    /// The storage program's range `[lo, hi)` when request VMs call its functions remotely.
    pub fn remote_range(&self) -> Option<(u64, u64)> {
        self.remote
    }

    /// Set [`StorageHandle::remote_range`] and the storage binary it belongs to (the
    /// program's boot, which knows both binaries).
    pub(crate) fn set_remote(&mut self, r: Option<(u64, u64)>, binary: Option<Arc<Vec<u8>>>) {
        self.remote = r;
        self.remote_binary = r.and(binary);
    }

    /// The storage program's binary when request VMs call into it remotely.
    pub fn remote_binary(&self) -> Option<Arc<Vec<u8>>> {
        self.remote_binary.clone()
    }

    /// `sys_storage_task` from a request VM: see the module documentation.
    pub fn task(
        &self,
        func: u64,
        data: Vec<u8>,
        start: Duration,
        period: Duration,
    ) -> Result<u64, StorageError> {
        self.core.tasks.add(&self.core, func, data, start, period)
    }

    /// `stop_storage_task(id)`: true if the task was scheduled and is now stopped.
    pub fn stop_task(&self, id: u64) -> bool {
        self.core.tasks.stop(id)
    }

    /// VM exits of the storage VM so far.
    pub fn exits(&self) -> u64 {
        self.core.exits.load(Ordering::Relaxed)
    }

    fn special(&self, kind: Kind) -> Answer {
        self.job(
            Call {
                kind,
                func: 0,
                inputs: Vec::new(),
                dstlen: u64::MAX,
            },
            self.timeout,
        )
        .map_err(|e| StorageError::Waiting(Box::new(e)))
    }

    /// Live update, old program: the state its on_live_update() hands over (empty if it has
    /// no such callback).
    pub fn live_update_state(&self) -> Result<Vec<u8>, StorageError> {
        self.special(Kind::LiveUpdate)
            .map(|r| r.map(|r| r.data).unwrap_or_default())
    }

    /// Live update, new program: give `state` to its on_live_restore(). Returns false when the
    /// program has no such callback.
    pub fn live_restore(&self, state: Vec<u8>) -> Result<(), StorageError> {
        self.special(Kind::LiveRestore(state)).map(|_| ())
    }
}

/// The VM's exits so far, without the runtime's own timer exits.
fn program_exits(vm: &MainVm) -> u64 {
    vm.machine.cpu.exit_count().wrapping_sub(vm.timer_exits)
}

/// `name (0x...)` of a storage function, or its address alone.
fn describe(vm: &MainVm, func: u64) -> String {
    match vm.elf.symbols.lookup(func) {
        Some((name, 0)) => format!("'{name}' ({func:#x})"),
        Some((name, off)) => format!("{func:#x} ({name}+{off:#x})"),
        None => format!("{func:#x}"),
    }
}
