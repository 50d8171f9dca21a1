//! The storage VM: one long-lived VM per program (when `storage` is on) that keeps mutable
//! state across requests. It boots from the same program (KVM_TYPE=storage), runs `main()` to
//! `wait_for_requests()`, and then serves `storage_call()`s from request VMs, one at a time. It
//! is never reset.
//!
//! A call: the request VM's `storage_callv(func, n, bufs, dst, dstlen)` exits to the host, which
//! copies the input buffers onto the storage VM's stack and calls `func(n, bufs, dstlen)` there
//! through the request-entry stub. The function's `storage_return(data, len)` exits; the caller
//! gets at most `dstlen` bytes of the data at once, and the function is resumed (at most 1 s
//! more) so it can clean up and return. `storage_noreturn` is not resumed. Both programs are
//! the same ELF at the same addresses, so function pointers are valid in both VMs. A call that
//! crashes or times out fails the caller (-1); the storage VM keeps its state and serves the
//! next call from a fresh entry.
//!
//! **Where calls run.** Whoever holds the storage VM's *turn* runs it, on its own thread: a
//! FIFO lock (`Core`) that serializes every use of the storage VM. A request takes the turn on
//! the thread that runs the request (an HTTP worker, or a blocking thread after a preemption)
//! and runs the storage function right there: with the turn free, a call costs no thread
//! wake-up at all. On an HTTP worker the call runs within the request's time slice; when the
//! turn is taken, or the call runs past the slice, the request is preempted as for any slow
//! request and goes on waiting (in its place in the queue) or running on a blocking thread.
//! The timer that enforces `max_storage_time` is the running thread's own (timer.rs): it is
//! pointed at the storage vCPU while storage runs and back at the request's afterwards.
//!
//! **Clean-ups are chained.** The caller goes on at storage_return and leaves the function's
//! clean-up to the next holder of the turn, which runs it and its own call in one KVM_RUN
//! (`begin_chained`: a mailbox in the storage VM and the chain stub after the entry stub's
//! `call`), so a call costs one storage exit instead of two. Other work a holder leaves
//! unfinished (a call whose caller went away, a run stopped by the slice) is finished by the
//! next holder first, or by the storage thread when nobody comes.
//!
//! The storage VM's own thread boots it and serves what nobody waits for on a request's thread:
//! tasks, the calls `main()` makes during boot, and live-update hand-overs. These take their
//! place in the same FIFO queue (the turn is handed to the storage thread together with them).
//!
//! Tasks (`sys_storage_task(func, data, len, start_ms, period_ms)`, from request VMs or from
//! storage itself): `func(copy_of_data, len)` runs in the storage VM through the same queue as
//! calls, with nobody waiting for it (15 s budget, as the reference). With start = period = 0
//! it is queued at once (id 0); otherwise a scheduler thread queues it after `start_ms` and
//! then every `period_ms` (0: once), and the id it returns (1, 2, ...) stops it with
//! `stop_storage_task(id)`. At most [`MAX_TIMERS`] scheduled tasks per program, data at most
//! [`MAX_INPUT`] bytes. A task that fails is logged; storage keeps serving.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use edgevm_abi::api;
use edgevm_abi::linux::Output;
use edgevm_kvm::Vcpu;

use crate::vm::{BootOutcome, EntryState, Event, MainVm, VmOptions};

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
    reply: Option<Sender<Result<Option<Returned>, String>>>,
}

/// What a storage function handed back with `storage_return(data, len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// The first `min(len, dstlen)` bytes at `data` (empty when `data` was NULL).
    pub data: Vec<u8>,
    /// The `len` the function passed, as is (what a caller with a NULL `dst` gets).
    pub len: u64,
}

/// Most bytes copied back from one storage call.
pub const MAX_RESULT: u64 = 64 << 20;

/// A request VM's handle on the storage VM.
#[derive(Clone)]
pub struct StorageHandle {
    core: Arc<Core>,
    timeout: Duration,
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

#[derive(Default)]
struct TurnState {
    held: bool,
    queue: VecDeque<Waiter>,
    next_waiter: u64,
}

enum Waiter {
    /// A caller blocked (or preempted) until the turn is handed to it.
    Caller { id: u64, wake: Sender<()> },
    /// A job for the storage thread.
    Job(Job),
}

/// The storage VM and the call it is in, used by whoever holds the turn.
struct Served {
    vm: MainVm,
    entry: EntryState,
    allowed: Vec<u64>,
    open: Option<Open>,
    /// Guest address of the chain mailbox (see [`begin_chained`]), when calls can be chained.
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
    /// Chained behind the clean-up of this function (see [`begin_chained`]), until the
    /// mailbox's flag says the chain stub took the call.
    prev: Option<u64>,
    /// When it was chained.
    chained_at: Option<Instant>,
    /// The armed deadline is the previous function's clean-up's.
    cleanup_deadline: bool,
}

/// The turn: held by whoever has this; handed to the next waiter when dropped.
struct Turn(Arc<Core>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A place in the queue for the turn.
struct Queued {
    core: Arc<Core>,
    id: u64,
    wake: Receiver<()>,
    /// Handed over (and taken by [`Queued::wait_up_to`]).
    granted: bool,
}

impl Queued {
    /// The turn, if it is handed over within `d`.
    fn wait_up_to(&mut self, d: Duration) -> Option<Turn> {
        match self.wake.recv_timeout(d) {
            Ok(()) => {
                self.granted = true;
                Some(Turn(self.core.clone()))
            }
            Err(_) => None,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut st = self.core.lock_turn();
        if let Some(i) = st
            .queue
            .iter()
            .position(|w| matches!(w, Waiter::Caller { id, .. } if *id == self.id))
        {
            st.queue.remove(i);
            return;
        }
        // Not in the queue: the turn was handed to us just now. Pass it on.
        drop(st);
        self.core.release();
    }
}

impl Core {
    fn lock_turn(&self) -> MutexGuard<'_, TurnState> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_served(&self) -> MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The turn now if nobody has it or waits for it; else a place at the end of the queue.
    fn take_turn(self: &Arc<Self>) -> Result<Turn, Queued> {
        let mut st = self.lock_turn();
        if !st.held && st.queue.is_empty() {
            st.held = true;
            return Ok(Turn(self.clone()));
        }
        st.next_waiter += 1;
        let id = st.next_waiter;
        let (wake, rx) = crossbeam_channel::bounded(1);
        st.queue.push_back(Waiter::Caller { id, wake });
        Err(Queued {
            core: self.clone(),
            id,
            wake: rx,
            granted: false,
        })
    }

    /// The turn now if it is free, without queueing.
    fn try_turn(self: &Arc<Self>) -> Option<Turn> {
        let mut st = self.lock_turn();
        if st.held || !st.queue.is_empty() {
            return None;
        }
        st.held = true;
        Some(Turn(self.clone()))
    }

    /// Queue a job for the storage thread (in its place among the callers).
    fn enqueue(&self, job: Job) -> Result<(), String> {
        let mut st = self.lock_turn();
        if !st.held && st.queue.is_empty() {
            st.held = true;
            drop(st);
            return self.jobs.send(job).map_err(|_| {
                self.release();
                "the storage VM is gone".to_string()
            });
        }
        st.queue.push_back(Waiter::Job(job));
        Ok(())
    }

    /// Hand the turn to the next waiter, or free it.
    fn release(&self) {
        let mut st = self.lock_turn();
        while let Some(w) = st.queue.pop_front() {
            match w {
                Waiter::Caller { wake, .. } => {
                    if wake.send(()).is_ok() {
                        return;
                    }
                }
                Waiter::Job(job) => {
                    if self.jobs.send(job).is_ok() {
                        return;
                    }
                }
            }
        }
        if self.dozing.load(Ordering::Relaxed) && self.left_unfinished() {
            // Nobody comes soon (the storage thread dozes): it finishes the clean-up.
            if self
                .jobs
                .send(Job {
                    call: None,
                    reply: None,
                })
                .is_ok()
            {
                return;
            }
        }
        st.held = false;
    }

    /// Whether the storage VM is in a call nobody waits for (called holding the turn).
    fn left_unfinished(&self) -> bool {
        self.served
            .try_lock()
            .is_ok_and(|s| s.open.as_ref().is_some_and(|o| o.orphan))
    }
}

/// Scheduled tasks of one storage VM.
struct Tasks {
    state: Mutex<TaskState>,
    changed: Condvar,
}

#[derive(Default)]
struct TaskState {
    next_id: u64,
    timers: BTreeMap<u64, Timer>,
    stopped: bool,
}

struct Timer {
    due: Instant,
    period: Duration,
    func: u64,
    data: Arc<Vec<u8>>,
}

struct Alive(Arc<Tasks>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stopped = true;
        self.0.changed.notify_all();
    }
}

impl Tasks {
    fn is_stopped(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stopped
    }

    /// Queue `func(data)` now (id 0) or schedule it (id >= 1); Err(why) if refused.
    fn add(
        &self,
        core: &Core,
        func: u64,
        data: Vec<u8>,
        start: Duration,
        period: Duration,
    ) -> Result<u64, String> {
        if data.len() > MAX_INPUT {
            return Err(format!(
                "task data of {} bytes (at most {MAX_INPUT})",
                data.len()
            ));
        }
        if start.is_zero() && period.is_zero() {
            core.enqueue(task_job(func, data))?;
            return Ok(0);
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.timers.len() >= MAX_TIMERS {
            return Err(format!("{MAX_TIMERS} scheduled tasks already"));
        }
        st.next_id += 1;
        let id = st.next_id;
        st.timers.insert(
            id,
            Timer {
                due: Instant::now() + start,
                period,
                func,
                data: Arc::new(data),
            },
        );
        drop(st);
        self.changed.notify_all();
        Ok(id)
    }

    fn stop(&self, id: u64) -> bool {
        let found = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .timers
            .remove(&id)
            .is_some();
        self.changed.notify_all();
        found
    }

    /// The scheduler thread: queue due tasks until the last handle is gone.
    fn run(self: Arc<Self>, core: Arc<Core>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.stopped {
                return;
            }
            let now = Instant::now();
            let due: Vec<u64> = st
                .timers
                .iter()
                .filter(|(_, t)| t.due <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                let Some(t) = st.timers.get_mut(&id) else {
                    continue;
                };
                let job = task_job(t.func, t.data.as_ref().clone());
                if t.period.is_zero() {
                    st.timers.remove(&id);
                } else {
                    // The next run counts from this one; a period shorter than a run does not
                    // pile up runs (one is queued per period at most).
                    t.due = now + t.period;
                }
                if core.enqueue(job).is_err() {
                    return;
                }
            }
            let next = st.timers.values().map(|t| t.due).min();
            st = match next {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    self.changed
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

fn task_job(func: u64, data: Vec<u8>) -> Job {
    Job {
        call: Some(Call {
            kind: Kind::Task,
            func,
            inputs: vec![data],
            dstlen: 0,
        }),
        reply: None,
    }
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
    ) -> Result<Option<Returned>, String> {
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
    fn job(&self, call: Call, limit: Duration) -> Result<Option<Returned>, String> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.core.enqueue(Job {
            call: Some(call),
            reply: Some(reply),
        })?;
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(format!(
                "storage call did not finish within {:.1}s (storage is busy or the call is slow)",
                limit.as_secs_f64()
            )),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err("the storage VM is gone".into())
            }
        }
    }

    /// A storage call from a request, to run on the request's own thread with
    /// [`StorageCall::advance`]. It takes its place in the queue now (calls run in the order
    /// they were made).
    pub fn begin(&self, func: u64, inputs: Vec<Vec<u8>>, dstlen: u64) -> StorageCall {
        let call = Call {
            kind: Kind::Func,
            func,
            inputs,
            dstlen,
        };
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

    /// `sys_storage_task` from a request VM: see the module documentation.
    pub fn task(
        &self,
        func: u64,
        data: Vec<u8>,
        start: Duration,
        period: Duration,
    ) -> Result<u64, String> {
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

    fn special(&self, kind: Kind) -> Result<Option<Returned>, String> {
        self.job(
            Call {
                kind,
                func: 0,
                inputs: Vec::new(),
                dstlen: u64::MAX,
            },
            self.timeout,
        )
        .map_err(|e| format!("waiting for the storage VM: {e}"))
    }

    /// Live update, old program: the state its on_live_update() hands over (empty if it has
    /// no such callback).
    pub fn live_update_state(&self) -> Result<Vec<u8>, String> {
        self.special(Kind::LiveUpdate)
            .map(|r| r.map(|r| r.data).unwrap_or_default())
    }

    /// Live update, new program: give `state` to its on_live_restore(). Returns false when the
    /// program has no such callback.
    pub fn live_restore(&self, state: Vec<u8>) -> Result<(), String> {
        self.special(Kind::LiveRestore(state)).map(|_| ())
    }
}

/// A storage call of a request: waiting for the turn, or running (holding it). Advance it with
/// [`StorageCall::advance`] on whichever thread runs the request; dropping it gives up its
/// place (a call already started is finished by the next holder of the turn).
pub struct StorageCall {
    core: Arc<Core>,
    state: CallState,
    /// How long the caller may wait for the turn at most (max_storage_time plus the queue
    /// timeout).
    timeout: Duration,
    /// VM exits of the storage VM while this call held the turn.
    pub exits: u64,
}

enum CallState {
    Queued(Queued, Call),
    Running(Turn, Started),
    Done,
}

impl StorageCall {
    /// Wait for the turn and run the call on this thread. With a `slice` (on an HTTP worker),
    /// wait and run only that long: None means not finished yet (advance again later, e.g. on
    /// a blocking thread without a slice). Without one, wait for the turn at most `wait` (what
    /// is left of the caller's deadline) or the handle's timeout, and run the call to its end
    /// (max_storage_time bounds it).
    ///
    /// The storage VM runs with this thread's timer: the caller re-arms it for its own VM
    /// afterwards.
    pub fn advance(
        &mut self,
        slice: Option<Duration>,
        wait: Option<Duration>,
    ) -> Option<Result<Option<Returned>, String>> {
        let t0 = Instant::now();
        let (turn, started) = match std::mem::replace(&mut self.state, CallState::Done) {
            CallState::Done => {
                return Some(Err("internal error: storage call already answered".into()))
            }
            CallState::Running(turn, started) => (turn, started),
            CallState::Queued(mut q, call) => {
                let limit = match slice {
                    Some(s) => s,
                    None => wait.map_or(self.timeout, |w| w.min(self.timeout)),
                };
                match q.wait_up_to(limit) {
                    Some(turn) => (turn, Started::No(call)),
                    None if slice.is_some() => {
                        self.state = CallState::Queued(q, call);
                        return None;
                    }
                    None => {
                        return Some(Err(format!(
                            "storage call did not start within {:.1}s (storage is busy)",
                            limit.as_secs_f64()
                        )))
                    }
                }
            }
        };
        let slice = slice.map(|s| s.saturating_sub(t0.elapsed()));
        let core = self.core.clone();
        let mut started = started;
        let mut s = core.lock_served();
        let e0 = program_exits(&s.vm);
        let r = serve_turn(&core, &mut s, &mut started, slice, true);
        let exits = program_exits(&s.vm).wrapping_sub(e0);
        drop(s);
        self.exits += exits;
        core.exits.fetch_add(exits, Ordering::Relaxed);
        match r {
            None => {
                self.state = CallState::Running(turn, started);
                None
            }
            Some(r) => {
                drop(turn);
                Some(r)
            }
        }
    }
}

impl Drop for StorageCall {
    fn drop(&mut self) {
        if let CallState::Running(turn, _) = std::mem::replace(&mut self.state, CallState::Done) {
            // The caller went away mid-call: the next holder of the turn finishes the call.
            if let Some(o) = self.core.lock_served().open.as_mut() {
                o.orphan = true;
            }
            drop(turn);
        }
    }
}

/// A holder's own call: not started yet, or started with this id.
enum Started {
    No(Call),
    Yes(u64),
}

/// Holding the turn: finish what an earlier holder left unfinished, then run the holder's own
/// call up to its answer: at storage_return when `early` (the clean-up then runs on right away
/// if [`CLEANUP_NOW`], within the slice, or is left to the next holder, which chains its own
/// call behind it: [`begin_chained`]). With a slice, stop when it is over: None (the holder's
/// call goes on later, `started` says where it stands).
fn serve_turn(
    core: &Core,
    s: &mut Served,
    started: &mut Started,
    slice: Option<Duration>,
    early: bool,
) -> Option<Result<Option<Returned>, String>> {
    let end = slice.map(|d| Instant::now() + d);
    let left = || end.map(|e| e.saturating_duration_since(Instant::now()));
    let mut answer: Option<Result<Option<Returned>, String>> = None;
    loop {
        let chain = answer.is_none()
            && matches!(started, Started::No(_))
            && s.open.as_ref().is_some_and(|o| {
                o.orphan && o.restart.is_some() && o.result.is_some() && o.prev.is_none()
            });
        if chain {
            // A clean-up that has not begun: run it and this call in one go.
            if let Started::No(call) = std::mem::replace(started, Started::Yes(0)) {
                match begin_chained(core, s, call) {
                    Ok(Ok(id)) => *started = Started::Yes(id),
                    Ok(Err(call)) => *started = Started::No(call),
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        if let Some(o) = &s.open {
            let mine = matches!(started, Started::Yes(id) if !o.orphan && o.id == *id);
            match drive(core, s, left(), early && mine) {
                Drive::Preempted => {
                    // Answered already: the clean-up goes on with the next holder.
                    return answer;
                }
                Drive::Answered(r) => {
                    if let Some(o) = s.open.as_mut() {
                        o.orphan = true;
                    }
                    s.left_at = Instant::now();
                    if !CLEANUP_NOW {
                        return Some(Ok(Some(r)));
                    }
                    answer = Some(Ok(Some(r)));
                    continue;
                }
                Drive::Finished(f) if mine => return Some(finish(s, f)),
                Drive::Finished(f) => {
                    if let Err(e) = f.result {
                        let what = describe(&s.vm, f.func);
                        s.vm.printer.log(&format!(
                            "storage function {what} failed after its caller went away: {e}"
                        ));
                    }
                    continue;
                }
            }
        }
        if answer.is_some() {
            return answer;
        }
        match std::mem::replace(started, Started::Yes(0)) {
            Started::No(call) => match begin(core, s, call) {
                Ok(id) => *started = Started::Yes(id),
                Err(e) => return Some(Err(e)),
            },
            Started::Yes(_) => {
                return Some(Err("internal error: the storage call was lost".into()))
            }
        }
    }
}

/// What a holder's own call came to, as its caller sees it (logged here).
fn finish(s: &mut Served, f: Finished) -> Result<Option<Returned>, String> {
    if !f.func_call {
        return f.result;
    }
    let what = describe(&s.vm, f.func);
    match f.result {
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => {
            s.vm.printer.log(&format!(
                "storage function {what} returned without calling storage_return(): the caller gets -1"
            ));
            Ok(None)
        }
        Err(e) => {
            let e = format!("storage function {what}: {e}");
            s.vm.printer.log(&format!("storage call failed: {e}"));
            Err(e)
        }
    }
}

/// Err(message) if `call` may not run (the STORAGE_ALLOW list; logged for storage_callv).
fn check_allowed(s: &mut Served, call: &Call) -> Result<(), String> {
    if s.allowed.is_empty() || s.allowed.contains(&call.func) {
        return Ok(());
    }
    let what = describe(&s.vm, call.func);
    Err(match call.kind {
        Kind::Task => "it is not allowed (not in the program's STORAGE_ALLOW list)".to_string(),
        _ => {
            let e = format!(
                "storage function {what} is not allowed (not in the program's STORAGE_ALLOW list)"
            );
            s.vm.printer.log(&format!("storage call failed: {e}"));
            e
        }
    })
}

/// The lowest address of `inputs` laid out below `top` (data blocks, then the virtbuffer
/// array), as [`write_inputs`] lays them out.
fn inputs_low(top: u64, inputs: &[Vec<u8>]) -> u64 {
    let mut sp = top;
    for inp in inputs {
        sp = sp.wrapping_sub(inp.len() as u64) & !15;
    }
    sp.wrapping_sub(16 * inputs.len() as u64) & !15
}

/// Copy `inputs` below `top`: the address of the virtbuffer array and the array's bytes.
fn write_inputs(vm: &mut MainVm, top: u64, inputs: &[Vec<u8>]) -> Result<(u64, Vec<u8>), String> {
    // Guest-controlled stack pointer: wrap, the writes below are bounds-checked.
    let mut sp = top;
    let mut descs = Vec::with_capacity(inputs.len() * 16);
    for inp in inputs {
        sp = sp.wrapping_sub(inp.len() as u64) & !15;
        vm.machine
            .mem
            .write(sp, inp)
            .map_err(|e| format!("cannot copy storage input: {e}"))?;
        descs.extend_from_slice(&sp.to_le_bytes());
        descs.extend_from_slice(&(inp.len() as u64).to_le_bytes());
    }
    sp = sp.wrapping_sub(descs.len() as u64) & !15;
    vm.machine
        .mem
        .write(sp, &descs)
        .map_err(|e| format!("cannot copy storage input: {e}"))?;
    Ok((sp, descs))
}

/// Where every call's inputs go when nothing else is live: below the frozen frame.
fn standard_top(entry: &EntryState) -> u64 {
    entry.rsp.wrapping_sub(4096) & !15
}

/// A new [`Open`] for `call` with this id.
fn open_call(call: Call, id: u64, budget: Duration, top: u64) -> Open {
    Open {
        id,
        kind: call.kind,
        func: call.func,
        dstlen: call.dstlen,
        result: None,
        orphan: false,
        restart: Some((budget, "storage call (max_storage_time)")),
        budget,
        top,
        prev: None,
        chained_at: None,
        cleanup_deadline: false,
    }
}

/// Start `call` in the storage VM (its arguments on the stack, the registers set, the
/// deadline to start when it runs); its id.
fn begin(core: &Core, s: &mut Served, call: Call) -> Result<u64, String> {
    check_allowed(s, &call)?;
    let top = standard_top(&s.entry);
    let vm = &mut s.vm;
    let (bufs, descs) = write_inputs(vm, top, &call.inputs)?;
    let args = match &call.kind {
        Kind::Func => vec![call.inputs.len() as u64, bufs, call.dstlen],
        // func(data, len): the one input block.
        Kind::Task => {
            let first =
                |o: usize| u64::from_le_bytes(descs[o..o + 8].try_into().unwrap_or_default());
            vec![first(0), first(8)]
        }
        Kind::LiveUpdate => vec![],
        Kind::LiveRestore(state) => vec![state.len() as u64],
    };
    vm.enter_handler(&s.entry, call.func, bufs.wrapping_sub(256), &args)
        .map_err(|e| e.to_string())?;
    // RBX (kept by the function) points the chain stub at the mailbox.
    vm.machine.cpu.regs_mut().rbx = s.mailbox.unwrap_or(0);
    let budget = match call.kind {
        Kind::Task => TASK_BUDGET,
        Kind::LiveRestore(_) => Duration::from_secs(2),
        _ => core.budget,
    };
    let id = core.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    s.open = Some(open_call(call, id, budget, top));
    Ok(id)
}

/// Chain a storage_callv behind the clean-up of the open call (answered at storage_return,
/// its clean-up not begun): write the new call's inputs where the paused function's stack
/// is not, and the entry stub's registers for it into the mailbox; when the function returns,
/// the chain stub enters the new call directly. One KVM_RUN then does both, and the exit that
/// reported the function's return is gone. Ok(Err(call)) when it cannot be chained (no
/// mailbox, no room on the stack, not a storage_callv): run the clean-up first.
fn begin_chained(core: &Core, s: &mut Served, call: Call) -> Result<Result<u64, Call>, String> {
    let bases = (s.vm.machine.cpu.fs_base(), s.vm.machine.cpu.gs_base());
    let (Some(mailbox), Some((r10, r12, r13))) = (s.mailbox, s.entry.stub_regs(bases.0, bases.1))
    else {
        return Ok(Err(call));
    };
    let Some((prev_func, prev_top)) = s
        .open
        .as_ref()
        .filter(|p| matches!(p.kind, Kind::Func))
        .map(|p| (p.func, p.top))
    else {
        return Ok(Err(call));
    };
    if !matches!(call.kind, Kind::Func) {
        return Ok(Err(call));
    }
    check_allowed(s, &call)?;
    // The paused function may still use its stack (and red zone) and its inputs.
    let rsp = s.vm.machine.cpu.regs().rsp;
    let live = (rsp.wrapping_sub(128), prev_top.max(rsp));
    let overlaps = |lo: u64, hi: u64| lo < hi && lo < live.1 && live.0 < hi;
    let mut top = standard_top(&s.entry);
    if overlaps(inputs_low(top, &call.inputs), top) {
        top = live.0.wrapping_sub(256) & !15;
    }
    let floor = s.entry.rsp.wrapping_sub(3 << 20);
    let low = inputs_low(top, &call.inputs);
    if top > s.entry.rsp || low < floor || overlaps(low, top) {
        return Ok(Err(call));
    }
    let (bufs, _) = write_inputs(&mut s.vm, top, &call.inputs)?;
    let regs = [
        1,
        bufs.wrapping_sub(256) & !15,
        call.func,
        r10,
        r12,
        r13,
        call.inputs.len() as u64,
        bufs,
        call.dstlen,
    ];
    let mut m = [0u8; edgevm_abi::cpu::CHAIN_MAILBOX_BYTES];
    for (i, v) in regs.iter().enumerate() {
        m[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    s.vm.machine
        .mem
        .write(mailbox, &m)
        .map_err(|e| format!("cannot write the chain mailbox: {e}"))?;
    let id = core.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let mut o = open_call(call, id, core.budget, top);
    o.prev = Some(prev_func);
    o.chained_at = Some(Instant::now());
    o.cleanup_deadline = true;
    o.restart = Some((CLEANUP_BUDGET.min(core.budget), "storage call cleanup"));
    s.open = Some(o);
    Ok(Ok(id))
}

/// How a call ended.
struct Finished {
    func: u64,
    /// A storage_callv (whose caller gets the result as is, with messages for failures).
    func_call: bool,
    /// Ok(Some(result)) once storage_return was called; Ok(None) if the function returned
    /// without calling it.
    result: Result<Option<Returned>, String>,
}

enum Drive {
    /// The slice is over; the call goes on later.
    Preempted,
    /// storage_return: the caller's answer; the function cleans up later.
    Answered(Returned),
    /// The call ended.
    Finished(Finished),
}

/// While a call is chained behind a clean-up: whether the clean-up still runs (the chain
/// stub has not taken the mailbox yet).
fn in_prev(vm: &MainVm, o: &Open, mailbox: Option<u64>) -> bool {
    match (o.prev, mailbox) {
        (Some(_), Some(m)) => vm.machine.mem.read_u64(m).is_ok_and(|f| f != 0),
        _ => false,
    }
}

/// The clean-up a call was chained behind failed (or returned without the chain stub): log
/// it, and enter the chained call from its mailbox as a fresh call.
fn abandon_prev(
    vm: &mut MainVm,
    entry: &EntryState,
    o: &mut Open,
    mailbox: u64,
    why: Option<String>,
) -> Result<(), String> {
    if let Some(e) = why {
        let what = describe(vm, o.prev.unwrap_or(0));
        vm.printer.log(&format!(
            "storage function {what} failed after storage_return: {e}"
        ));
        vm.restore_user_mode(entry);
    }
    let m = vm
        .machine
        .mem
        .read_vec(mailbox, edgevm_abi::cpu::CHAIN_MAILBOX_BYTES)
        .map_err(|e| format!("cannot read the chain mailbox: {e}"))?;
    let w = |i: usize| u64::from_le_bytes(m[8 * i..8 * i + 8].try_into().unwrap_or_default());
    vm.machine
        .mem
        .write_u64(mailbox, 0)
        .map_err(|e| format!("cannot clear the chain mailbox: {e}"))?;
    vm.enter_handler(entry, w(2), w(1), &[w(6), w(7), w(8)])
        .map_err(|e| e.to_string())?;
    vm.machine.cpu.regs_mut().rbx = mailbox;
    o.prev = None;
    o.cleanup_deadline = false;
    o.restart = Some((o.budget, "storage call (max_storage_time)"));
    Ok(())
}

/// Run the open call on this thread (`slice`: at most that long) until it ends, or until
/// storage_return (`early`, for a storage_callv).
fn drive(core: &Core, s: &mut Served, slice: Option<Duration>, early: bool) -> Drive {
    let Served {
        vm,
        entry,
        open,
        mailbox,
        ..
    } = s;
    let mailbox = *mailbox;
    let Some(o) = open.as_mut() else {
        return Drive::Finished(Finished {
            func: 0,
            func_call: false,
            result: Ok(None),
        });
    };
    vm.set_slice(slice);
    let armed = if o.restart.is_none() {
        vm.arm_timer()
    } else {
        Ok(())
    };
    let out = match armed {
        Err(e) => Err(e.to_string()),
        Ok(()) => loop {
            if let Some((d, what)) = o.restart.take() {
                if let Err(e) = vm.start_deadline(d, what) {
                    break Err(e.to_string());
                }
            }
            let ev = vm.run_until_event();
            if o.prev.is_some() {
                // Chained behind a clean-up: whose event is this?
                let m = mailbox.unwrap_or(0);
                if in_prev(vm, o, mailbox) {
                    let why = match ev {
                        Ok(Event::Preempted) if slice.is_some() => {
                            vm.pause_deadline();
                            return Drive::Preempted;
                        }
                        Ok(Event::Preempted) => continue,
                        Err(crate::vm::RunError::Timeout { .. }) => {
                            let ran = o.chained_at.map_or(CLEANUP_BUDGET, |t| t.elapsed());
                            if ran < CLEANUP_BUDGET {
                                o.restart = Some((CLEANUP_BUDGET - ran, "storage call cleanup"));
                                continue;
                            }
                            Some(format!(
                                "storage call cleanup timed out ({:.1}s)",
                                CLEANUP_BUDGET.as_secs_f64()
                            ))
                        }
                        Err(e) => Some(e.to_string()),
                        Ok(Event::Returned) => None,
                        Ok(Event::Exited(c)) => Some(format!(
                            "the storage program exited (status {c}) during a storage call"
                        )),
                        Ok(Event::Hypercall(api::STORAGE_RETURN | api::STORAGE_NORETURN)) => {
                            Some("storage_return called twice".into())
                        }
                        Ok(Event::Hypercall(num)) => {
                            other_hypercall(core, vm, num);
                            continue;
                        }
                    };
                    if let Err(e) = abandon_prev(vm, entry, o, m, why) {
                        break Err(e);
                    }
                    continue;
                }
                // The chain stub took the call: the clean-up is over.
                o.prev = None;
                if o.cleanup_deadline {
                    o.cleanup_deadline = false;
                    let ran = o.chained_at.map_or(Duration::ZERO, |t| t.elapsed());
                    if ran >= o.budget {
                        break Err(crate::vm::RunError::Timeout {
                            what: "storage call (max_storage_time)",
                            limit: o.budget,
                        }
                        .to_string());
                    }
                    if matches!(ev, Err(crate::vm::RunError::Timeout { .. })) {
                        o.restart = Some((o.budget - ran, "storage call (max_storage_time)"));
                        continue;
                    }
                    // The deadline is re-armed for this call only if it runs on.
                    o.restart = Some((o.budget - ran, "storage call (max_storage_time)"));
                }
            }
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => break Err(e.to_string()),
            };
            match ev {
                Event::Preempted if slice.is_some() => {
                    if let Some((d, what)) = o.restart.take() {
                        // Keep the new deadline for when it resumes.
                        let _ = vm.start_deadline(d, what);
                    }
                    vm.pause_deadline();
                    return Drive::Preempted;
                }
                Event::Preempted => {}
                Event::Returned => break Ok(()),
                Event::Exited(c) => {
                    break Err(format!(
                        "the storage program exited (status {c}) during a storage call"
                    ))
                }
                Event::Hypercall(n @ (api::STORAGE_RETURN | api::STORAGE_NORETURN)) => {
                    let (p, l) = {
                        let r = vm.machine.cpu.regs();
                        (r.rdi, r.rsi)
                    };
                    if o.result.is_some() {
                        break Err("storage_return called twice".into());
                    }
                    if let Kind::LiveRestore(state) = &o.kind {
                        // on_live_restore names the destination: copy the carried state there.
                        let n = (l as usize).min(state.len());
                        if let Err(e) = vm.machine.mem.write(p, &state[..n]) {
                            break Err(format!(
                                "bad destination passed to storage_return in on_live_restore: {e}"
                            ));
                        }
                        o.result = Some(Returned {
                            data: Vec::new(),
                            len: n as u64,
                        });
                        vm.machine.cpu.regs_mut().rax = 0;
                        continue;
                    }
                    // Only what fits the caller's buffer is copied.
                    let take = l.min(o.dstlen).min(MAX_RESULT);
                    let data = if p == 0 || take == 0 {
                        Vec::new()
                    } else {
                        match vm.machine.mem.read_vec(p, take as usize) {
                            Ok(d) => d,
                            Err(e) => {
                                break Err(format!("bad pointer passed to storage_return: {e}"))
                            }
                        }
                    };
                    let r = Returned { data, len: l };
                    o.result = Some(r.clone());
                    if n == api::STORAGE_NORETURN {
                        break Ok(());
                    }
                    // Let the function finish (clean up) within 1 s more.
                    vm.machine.cpu.regs_mut().rax = 0;
                    o.restart = Some((CLEANUP_BUDGET, "storage call cleanup"));
                    if early && matches!(o.kind, Kind::Func) {
                        // The caller goes on with its answer now; the clean-up runs later.
                        vm.stop_deadline();
                        vm.printer.flush();
                        return Drive::Answered(r);
                    }
                }
                Event::Hypercall(num) => other_hypercall(core, vm, num),
            }
        },
    };
    vm.stop_deadline();
    vm.printer.flush();
    if out.is_err() {
        // A crash leaves the vCPU in the CPL0 exception stub: the next call starts in user mode.
        vm.restore_user_mode(entry);
    }
    if let (Some(m), true) = (mailbox, o.prev.is_some()) {
        // A chained call that never started is dropped with this one.
        let _ = vm.machine.mem.write_u64(m, 0);
    }
    let Some(o) = open.take() else {
        return Drive::Finished(Finished {
            func: 0,
            func_call: false,
            result: Ok(None),
        });
    };
    let result = match out {
        Ok(()) => Ok(o.result),
        // The caller already has its data if storage_return happened before a late failure.
        Err(e) if o.result.is_some() => {
            let what = describe(vm, o.func);
            vm.printer.log(&format!(
                "storage function {what} failed after storage_return: {e}"
            ));
            Ok(o.result)
        }
        Err(e) => Err(e),
    };
    Drive::Finished(Finished {
        func: o.func,
        func_call: matches!(o.kind, Kind::Func),
        result,
    })
}

/// Hypercalls a storage function may make besides storage_return.
fn other_hypercall(core: &Core, vm: &mut MainVm, num: u32) {
    match num {
        api::STORAGE_CALLV => {
            // Deadlock guard: storage cannot call itself.
            vm.machine.cpu.regs_mut().rax = u64::MAX;
        }
        api::STORAGE_TASK => {
            let r = task_hypercall(vm, |f, d, st, pe| core.tasks.add(core, f, d, st, pe));
            vm.machine.cpu.regs_mut().rax = r;
        }
        api::STOP_STORAGE_TASK => {
            let id = vm.machine.cpu.regs().rdi;
            vm.machine.cpu.regs_mut().rax = u64::from(core.tasks.stop(id));
        }
        num => vm.unsupported_call(num),
    }
}

/// Finish what is left in the storage VM (no caller waits for it), on this thread.
fn settle(core: &Core, s: &mut Served) {
    while s.open.is_some() {
        if let Drive::Finished(f) = drive(core, s, None, false) {
            if let Err(e) = f.result {
                let what = describe(&s.vm, f.func);
                s.vm.printer.log(&format!(
                    "storage function {what} failed after its caller went away: {e}"
                ));
            }
        }
    }
}

/// Boot the storage VM on its own thread and return a handle once it reached
/// wait_for_requests(). The thread then serves the jobs (tasks, boot-time calls, live
/// updates) and finishes calls left unfinished when nobody else comes.
pub fn start(
    opts: VmOptions,
    max_storage_time: Duration,
    queue_timeout: Duration,
) -> Result<StorageHandle, String> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<Arc<Core>, String>>(1);
    let name = opts.name.clone();
    let tasks = Arc::new(Tasks {
        state: Mutex::new(TaskState::default()),
        changed: Condvar::new(),
    });
    let tasks2 = tasks.clone();
    std::thread::Builder::new()
        .name(format!("storage:{name}"))
        .spawn(move || {
            let (mut vm, report) = match MainVm::boot(opts) {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("storage VM: {e}")));
                    return;
                }
            };
            if let BootOutcome::Exited(code) = report.outcome {
                let _ = ready_tx.send(Err(format!(
                    "storage VM: the program exited with status {code} before calling wait_for_requests()"
                )));
                return;
            }
            // The request-entry stub restores FPU state from the FXSAVE area: give it this
            // VM's own.
            let xsave = vm.install_entry_fpu().unwrap_or(false);
            let entry = vm.entry_state(xsave);
            let exits = program_exits(&vm);
            let core = Arc::new(Core {
                turn: Mutex::new(TurnState::default()),
                served: Mutex::new(Served {
                    allowed: vm.storage_allowed.clone(),
                    // In the gap between the frozen frame and the calls' inputs.
                    mailbox: Some(entry.rsp.wrapping_sub(2048) & !63),
                    vm,
                    entry,
                    open: None,
                    left_at: Instant::now(),
                }),
                jobs: tx,
                tasks: tasks2,
                budget: max_storage_time,
                next_id: AtomicU64::new(0),
                exits: AtomicU64::new(exits),
                dozing: std::sync::atomic::AtomicBool::new(true),
            });
            let _ = ready_tx.send(Ok(core.clone()));
            serve(core, rx)
        })
        .map_err(|e| format!("cannot start storage thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(core)) => {
            let (t, c) = (tasks.clone(), core.clone());
            std::thread::Builder::new()
                .name(format!("tasks:{name}"))
                .spawn(move || t.run(c))
                .map_err(|e| format!("cannot start the storage task thread: {e}"))?;
            Ok(StorageHandle {
                core,
                timeout: max_storage_time + queue_timeout,
                _alive: Arc::new(Alive(tasks)),
            })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the storage VM thread ended during boot".into()),
    }
}

/// The storage thread: run the jobs handed to it (with the turn), finish calls left
/// unfinished when nobody comes, and end once every handle is gone. While calls come it
/// looks every 20 ms for a clean-up left behind for 10 ms; after 2 s without a job it dozes
/// (500 ms), and a holder that leaves a clean-up behind hands it the turn instead.
fn serve(core: Arc<Core>, rx: Receiver<Job>) {
    let mut active_until = Instant::now();
    loop {
        let dozing = Instant::now() >= active_until;
        core.dozing.store(dozing, Ordering::Relaxed);
        let wait = Duration::from_millis(if dozing { 500 } else { 20 });
        match rx.recv_timeout(wait) {
            Ok(job) => {
                let turn = Turn(core.clone());
                run_job(&core, job);
                drop(turn);
                active_until = Instant::now() + Duration::from_secs(2);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if core.tasks.is_stopped() {
                    // The program is gone: run the last clean-up before the VM goes.
                    finish_left_clean_up(&core);
                    return;
                }
                // A clean-up (or a call) left unfinished, and nobody came since: finish it.
                let stale = core.served.try_lock().is_ok_and(|s| {
                    s.open.is_some() && s.left_at.elapsed() >= Duration::from_millis(10)
                });
                if !stale {
                    continue;
                }
                finish_left_clean_up(&core);
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Finish a clean-up (or call) left unfinished in the storage VM, if nobody holds the turn.
fn finish_left_clean_up(core: &Arc<Core>) {
    if let Some(turn) = core.try_turn() {
        run_job(
            core,
            Job {
                call: None,
                reply: None,
            },
        );
        drop(turn);
    }
}

/// Run a job on the storage thread (which holds the turn).
fn run_job(core: &Core, job: Job) {
    let Job { call, reply } = job;
    let mut s = core.lock_served();
    let e0 = program_exits(&s.vm);
    if let Some(mut call) = call {
        let task = matches!(call.kind, Kind::Task);
        let func = call.func;
        let r = match call.kind {
            Kind::LiveUpdate | Kind::LiveRestore(_) => {
                let h = s.vm.handlers;
                call.func = if matches!(call.kind, Kind::LiveUpdate) {
                    h.on_live_update
                } else {
                    h.on_live_restore
                };
                if call.func == 0 {
                    None
                } else {
                    Some(call)
                }
            }
            _ => Some(call),
        };
        let r = match r {
            None => Ok(None),
            Some(call) => {
                let mut started = Started::No(call);
                serve_turn(core, &mut s, &mut started, None, true)
                    .unwrap_or_else(|| Err("internal error: a storage job was preempted".into()))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(r);
        } else if let (true, Err(e)) = (task, r) {
            let what = describe(&s.vm, func);
            s.vm.printer
                .log(&format!("storage task {what} failed: {e}"));
        }
    }
    // Nobody waits for the clean-up here.
    settle(core, &mut s);
    let exits = program_exits(&s.vm).wrapping_sub(e0);
    drop(s);
    core.exits.fetch_add(exits, Ordering::Relaxed);
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

/// `sys_storage_task(func, data, len, start_ms, period_ms)` in `vm`: read the arguments and
/// hand them to `add`; the return value for RAX (the id, or -1 with a log line).
pub(crate) fn task_hypercall(
    vm: &mut MainVm,
    add: impl FnOnce(u64, Vec<u8>, Duration, Duration) -> Result<u64, String>,
) -> u64 {
    let r = *vm.machine.cpu.regs();
    let (func, data, len, start, period) = (r.rdi, r.rsi, r.rdx, r.rcx, r.r8);
    let result = if len > MAX_INPUT as u64 {
        Err(format!("task data of {len} bytes (at most {MAX_INPUT})"))
    } else if func == 0 {
        Err("no task function".into())
    } else {
        let bytes = if len == 0 {
            Ok(Vec::new())
        } else {
            vm.machine
                .mem
                .read_vec(data, len as usize)
                .map_err(|e| format!("bad task data pointer: {e}"))
        };
        bytes.and_then(|b| {
            add(
                func,
                b,
                Duration::from_millis(start),
                Duration::from_millis(period),
            )
        })
    };
    match result {
        Ok(id) => id,
        Err(e) => {
            vm.printer.log(&format!("storage_task refused: {e}"));
            u64::MAX
        }
    }
}

/// `storage_callv(func, n, bufs, dst, dstlen)`'s arguments (RDI..R8) read from `vm`:
/// Ok(Some((func, inputs, dst, dstlen))), Ok(None) when the call is refused with -1 (as in the
/// reference: more than 64 buffers, or a result buffer that wraps around; logged), Err(what)
/// for bad pointers or too much input.
#[allow(clippy::type_complexity)]
pub(crate) fn read_callv(vm: &mut MainVm) -> Result<Option<(u64, Vec<Vec<u8>>, u64, u64)>, String> {
    let r = *vm.machine.cpu.regs();
    let (func, n, bufs, dst, dstlen) = (r.rdi, r.rsi, r.rdx, r.rcx, r.r8);
    if n > MAX_BUFFERS || dst.checked_add(dstlen).is_none() {
        vm.printer.log(&format!(
            "storage_callv refused: {n} buffers (at most {MAX_BUFFERS}), result buffer {dst:#x}+{dstlen:#x}"
        ));
        return Ok(None);
    }
    let mut inputs = Vec::with_capacity(n as usize);
    let mut total = 0usize;
    for i in 0..n {
        let d = vm
            .machine
            .mem
            .read_vec(bufs.wrapping_add(16 * i), 16)
            .map_err(|e| e.to_string())?;
        let p = u64::from_le_bytes(d[..8].try_into().unwrap_or_default());
        let l = u64::from_le_bytes(d[8..].try_into().unwrap_or_default()) as usize;
        total = total.saturating_add(l);
        if total > MAX_INPUT {
            return Err(format!("more than {MAX_INPUT} bytes of input"));
        }
        inputs.push(vm.machine.mem.read_vec(p, l).map_err(|e| e.to_string())?);
    }
    if dst != 0 && !vm.machine.mem.contains(dst, dstlen as usize) {
        return Err(format!(
            "result buffer {dst:#x}+{dstlen:#x} is outside guest memory"
        ));
    }
    Ok(Some((func, inputs, dst, dstlen)))
}

/// Copy a storage call's answer into the caller `vm` and compute storage_callv's return
/// value, as in the reference: with a NULL dst, the length the storage function passed to
/// storage_return(); otherwise that length capped to dstlen, with that many bytes copied
/// (none when it passed NULL data); -1 when it returned without calling storage_return().
/// Err((message, bad_arguments)) for a refused or failed call (allow-list, crash,
/// max_storage_time), which fails the caller.
pub(crate) fn finish_callv(
    vm: &mut MainVm,
    dst: u64,
    dstlen: u64,
    res: Result<Option<Returned>, String>,
) -> Result<u64, (String, bool)> {
    match res {
        Ok(None) => Ok(u64::MAX),
        Ok(Some(ret)) if dst == 0 => Ok(ret.len),
        Ok(Some(ret)) => {
            let n = ret.data.len().min(dstlen as usize);
            vm.machine
                .mem
                .write(dst, &ret.data[..n])
                .map_err(|e| (format!("bad arguments passed to storage_callv: {e}"), true))?;
            Ok(ret.len.min(dstlen).min(MAX_RESULT))
        }
        Err(e) => Err((format!("storage call failed: {e}"), false)),
    }
}
