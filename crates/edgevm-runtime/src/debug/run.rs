//! The debugged run loop: running the vCPU between GDB's commands, stops at exceptions and
//! single steps, Ctrl-C, hardware breakpoint slots.

use super::*;

/// The run loop while a session is open or opening: [`MainVm::run_until_event`] for a VM
/// with a debugger.
pub(crate) fn run_until_event<C: Vcpu, M: MemoryView>(
    vm: &mut Vm<C, M>,
) -> Result<Event, RunError> {
    loop {
        if let Some(why) = dbg(vm).pending.clone() {
            if vm.slice_end.is_some() {
                // On an HTTP worker: open the session where the request may block.
                vm.slice_end = None;
                return Ok(Event::Preempted);
            }
            dbg(vm).pending = None;
            if let Err(reason) = open(vm, &why) {
                tracing::warn!("{}: debug session refused: {reason}", vm.opts.name);
                // Go on without a debugger (a crash is delivered).
                if let Some(c) = detach(vm)? {
                    return Err(RunError::Crash(c));
                }
                return vm.run_until_event();
            }
        }
        if dbg(vm).closed {
            tracing::warn!("{}: debug session: GDB closed the connection", vm.opts.name);
            if let Some(c) = detach(vm)? {
                return Err(RunError::Crash(c));
            }
            return vm.run_until_event();
        }
        let d = dbg(vm);
        if d.stop.is_some()
            || d.gdb
                .as_ref()
                .is_some_and(|g| !matches!(g, Gdb::Running(_)))
        {
            match serve(vm)? {
                Served::Resume => {}
                Served::Detach => {
                    if let Some(c) = detach(vm)? {
                        return Err(RunError::Crash(c));
                    }
                    return vm.run_until_event();
                }
                Served::Kill => {
                    let _ = detach(vm);
                    return Err(RunError::KilledByDebugger);
                }
            }
        }
        if let Some(c) = dbg(vm).crash.take() {
            // GDB continued from a crash: it is delivered, as without a debugger.
            dbg(vm).signal = Some(signal_of(c.vector));
            return Err(RunError::Crash(c));
        }
        resume_state(vm)?;
        if dbg(vm).gdb.is_some() {
            let p = vm.machine.cpu.immediate_exit_ptr();
            timer::arm(p, POLL).map_err(RunError::Timer)?;
        }
        let exit = vm.machine.cpu.run()?;
        let stepping = dbg(vm).stepping;
        match exit {
            Exit::IoOut { port, .. } if port == layout::SYSCALL_PORT => {
                if let Some(ev) = vm.syscall()? {
                    return Ok(ev);
                }
                if stepping && vm.machine.cpu.regs().rip >= layout::USER_BASE {
                    dbg(vm).stop = Some(SingleThreadStopReason::DoneStep);
                }
            }
            Exit::IoOut { port, value, .. } if port == layout::API_PORT => {
                if let Some(ev) = api_exit(vm, value, stepping)? {
                    return Ok(ev);
                }
            }
            Exit::IoOut { port, .. } if port == layout::EXCEPTION_PORT => {
                on_exception(vm, stepping)?;
            }
            Exit::Interrupted => {
                vm.machine.cpu.clear_immediate_exit();
                poll_ctrl_c(vm);
            }
            Exit::Shutdown => {
                return Err(RunError::TripleFault {
                    rip: vm.machine.cpu.regs().rip,
                })
            }
            exit => {
                return Err(RunError::UnexpectedExit {
                    exit,
                    rip: vm.machine.cpu.regs().rip,
                    symbol: String::new(),
                })
            }
        }
    }
}

/// A `kvm_api.h` call while debugging: a `sys_breakpoint()` stops in GDB; the event to
/// return, if the call is not served here.
fn api_exit<C: Vcpu, M: MemoryView>(
    vm: &mut Vm<C, M>,
    value: u32,
    stepping: bool,
) -> Result<Option<Event>, RunError> {
    let call = match api::decode(value, vm.machine.cpu.regs()) {
        Ok(Call::Returned) => return Ok(Some(Event::Returned)),
        Ok(Call::Breakpoint) if dbg(vm).gdb.is_some() => {
            // sys_breakpoint() with GDB attached: stop there.
            vm.machine.cpu.regs_mut().rax = 0;
            dbg(vm).stop = Some(SingleThreadStopReason::Signal(Signal::SIGTRAP));
            return Ok(None);
        }
        Ok(call) => Some(call),
        Err(bad) => {
            vm.unsupported_call(bad.num);
            None
        }
    };
    // The step is over after the `out`. kvm_pvm delivers no #DB for it: report it
    // here. Hardware KVM queues one when it completes the `out` at the next run
    // (kvm_skip_emulated_instruction with RFLAGS.TF), which reports the step.
    if stepping && edgevm_kvm::is_kvm_pvm() {
        dbg(vm).stop = Some(SingleThreadStopReason::DoneStep);
    }
    if let Some(call) = call {
        if !vm.generic_hypercall(call)? {
            return Ok(Some(Event::Hypercall(call)));
        }
    }
    Ok(None)
}

/// Before a run: leave the exception stub through `iretq` if stopped in one, with TF for a
/// single step and RF so an instruction breakpoint does not fire again.
pub(super) fn resume_state<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>) -> Result<(), RunError> {
    let d = dbg(vm);
    let step = d.stepping;
    let frame = d.frame.take();
    if let Some(f) = frame {
        let fl = vm.machine.mem.read_raw_u64(f + 16);
        let fl = if step { fl | TF } else { fl & !TF } | RF;
        vm.machine.mem.write_raw(f + 16, &fl.to_le_bytes())?;
        let r = vm.machine.cpu.regs_mut();
        r.rsp = f;
        r.rip = layout::DEBUG_IRET;
    } else {
        let r = vm.machine.cpu.regs_mut();
        if step {
            r.rflags |= TF;
        } else {
            r.rflags &= !TF;
        }
    }
    Ok(())
}

/// An exception while debugging: a breakpoint, a finished step, or a crash.
pub(super) fn on_exception<C: Vcpu, M: MemoryView>(
    vm: &mut Vm<C, M>,
    stepping: bool,
) -> Result<(), RunError> {
    let (vector, err, frame) = exception_frame(vm);
    let rip = vm.machine.mem.read_raw_u64(frame);
    let d = dbg(vm);
    d.frame = Some(frame);
    // int3: #BP (a trap: RIP after it) through edgevm's DPL3 gate, #GP with error code 0x1A
    // (RIP at it) through a DPL0 gate on hardware KVM.
    let int3_at = match (vector, err) {
        (3, _) => Some(rip.wrapping_sub(1)),
        (13, GP_INT3) => Some(rip),
        _ => None,
    };
    if let Some(at) = int3_at {
        if let Some((a, b)) = d.entry_bp.filter(|(a, _)| *a == at) {
            d.entry_bp = None;
            vm.machine.mem.write_raw(a, &[b])?;
            vm.machine.mem.write_raw(frame, &at.to_le_bytes())?;
            dbg(vm).pending = Some(Open::Entry);
            return Ok(());
        }
        if d.sw.contains_key(&at) {
            d.stop = Some(SingleThreadStopReason::SwBreak(()));
            vm.machine.mem.write_raw(frame, &at.to_le_bytes())?;
            return Ok(());
        }
        // The program's own int3: go on after it, report SIGTRAP.
        vm.machine.mem.write_raw(frame, &(at + 1).to_le_bytes())?;
        dbg(vm).stop = Some(SingleThreadStopReason::Signal(Signal::SIGTRAP));
        return Ok(());
    }
    if vector == 1 {
        d.stop = Some(if stepping {
            SingleThreadStopReason::DoneStep
        } else {
            SingleThreadStopReason::Signal(Signal::SIGTRAP)
        });
        return Ok(());
    }
    // A crash: stop there; continuing delivers it.
    let report = edgevm_abi::crash::decode_exception(
        &mut vm.machine.cpu,
        &vm.machine.mem,
        &vm.elf.symbols,
        &vm.layout,
    )?;
    tracing::warn!("{}: stopped for the debugger at: {report}", vm.opts.name);
    let d = dbg(vm);
    d.crash = Some(report);
    d.stop = Some(SingleThreadStopReason::Signal(signal_of(vector)));
    Ok(())
}

/// While running: a Ctrl-C (or anything) from GDB.
pub(super) fn poll_ctrl_c<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>) {
    let Some(Gdb::Running(mut r)) = dbg(vm).gdb.take() else {
        return;
    };
    let mut bytes = Vec::new();
    {
        let c = r.borrow_conn();
        if c.set_nonblocking(true).is_ok() {
            let mut b = [0u8; 64];
            loop {
                match c.read(&mut b) {
                    Ok(0) => {
                        bytes.push(None);
                        break;
                    }
                    Ok(n) => bytes.extend(b[..n].iter().map(|x| Some(*x))),
                    Err(_) => break,
                }
            }
            let _ = c.set_nonblocking(false);
        }
    }
    let mut gdb = Gdb::Running(r);
    for b in bytes {
        let Some(b) = b else {
            dbg(vm).closed = true;
            return;
        };
        gdb = match gdb {
            Gdb::Running(r) => match r.incoming_data(vm, b) {
                Ok(g) => g,
                Err(_) => {
                    dbg(vm).closed = true;
                    return;
                }
            },
            other => other,
        };
    }
    if let Gdb::CtrlCInterrupt(c) = gdb {
        gdb = match c.interrupt_handled(vm, Some(SingleThreadStopReason::Signal(Signal::SIGINT))) {
            Ok(g) => g,
            Err(_) => return,
        };
        // Stopped: the registers are the vCPU's (an interrupted run is at an instruction
        // boundary in user mode).
    }
    dbg(vm).gdb = Some(gdb);
}
