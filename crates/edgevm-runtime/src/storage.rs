//! The storage VM: one long-lived VM per program (when `storage` is on) that keeps mutable
//! state across requests. It boots from the same program (KVM_TYPE=storage), runs `main()` to
//! `wait_for_requests()`, and then serves `storage_call()`s from request VMs, one at a time
//! (calls are serialized through one queue), on its own thread. It is never reset.
//!
//! A call: the request VM's `storage_callv(func, n, bufs, dst, dstlen)` exits to the host, which
//! copies the input buffers onto the storage VM's stack and calls `func(n, bufs, dstlen)` there
//! through the request-entry stub. The function's `storage_return(data, len)` exits; the host
//! keeps the data, resumes the function (at most 1 s more) so it can clean up and return, then
//! copies at most `dstlen` bytes back into the request VM. `storage_noreturn` is not resumed.
//! Both programs are the same ELF at the same addresses, so function pointers are valid in both
//! VMs. A call that crashes or times out fails the caller (-1); the storage VM keeps its state
//! and serves the next call from a fresh entry.
//!
//! Tasks (`sys_storage_task(func, data, len, start_ms, period_ms)`, from request VMs or from
//! storage itself): `func(copy_of_data, len)` runs in the storage VM through the same queue as
//! calls, with nobody waiting for it (15 s budget, as the reference). With start = period = 0
//! it is queued at once (id 0); otherwise a scheduler thread queues it after `start_ms` and
//! then every `period_ms` (0: once), and the id it returns (1, 2, ...) stops it with
//! `stop_storage_task(id)`. At most [`MAX_TIMERS`] scheduled tasks per program, data at most
//! [`MAX_INPUT`] bytes. A task that fails is logged; storage keeps serving.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
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

/// What a queued call does.
enum Kind {
    /// storage_callv from a request.
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

struct Call {
    kind: Kind,
    func: u64,
    inputs: Vec<Vec<u8>>,
    dstlen: u64,
    reply: Sender<Result<Option<Returned>, String>>,
    /// The caller already has its answer (sent at storage_return, before the clean-up).
    replied: std::cell::Cell<bool>,
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
    tx: Sender<Call>,
    timeout: Duration,
    tasks: Arc<Tasks>,
    /// Stops the task scheduler when the last handle goes (e.g. after a live update).
    _alive: Arc<Alive>,
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
    /// Queue `func(data)` now (id 0) or schedule it (id >= 1); Err(why) if refused.
    fn add(
        &self,
        tx: &Sender<Call>,
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
            tx.send(task_call(func, data))
                .map_err(|_| "the storage VM is gone".to_string())?;
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
    fn run(self: Arc<Self>, tx: Sender<Call>) {
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
                let call = task_call(t.func, t.data.as_ref().clone());
                if t.period.is_zero() {
                    st.timers.remove(&id);
                } else {
                    // The next run counts from this one; a period shorter than a run does not
                    // pile up runs (one is queued per period at most).
                    t.due = now + t.period;
                }
                if tx.send(call).is_err() {
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

fn task_call(func: u64, data: Vec<u8>) -> Call {
    // Nobody waits for a task: the reply goes nowhere.
    let (reply, _) = crossbeam_channel::bounded(1);
    Call {
        kind: Kind::Task,
        func,
        inputs: vec![data],
        dstlen: 0,
        reply,
        replied: Default::default(),
    }
}

impl StorageHandle {
    /// Call `func` in storage with `inputs`. `Ok(Some(r))`: the function called
    /// `storage_return` (`r.data` holds at most `dstlen` bytes); `Ok(None)`: it returned without
    /// doing so (the caller gets -1, as in the reference). `Err`: the call was refused (not in
    /// the STORAGE_ALLOW list) or failed (crash, max_storage_time, exit): the request fails.
    pub fn call(
        &self,
        func: u64,
        inputs: Vec<Vec<u8>>,
        dstlen: u64,
        wait: Option<Duration>,
    ) -> Result<Option<Returned>, String> {
        self.send(func, inputs, dstlen)?.wait(wait)
    }

    /// Queue a call of `func` (calls run in the order they were queued) without waiting for
    /// it; [`PendingCall::wait`] gets the answer, on any thread.
    pub fn send(
        &self,
        func: u64,
        inputs: Vec<Vec<u8>>,
        dstlen: u64,
    ) -> Result<PendingCall, String> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Call {
                kind: Kind::Func,
                func,
                inputs,
                dstlen,
                reply,
                replied: Default::default(),
            })
            .map_err(|_| "the storage VM is gone".to_string())?;
        Ok(PendingCall {
            rx,
            timeout: self.timeout,
        })
    }
}

/// A queued storage call (see [`StorageHandle::send`]).
pub struct PendingCall {
    rx: Receiver<Result<Option<Returned>, String>>,
    timeout: Duration,
}

impl PendingCall {
    /// The answer, if it comes within `d`; None if it did not (the call stays pending).
    pub fn wait_up_to(&self, d: Duration) -> Option<Result<Option<Returned>, String>> {
        match self.rx.recv_timeout(d) {
            Ok(r) => Some(r),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Some(Err("the storage VM is gone".into()))
            }
        }
    }

    /// Wait for the answer. The storage VM applies max_storage_time itself; the caller's own
    /// deadline (`wait`: what is left of max_request_time) bounds how long it waits in the
    /// queue and for the call.
    pub fn wait(self, wait: Option<Duration>) -> Result<Option<Returned>, String> {
        let limit = wait.map_or(self.timeout, |w| w.min(self.timeout));
        match self.rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(_) => Err(format!(
                "storage call did not finish within {:.1}s (storage is busy or the call is slow)",
                limit.as_secs_f64()
            )),
        }
    }
}

impl StorageHandle {
    /// `sys_storage_task` from a request VM: see the module documentation.
    pub fn task(
        &self,
        func: u64,
        data: Vec<u8>,
        start: Duration,
        period: Duration,
    ) -> Result<u64, String> {
        self.tasks.add(&self.tx, func, data, start, period)
    }

    /// `stop_storage_task(id)`: true if the task was scheduled and is now stopped.
    pub fn stop_task(&self, id: u64) -> bool {
        self.tasks.stop(id)
    }

    fn special(&self, kind: Kind) -> Result<Option<Returned>, String> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Call {
                kind,
                func: 0,
                inputs: Vec::new(),
                dstlen: u64::MAX,
                reply,
                replied: Default::default(),
            })
            .map_err(|_| "the storage VM is gone".to_string())?;
        rx.recv_timeout(self.timeout)
            .map_err(|_| "timed out waiting for the storage VM".to_string())?
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

/// Boot the storage VM on its own thread (it lives there and serves the queue) and return a
/// handle once it reached wait_for_requests().
pub fn start(
    opts: VmOptions,
    max_storage_time: Duration,
    queue_timeout: Duration,
) -> Result<StorageHandle, String> {
    let (tx, rx) = crossbeam_channel::unbounded::<Call>();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let name = opts.name.clone();
    let tasks = Arc::new(Tasks {
        state: Mutex::new(TaskState::default()),
        changed: Condvar::new(),
    });
    let (tasks2, tx2) = (tasks.clone(), tx.clone());
    std::thread::Builder::new()
        .name(format!("storage:{name}"))
        .spawn(move || {
            let (vm, report) = match MainVm::boot(opts) {
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
            let allowed = vm.storage_allowed.clone();
            let _ = ready_tx.send(Ok(()));
            let ctx = Ctx {
                tasks: tasks2,
                tx: tx2,
            };
            serve(vm, allowed, max_storage_time, rx, ctx)
        })
        .map_err(|e| format!("cannot start storage thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => {
            let (t, txs) = (tasks.clone(), tx.clone());
            std::thread::Builder::new()
                .name(format!("tasks:{name}"))
                .spawn(move || t.run(txs))
                .map_err(|e| format!("cannot start the storage task thread: {e}"))?;
            Ok(StorageHandle {
                tx,
                timeout: max_storage_time + queue_timeout,
                _alive: Arc::new(Alive(tasks.clone())),
                tasks,
            })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the storage VM thread ended during boot".into()),
    }
}

/// What storage code itself reaches: its own task list, for tasks scheduled from storage.
/// Its Sender keeps the queue open, so the storage thread ends when the last handle is gone
/// (`tasks.stopped`) and nothing is queued (see `serve`).
struct Ctx {
    tasks: Arc<Tasks>,
    tx: Sender<Call>,
}

fn serve(mut vm: MainVm, allowed: Vec<u64>, budget: Duration, rx: Receiver<Call>, ctx: Ctx) {
    // The request-entry stub restores FPU state from the FXSAVE area: give it this VM's own.
    let xsave = vm.install_entry_fpu().unwrap_or(false);
    let entry = vm.entry_state(xsave);
    loop {
        // Our own Sender (for tasks scheduled from storage) keeps the queue open: end when
        // every handle is gone and nothing is queued.
        let mut call = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(c) => c,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if ctx
                    .tasks
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stopped
                {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        match &call.kind {
            Kind::Func => {}
            Kind::Task => {
                let r = if !allowed.is_empty() && !allowed.contains(&call.func) {
                    Err("it is not allowed (not in the program's STORAGE_ALLOW list)".to_string())
                } else {
                    run_call(&mut vm, &entry, TASK_BUDGET, &call, &ctx)
                };
                if let Err(e) = r {
                    vm.printer.log(&format!(
                        "storage task {} failed: {e}",
                        describe(&vm, call.func)
                    ));
                }
                continue;
            }
            Kind::LiveUpdate | Kind::LiveRestore(_) => {
                let h = vm.handlers;
                let (f, budget2) = match call.kind {
                    Kind::LiveUpdate => (h.on_live_update, budget),
                    _ => (h.on_live_restore, Duration::from_secs(2)),
                };
                if f == 0 {
                    let _ = call.reply.send(Ok(None));
                    continue;
                }
                call.func = f;
                let r = run_call(&mut vm, &entry, budget2, &call, &ctx);
                let _ = call.reply.send(r);
                continue;
            }
        }
        let r = if !allowed.is_empty() && !allowed.contains(&call.func) {
            Err(format!(
                "storage function {} is not allowed (not in the program's STORAGE_ALLOW list)",
                describe(&vm, call.func)
            ))
        } else {
            run_call(&mut vm, &entry, budget, &call, &ctx)
                .map_err(|e| format!("storage function {}: {e}", describe(&vm, call.func)))
        };
        if call.replied.get() {
            // The caller had its data at storage_return; a later failure was logged.
            continue;
        }
        match r {
            Ok(Some(data)) => {
                let _ = call.reply.send(Ok(Some(data)));
            }
            Ok(None) => {
                vm.printer.log(&format!(
                    "storage function {} returned without calling storage_return(): the caller gets -1",
                    describe(&vm, call.func)
                ));
                let _ = call.reply.send(Ok(None));
            }
            Err(e) => {
                vm.printer.log(&format!("storage call failed: {e}"));
                let _ = call.reply.send(Err(e));
            }
        }
    }
}

/// `name (0x...)` of a storage function, or its address alone.
fn describe(vm: &MainVm, func: u64) -> String {
    match vm.elf.symbols.lookup(func) {
        Some((name, 0)) => format!("'{name}' ({func:#x})"),
        Some((name, off)) => format!("{func:#x} ({name}+{off:#x})"),
        None => format!("{func:#x}"),
    }
}

/// Run one call. Ok(Some(result)) once storage_return was called (the function is then let
/// finish, except after storage_noreturn); Ok(None) if it returned without calling it.
fn run_call(
    vm: &mut MainVm,
    entry: &EntryState,
    budget: Duration,
    call: &Call,
    ctx: &Ctx,
) -> Result<Option<Returned>, String> {
    // Inputs on the stack: data blocks, then the virtbuffer array.
    // Guest-controlled stack pointer: wrap, the writes below are bounds-checked.
    let mut sp = entry.rsp.wrapping_sub(4096) & !15;
    let mut descs = Vec::with_capacity(call.inputs.len() * 16);
    for inp in &call.inputs {
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
    let bufs = sp;
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
    vm.enter_handler(entry, call.func, bufs.wrapping_sub(256), &args)
        .map_err(|e| e.to_string())?;
    vm.start_deadline(budget, "storage call (max_storage_time)")
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut result: Option<Returned> = None;
    let out = loop {
        let ev = match vm.run_until_event() {
            Ok(ev) => ev,
            Err(e) => break Err(e.to_string()),
        };
        match ev {
            // Storage calls run without a time slice.
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
                if result.is_some() {
                    break Err("storage_return called twice".into());
                }
                if let Kind::LiveRestore(state) = &call.kind {
                    // on_live_restore names the destination: copy the carried state there.
                    let n = (l as usize).min(state.len());
                    if let Err(e) = vm.machine.mem.write(p, &state[..n]) {
                        break Err(format!(
                            "bad destination passed to storage_return in on_live_restore: {e}"
                        ));
                    }
                    result = Some(Returned {
                        data: Vec::new(),
                        len: n as u64,
                    });
                    vm.machine.cpu.regs_mut().rax = 0;
                    continue;
                }
                // Only what fits the caller's buffer is copied.
                let take = l.min(call.dstlen).min(MAX_RESULT);
                let data = if p == 0 || take == 0 {
                    Vec::new()
                } else {
                    match vm.machine.mem.read_vec(p, take as usize) {
                        Ok(d) => d,
                        Err(e) => break Err(format!("bad pointer passed to storage_return: {e}")),
                    }
                };
                result = Some(Returned { data, len: l });
                if n == api::STORAGE_NORETURN {
                    break Ok(());
                }
                if matches!(call.kind, Kind::Func) {
                    // The caller goes on with its answer now, while the function cleans up
                    // here (the next storage call waits for that anyway): one exit less on
                    // the request's path.
                    if let Some(r) = &result {
                        let _ = call.reply.try_send(Ok(Some(r.clone())));
                        call.replied.set(true);
                    }
                }
                // Let the function finish (clean up) within 1 s more.
                vm.machine.cpu.regs_mut().rax = 0;
                let left = budget
                    .saturating_sub(t.elapsed())
                    .max(Duration::from_secs(1));
                let _ = vm.start_deadline(left.min(Duration::from_secs(1)), "storage call cleanup");
            }
            Event::Hypercall(api::STORAGE_CALLV) => {
                // Deadlock guard: storage cannot call itself.
                vm.machine.cpu.regs_mut().rax = u64::MAX;
            }
            Event::Hypercall(api::STORAGE_TASK) => {
                let r = task_hypercall(vm, |f, d, st, pe| ctx.tasks.add(&ctx.tx, f, d, st, pe));
                vm.machine.cpu.regs_mut().rax = r;
            }
            Event::Hypercall(api::STOP_STORAGE_TASK) => {
                let id = vm.machine.cpu.regs().rdi;
                vm.machine.cpu.regs_mut().rax = u64::from(ctx.tasks.stop(id));
            }
            Event::Hypercall(num) => vm.unsupported_call(num),
        }
    };
    vm.stop_deadline();
    vm.printer.flush();
    if out.is_err() {
        // A crash leaves the vCPU in the CPL0 exception stub: the next call starts in user mode.
        vm.restore_user_mode(entry);
    }
    match out {
        Ok(()) => Ok(result),
        // The caller already has its data if storage_return happened before a late failure.
        Err(e) if result.is_some() => {
            vm.printer.log(&format!(
                "storage function failed after storage_return: {e}"
            ));
            Ok(result)
        }
        Err(e) => Err(e),
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
