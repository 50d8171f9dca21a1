//! Running the storage VM's open call on the current thread until it ends, is answered
//! (storage_return) or its slice is over: one method per [`Phase`] of the call.

use std::time::{Duration, Instant};

use edgevm_abi::api::{Buf, Call as ApiCall};
use edgevm_abi::linux::Output;
use edgevm_kvm::Vcpu;

use super::calls::other_hypercall;
use super::StorageVm;
use super::{
    describe, Answer, Core, Kind, Open, Returned, Served, StorageError, CLEANUP_BUDGET, MAX_RESULT,
};
use crate::vm::{EntryState, Event, RunError};

/// Where an open call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Chained behind the clean-up of function `prev` (see `begin_chained`): that clean-up
    /// runs until the chain stub takes this call from the mailbox.
    Chained { prev: u64, at: Instant },
    /// The call's own function runs (up to storage_return, then its clean-up).
    Own,
}

/// How a call ended.
pub(super) struct Finished {
    pub(super) func: u64,
    /// A storage_callv (whose caller gets the result as is, with messages for failures).
    pub(super) func_call: bool,
    /// Ok(Some(result)) once storage_return was called; Ok(None) if the function returned
    /// without calling it.
    pub(super) result: Answer,
}

impl Finished {
    fn nothing() -> Self {
        Finished {
            func: 0,
            func_call: false,
            result: Ok(None),
        }
    }
}

pub(super) enum Drive {
    /// The slice is over; the call goes on later.
    Preempted,
    /// storage_return: the caller's answer; the function cleans up later.
    Answered(Returned),
    /// The call ended.
    Finished(Finished),
}

/// What one guest event made of the open call.
enum Step {
    /// Run the guest on.
    Continue,
    /// Stop here: the slice is over or the caller has its answer.
    Stop(Drive),
    /// The call ended (Err: failed).
    End(Result<(), StorageError>),
}

/// Runs one open call of the storage VM on this thread.
struct Driver<'a> {
    core: &'a Core,
    vm: &'a mut StorageVm,
    entry: &'a EntryState,
    mailbox: Option<u64>,
    slice: Option<Duration>,
    /// Stop at storage_return (a storage_callv whose caller waits).
    early: bool,
}

/// Run the open call on this thread (`slice`: at most that long) until it ends, or until
/// storage_return (`early`, for a storage_callv).
pub(super) fn drive(core: &Core, s: &mut Served, slice: Option<Duration>, early: bool) -> Drive {
    let Served {
        vm,
        entry,
        open,
        mailbox,
        ..
    } = s;
    let Some(o) = open.as_mut() else {
        return Drive::Finished(Finished::nothing());
    };
    let mut d = Driver {
        core,
        vm,
        entry,
        mailbox: *mailbox,
        slice,
        early,
    };
    d.vm.set_slice(slice);
    let out = match d.run(o) {
        Step::Stop(drive) => return drive,
        Step::End(out) => out,
        Step::Continue => Ok(()),
    };
    d.end(open, out)
}

impl Driver<'_> {
    fn run(&mut self, o: &mut Open) -> Step {
        if o.restart.is_none() {
            if let Err(e) = self.vm.arm_timer() {
                return Step::End(Err(e.into()));
            }
        }
        loop {
            if let Some((d, what)) = o.restart.take() {
                if let Err(e) = self.vm.start_deadline(d, what) {
                    return Step::End(Err(e.into()));
                }
            }
            let ev = self.vm.run_until_event();
            let step = match o.phase {
                Phase::Chained { prev, at } => self.chained(o, prev, at, ev),
                Phase::Own => self.own(o, ev),
            };
            if !matches!(step, Step::Continue) {
                return step;
            }
        }
    }

    /// [`Phase::Chained`]: whose event is this? The clean-up's while the chain stub has not
    /// taken the mailbox yet.
    fn chained(
        &mut self,
        o: &mut Open,
        prev: u64,
        at: Instant,
        ev: Result<Event, RunError>,
    ) -> Step {
        if self.in_prev() {
            let why = match ev {
                Ok(Event::Preempted) if self.slice.is_some() => {
                    self.vm.pause_deadline();
                    return Step::Stop(Drive::Preempted);
                }
                Ok(Event::Preempted) => return Step::Continue,
                Err(RunError::Timeout { .. }) => {
                    let ran = at.elapsed();
                    if ran < CLEANUP_BUDGET {
                        o.restart = Some((CLEANUP_BUDGET - ran, "storage call cleanup"));
                        return Step::Continue;
                    }
                    Some(StorageError::CleanupTimeout(CLEANUP_BUDGET))
                }
                Err(e) => Some(e.into()),
                Ok(Event::Returned) => None,
                Ok(Event::Exited(c)) => Some(StorageError::Exited(c)),
                Ok(Event::RemoteCall(_)) => Some(StorageError::Internal("remote call in storage")),
                Ok(Event::ConnCall { .. }) => {
                    Some(StorageError::Internal("connection call in storage"))
                }
                Ok(Event::Hypercall(
                    ApiCall::StorageReturn { .. } | ApiCall::StorageNoreturn { .. },
                )) => Some(StorageError::ReturnedTwice),
                Ok(Event::Hypercall(call)) => {
                    other_hypercall(self.core, self.vm, call);
                    return Step::Continue;
                }
            };
            return match self.abandon_prev(o, prev, why) {
                Ok(()) => Step::Continue,
                Err(e) => Step::End(Err(e)),
            };
        }
        // The chain stub took the call: the clean-up is over.
        o.phase = Phase::Own;
        let ran = at.elapsed();
        if ran >= o.budget {
            return Step::End(Err(RunError::Timeout {
                what: "storage call (max_storage_time)",
                limit: o.budget,
            }
            .into()));
        }
        // The deadline is re-armed for this call only if it runs on.
        o.restart = Some((o.budget - ran, "storage call (max_storage_time)"));
        if matches!(ev, Err(RunError::Timeout { .. })) {
            return Step::Continue;
        }
        self.own(o, ev)
    }

    /// [`Phase::Own`]: the call's function runs.
    fn own(&mut self, o: &mut Open, ev: Result<Event, RunError>) -> Step {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return Step::End(Err(e.into())),
        };
        match ev {
            Event::Preempted if self.slice.is_some() => {
                if let Some((d, what)) = o.restart.take() {
                    // Keep the new deadline for when it resumes.
                    let _ = self.vm.start_deadline(d, what);
                }
                self.vm.pause_deadline();
                Step::Stop(Drive::Preempted)
            }
            Event::Preempted => Step::Continue,
            Event::Returned => {
                if let Kind::Remote(_) = o.kind {
                    // The keep-the-result stub moved RAX to RSI; RDX is the function's.
                    let r = self.vm.machine.cpu.regs();
                    o.result = Some(Returned {
                        data: r.rdx.to_le_bytes().to_vec(),
                        len: r.rsi,
                    });
                }
                Step::End(Ok(()))
            }
            Event::RemoteCall(_) => {
                Step::End(Err(StorageError::Internal("remote call in the storage VM")))
            }
            Event::ConnCall { .. } => Step::End(Err(StorageError::Internal(
                "connection call in the storage VM",
            ))),
            Event::Exited(c) => Step::End(Err(StorageError::Exited(c))),
            Event::Hypercall(ApiCall::StorageReturn { data }) => {
                self.storage_return(o, data, false)
            }
            Event::Hypercall(ApiCall::StorageNoreturn { data }) => {
                self.storage_return(o, data, true)
            }
            Event::Hypercall(call) => {
                other_hypercall(self.core, self.vm, call);
                Step::Continue
            }
        }
    }

    /// `storage_return(data, len)` (or `storage_noreturn`): the call's answer.
    fn storage_return(&mut self, o: &mut Open, data: Buf, noreturn: bool) -> Step {
        let (p, l) = (data.addr(), data.len);
        if let Kind::Remote(_) = o.kind {
            // A remote call answers with its return value: storage_return() means nothing.
            self.vm.machine.cpu.regs_mut().rax = u64::MAX;
            return Step::Continue;
        }
        if o.result.is_some() {
            return Step::End(Err(StorageError::ReturnedTwice));
        }
        let vm = &mut *self.vm;
        if let Kind::LiveRestore(state) = &o.kind {
            // on_live_restore names the destination: copy the carried state there.
            let n = (l as usize).min(state.len());
            if let Err(e) = vm.machine.mem.write(p, &state[..n]) {
                return Step::End(Err(StorageError::BadRestoreDestination(e)));
            }
            o.result = Some(Returned {
                data: Vec::new(),
                len: n as u64,
            });
            vm.machine.cpu.regs_mut().rax = 0;
            return Step::Continue;
        }
        // Only what fits the caller's buffer is copied.
        let take = l.min(o.dstlen).min(MAX_RESULT);
        let data = if p == 0 || take == 0 {
            Vec::new()
        } else {
            match vm.machine.mem.read_vec(p, take as usize) {
                Ok(d) => d,
                Err(e) => return Step::End(Err(StorageError::BadReturn(e))),
            }
        };
        let r = Returned { data, len: l };
        o.result = Some(r.clone());
        if noreturn {
            return Step::End(Ok(()));
        }
        // Let the function finish (clean up) within 1 s more.
        vm.machine.cpu.regs_mut().rax = 0;
        o.restart = Some((CLEANUP_BUDGET, "storage call cleanup"));
        if self.early && matches!(o.kind, Kind::Func) {
            // The caller goes on with its answer now; the clean-up runs later.
            vm.stop_deadline();
            vm.printer.flush();
            return Step::Stop(Drive::Answered(r));
        }
        Step::Continue
    }

    /// While a call is chained behind a clean-up: whether the clean-up still runs (the chain
    /// stub has not taken the mailbox yet).
    fn in_prev(&self) -> bool {
        self.mailbox
            .is_some_and(|m| self.vm.machine.mem.read_u64(m).is_ok_and(|f| f != 0))
    }

    /// The clean-up a call was chained behind failed (or returned without the chain stub): log
    /// it, and enter the chained call from its mailbox as a fresh call.
    fn abandon_prev(
        &mut self,
        o: &mut Open,
        prev: u64,
        why: Option<StorageError>,
    ) -> Result<(), StorageError> {
        let vm = &mut *self.vm;
        let mailbox = self.mailbox.unwrap_or(0);
        if let Some(e) = why {
            let what = describe(vm, prev);
            vm.printer.log(&format!(
                "storage function {what} failed after storage_return: {e}"
            ));
            vm.restore_user_mode(self.entry);
        }
        let mailbox_err = |what| move |source| StorageError::Mailbox { what, source };
        let m = vm
            .machine
            .mem
            .read_vec(mailbox, edgevm_abi::cpu::CHAIN_MAILBOX_BYTES)
            .map_err(mailbox_err("read"))?;
        let w = |i: usize| u64::from_le_bytes(m[8 * i..8 * i + 8].try_into().unwrap_or_default());
        vm.machine
            .mem
            .write_u64(mailbox, 0)
            .map_err(mailbox_err("clear"))?;
        vm.enter_handler(self.entry, w(2), w(1), &[w(6), w(7), w(8)])?;
        vm.machine.cpu.regs_mut().rbx = mailbox;
        o.phase = Phase::Own;
        o.restart = Some((o.budget, "storage call (max_storage_time)"));
        Ok(())
    }

    /// The call is over: stop its deadline, leave the vCPU ready for the next call, and say
    /// what the call came to.
    fn end(self, open: &mut Option<Open>, out: Result<(), StorageError>) -> Drive {
        let vm = self.vm;
        vm.stop_deadline();
        vm.printer.flush();
        if out.is_err() {
            // A crash leaves the vCPU in the CPL0 exception stub: the next call starts in user
            // mode.
            vm.restore_user_mode(self.entry);
        }
        let chained = open
            .as_ref()
            .is_some_and(|o| matches!(o.phase, Phase::Chained { .. }));
        if let (Some(m), true) = (self.mailbox, chained) {
            // A chained call that never started is dropped with this one.
            let _ = vm.machine.mem.write_u64(m, 0);
        }
        let Some(o) = open.take() else {
            return Drive::Finished(Finished::nothing());
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
            func_call: matches!(o.kind, Kind::Func | Kind::Remote(_)),
            result,
        })
    }
}
