//! A request's storage call ([`StorageCall`]) and what the holder of the turn does with it:
//! finish what was left, chain or begin its own call, and hand back the answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgevm_abi::api::Call as ApiCall;
use edgevm_abi::guest_abi::{GuestPtr, VirtBuffer};
use edgevm_abi::io::write_structs;
use edgevm_abi::layout;
use edgevm_abi::linux::Output;
use edgevm_kvm::Vcpu;

use super::drive::{drive, Drive, Finished, Phase};
use super::guest::task_hypercall;
use super::turn::{Queued, Turn};
use super::StorageVm;
use super::{
    describe, program_exits, Answer, Call, Core, Kind, Open, Served, StorageError, CLEANUP_BUDGET,
    CLEANUP_NOW, TASK_BUDGET,
};
use crate::vm::EntryState;

/// A storage call of a request: waiting for the turn, or running (holding it). Advance it with
/// [`StorageCall::advance`] on whichever thread runs the request; dropping it gives up its
/// place (a call already started is finished by the next holder of the turn).
pub struct StorageCall {
    pub(super) core: Arc<Core>,
    pub(super) state: CallState,
    /// How long the caller may wait for the turn at most (max_storage_time plus the queue
    /// timeout).
    pub(super) timeout: Duration,
    /// VM exits of the storage VM while this call held the turn.
    pub exits: u64,
}

pub(super) enum CallState {
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
    pub fn advance(&mut self, slice: Option<Duration>, wait: Option<Duration>) -> Option<Answer> {
        let t0 = Instant::now();
        let (turn, started) = match std::mem::replace(&mut self.state, CallState::Done) {
            CallState::Done => {
                return Some(Err(StorageError::Internal("storage call already answered")))
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
                    None => return Some(Err(StorageError::NotStarted(limit))),
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
pub(super) enum Started {
    No(Call),
    Yes(u64),
}

/// Holding the turn: finish what an earlier holder left unfinished, then run the holder's own
/// call up to its answer: at storage_return when `early` (the clean-up then runs on right away
/// if [`CLEANUP_NOW`], within the slice, or is left to the next holder, which chains its own
/// call behind it: [`begin_chained`]). With a slice, stop when it is over: None (the holder's
/// call goes on later, `started` says where it stands).
pub(super) fn serve_turn(
    core: &Core,
    s: &mut Served,
    started: &mut Started,
    slice: Option<Duration>,
    early: bool,
) -> Option<Answer> {
    let end = slice.map(|d| Instant::now() + d);
    let left = || end.map(|e| e.saturating_duration_since(Instant::now()));
    let mut answer: Option<Answer> = None;
    loop {
        let chain = answer.is_none()
            && matches!(started, Started::No(_))
            && s.open.as_ref().is_some_and(|o| {
                o.orphan && o.restart.is_some() && o.result.is_some() && o.phase == Phase::Own
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
                return Some(Err(StorageError::Internal("the storage call was lost")))
            }
        }
    }
}

/// What a holder's own call came to, as its caller sees it (logged here).
pub(super) fn finish(s: &mut Served, f: Finished) -> Answer {
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
            let e = StorageError::Function {
                what,
                source: Box::new(e),
            };
            s.vm.printer.log(&format!("storage call failed: {e}"));
            Err(e)
        }
    }
}

/// Err(message) if `call` may not run (the STORAGE_ALLOW list; logged for storage_callv).
pub(super) fn check_allowed(s: &mut Served, call: &Call) -> Result<(), StorageError> {
    if s.allowed.is_empty() || s.allowed.contains(&call.func) {
        return Ok(());
    }
    Err(match call.kind {
        Kind::Task => StorageError::TaskNotAllowed,
        _ => {
            let e = StorageError::NotAllowed {
                what: describe(&s.vm, call.func),
            };
            s.vm.printer.log(&format!("storage call failed: {e}"));
            e
        }
    })
}

/// A remote call must enter a function of the storage program (when its binary has symbols to
/// tell): a jump into the middle of one, or to data, is refused (logged).
fn check_entry(s: &mut Served, func: u64) -> Result<(), StorageError> {
    let syms = &s.vm.elf.symbols;
    if syms.is_empty() || matches!(syms.lookup(func), Some((_, 0))) {
        return Ok(());
    }
    let e = StorageError::NotAFunction {
        what: describe(&s.vm, func),
    };
    s.vm.printer
        .log(&format!("remote storage call refused: {e}"));
    Err(e)
}

/// The lowest address of `inputs` laid out below `top` (data blocks, then the virtbuffer
/// array), as [`write_inputs`] lays them out.
pub(super) fn inputs_low(top: u64, inputs: &[Vec<u8>]) -> u64 {
    let mut sp = top;
    for inp in inputs {
        sp = sp.wrapping_sub(inp.len() as u64) & !15;
    }
    sp.wrapping_sub(16 * inputs.len() as u64) & !15
}

/// Copy `inputs` below `top`: the address of the virtbuffer array and the array.
pub(super) fn write_inputs(
    vm: &mut StorageVm,
    top: u64,
    inputs: &[Vec<u8>],
) -> Result<(u64, Vec<VirtBuffer>), StorageError> {
    // Guest-controlled stack pointer: wrap, the writes below are bounds-checked.
    let mut sp = top;
    let mut descs = Vec::with_capacity(inputs.len());
    for inp in inputs {
        sp = sp.wrapping_sub(inp.len() as u64) & !15;
        vm.machine.mem.write(sp, inp).map_err(StorageError::Input)?;
        descs.push(VirtBuffer {
            data: GuestPtr::new(sp),
            len: inp.len() as u64,
        });
    }
    sp = sp.wrapping_sub(size_of_val(descs.as_slice()) as u64) & !15;
    write_structs(&mut vm.machine.mem, sp, &descs).map_err(StorageError::Input)?;
    Ok((sp, descs))
}

/// Where every call's inputs go when nothing else is live: below the frozen frame.
pub(super) fn standard_top(entry: &EntryState) -> u64 {
    entry.rsp.wrapping_sub(4096) & !15
}

/// A new [`Open`] for `call` with this id.
pub(super) fn open_call(call: Call, id: u64, budget: Duration, top: u64) -> Open {
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
        phase: Phase::Own,
    }
}

/// Start `call` in the storage VM (its arguments on the stack, the registers set, the
/// deadline to start when it runs); its id.
pub(super) fn begin(core: &Core, s: &mut Served, call: Call) -> Result<u64, StorageError> {
    if matches!(call.kind, Kind::Remote(_)) {
        check_entry(s, call.func)?;
    }
    check_allowed(s, &call)?;
    let top = standard_top(&s.entry);
    let vm = &mut s.vm;
    let (bufs, descs) = write_inputs(vm, top, &call.inputs)?;
    let args = match &call.kind {
        Kind::Func => vec![call.inputs.len() as u64, bufs, call.dstlen],
        // func(data, len): the one input block.
        Kind::Task => {
            let first = descs.first().copied().unwrap_or(VirtBuffer {
                data: GuestPtr::NULL,
                len: 0,
            });
            vec![first.data.addr(), first.len]
        }
        Kind::LiveUpdate => vec![],
        Kind::LiveRestore(state) => vec![state.len() as u64],
        Kind::Remote(args) => args.to_vec(),
    };
    if let Kind::Remote(_) = call.kind {
        // func(args...) through the keep-the-result stub (RBX: the function; RAX ends up in
        // RSI, RDX stays), which clears RBX: no call is chained behind it.
        vm.enter_handler(&s.entry, layout::CALL_KEEP, bufs.wrapping_sub(256), &args)?;
        vm.machine.cpu.regs_mut().rbx = call.func;
    } else {
        vm.enter_handler(&s.entry, call.func, bufs.wrapping_sub(256), &args)?;
        // RBX (kept by the function) points the chain stub at the mailbox.
        vm.machine.cpu.regs_mut().rbx = s.mailbox.unwrap_or(0);
    }
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
pub(super) fn begin_chained(
    core: &Core,
    s: &mut Served,
    call: Call,
) -> Result<Result<u64, Call>, StorageError> {
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
        .map_err(|source| StorageError::Mailbox {
            what: "write",
            source,
        })?;
    let id = core.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let mut o = open_call(call, id, core.budget, top);
    o.phase = Phase::Chained {
        prev: prev_func,
        at: Instant::now(),
    };
    o.restart = Some((CLEANUP_BUDGET.min(core.budget), "storage call cleanup"));
    s.open = Some(o);
    Ok(Ok(id))
}

/// Hypercalls a storage function may make besides storage_return.
pub(super) fn other_hypercall(core: &Core, vm: &mut StorageVm, call: ApiCall) {
    match call {
        ApiCall::StorageCallv { .. } => {
            // Deadlock guard: storage cannot call itself.
            vm.machine.cpu.regs_mut().rax = u64::MAX;
        }
        ApiCall::StorageTask { .. } => {
            let r = task_hypercall(vm, |f, d, st, pe| core.tasks.add(core, f, d, st, pe));
            vm.machine.cpu.regs_mut().rax = r;
        }
        ApiCall::StopStorageTask { id } => {
            vm.machine.cpu.regs_mut().rax = u64::from(core.tasks.stop(id));
        }
        call @ ApiCall::Fetch { .. } => {
            let r = vm.fetch_hypercall(call);
            vm.machine.cpu.regs_mut().rax = r;
        }
        other => vm.unsupported_call(other.num()),
    }
}

/// Finish what is left in the storage VM (no caller waits for it), on this thread.
pub(super) fn settle(core: &Core, s: &mut Served) {
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
