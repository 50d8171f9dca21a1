//! GDB remote debugging of a program's VM (the `gdbstub` crate), on the VM's own thread.
//!
//! A session opens when `edgevm run --gdb` reaches the program's entry, when a program with
//! `allow_debug` calls `sys_breakpoint()` (main VM during boot, request VM during a request),
//! or, with `remote_debug_on_exception`, when the program crashes (at the faulting
//! instruction, before the reset). The VM's thread listens on the configured address (one
//! session per program; further clients are told why they are refused), waits for GDB, and
//! then serves it between runs of the vCPU. While a session is open the run's deadline is
//! suspended; it resumes when GDB detaches.
//!
//! How the CPU is driven (the same on hardware KVM and kvm_pvm, which ignores
//! KVM_SET_GUEST_DEBUG: measured here, neither single-step nor breakpoint exits arrive):
//! * software breakpoints are `int3` bytes written into guest memory. Program code runs at
//!   CPL3 and the IDT gates are DPL0, so on hardware KVM `int3` raises #GP (error code 0x1A:
//!   IDT vector 3) with RIP at the `int3`; kvm_pvm delivers #BP (RIP after it). Either way
//!   the CPL0 exception stub reports it through its port;
//! * single step sets RFLAGS.TF: the #DB after one instruction goes the same way;
//! * hardware breakpoints are the guest's DR0-DR3/DR7 (KVM_SET_DEBUGREGS), which raise #DB
//!   on hardware KVM; kvm_pvm ignores guest debug registers, so there they are `int3` too;
//! * a program stopped in an exception stub resumes through an `iretq` at
//!   [`layout::DEBUG_IRET`] with RSP at the exception frame, whose RIP, RFLAGS (TF, RF) and
//!   RSP the debugger may have changed;
//! * Ctrl-C: while the program runs, the thread's run timer stops it every 50 ms and the
//!   connection is polled.
//!
//! Without any debugging configured ([`crate::vm::VmOptions::gdb`] None) none of this is on
//! the run loop's path.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgevm_abi::api::{self, Call};
use edgevm_abi::cpu::has_error_code;
use edgevm_abi::crash::CrashReport;
use edgevm_abi::layout;
use edgevm_abi::linux::Output;
use edgevm_kvm::{Exit, Vcpu};
use gdbstub::arch::{Arch, Registers};
use gdbstub::common::Signal;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::ext::section_offsets::{Offsets, SectionOffsets, SectionOffsetsOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;
use gdbstub_arch::x86::reg::X86_64CoreRegs;

use crate::timer;
use crate::vm::{Event, MainVm, RunError};

/// The default debug address: the reference's port, loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2159";

/// How long a session waits for GDB to connect, and for its next command while the program
/// is stopped, before it lets the program go on (the reference's 5 minutes).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// A program's debugging settings.
#[derive(Debug, Clone)]
pub struct DebugSettings {
    /// `allow_debug`: `sys_breakpoint()` opens a session.
    pub on_breakpoint: bool,
    /// `remote_debug_on_exception`: a crash opens a session at the faulting instruction.
    pub on_exception: bool,
    /// `edgevm run --gdb`: stop at the program's entry point and wait for GDB.
    pub at_entry: bool,
    /// Where sessions listen.
    pub listen: SocketAddr,
    /// How long to wait for GDB to connect, and for a command while stopped.
    pub wait: Duration,
    /// Taken while a session of this program is open: one session per program (shared by
    /// the program's main, storage and request VMs).
    pub busy: Arc<AtomicBool>,
}

impl DebugSettings {
    /// Settings listening on `listen`, nothing enabled yet.
    pub fn new(listen: SocketAddr) -> Self {
        DebugSettings {
            on_breakpoint: false,
            on_exception: false,
            at_entry: false,
            listen,
            wait: DEFAULT_WAIT,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }
}

const TF: u64 = 1 << 8;
const RF: u64 = 1 << 16;
const INT3: u8 = 0xCC;
/// #GP error code of an `int3` at CPL3 through a DPL0 gate: IDT vector 3, bit 1 (IDT).
const GP_INT3: u64 = (3 << 3) | 2;
/// How often a running program is stopped to look for GDB's Ctrl-C.
const POLL: Duration = Duration::from_millis(50);

type Gdb<C> = GdbStubStateMachine<'static, MainVm<C>, TcpStream>;

/// Why a session opens.
#[derive(Debug, Clone)]
enum Open {
    Entry,
    Breakpoint,
    Crash(CrashReport),
}

/// An open (or opening) GDB session of one VM.
pub(crate) struct Debugger<C: Vcpu> {
    gdb: Option<Gdb<C>>,
    /// Software breakpoints: address -> the byte the `int3` replaced.
    sw: BTreeMap<u64, u8>,
    /// Hardware breakpoints in DR0-DR3 (hardware KVM).
    hw: Vec<u64>,
    /// The internal breakpoint at the program's entry (`--gdb`).
    entry_bp: Option<(u64, u8)>,
    /// The vCPU is in a CPL0 exception stub; the program's RIP, CS, RFLAGS, RSP and SS are
    /// in the exception frame at this address.
    frame: Option<u64>,
    /// The next resume is a single step.
    stepping: bool,
    /// A stop to report to GDB before it may resume.
    stop: Option<SingleThreadStopReason<u64>>,
    /// Stopped at this crash: continuing delivers it (the run fails as without a debugger).
    crash: Option<CrashReport>,
    /// The signal GDB is told the program died of, once a crash was delivered.
    signal: Option<Signal>,
    /// A session to open on the next run (not on an HTTP worker).
    pending: Option<Open>,
    /// The run's deadline when the session opened: time left, budget, what (restored at
    /// detach).
    saved_deadline: Option<(Duration, Duration, &'static str)>,
    /// GDB closed the connection while the program ran: detach at the next stop.
    closed: bool,
    /// Holds the program's one-session flag; stops the refusing thread.
    _busy: Option<BusyGuard>,
}

struct BusyGuard {
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// The thread refusing further clients; it owns the listener, which must be closed
    /// before the next session of the program binds the address again.
    refuser: Option<std::thread::JoinHandle<()>>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.refuser.take() {
            let _ = t.join();
        }
        self.busy.store(false, Ordering::SeqCst);
    }
}

impl<C: Vcpu> Debugger<C> {
    fn new(pending: Option<Open>) -> Box<Self> {
        Box::new(Debugger {
            gdb: None,
            sw: BTreeMap::new(),
            hw: Vec::new(),
            entry_bp: None,
            frame: None,
            stepping: false,
            stop: None,
            crash: None,
            signal: None,
            pending,
            saved_deadline: None,
            closed: false,
            _busy: None,
        })
    }
}

fn dbg<C: Vcpu>(vm: &mut MainVm<C>) -> &mut Debugger<C> {
    vm.debug.get_or_insert_with(|| Debugger::new(None))
}

/// `edgevm run --gdb`: an internal breakpoint at the ELF entry opens the session there.
pub(crate) fn stop_at_entry<C: Vcpu>(vm: &mut MainVm<C>) -> Result<(), RunError> {
    let entry = vm.elf.entry;
    let mut orig = [0u8];
    vm.machine.mem.read_raw(entry, &mut orig)?;
    vm.machine.mem.write_raw(entry, &[INT3])?;
    dbg(vm).entry_bp = Some((entry, orig[0]));
    Ok(())
}

/// `sys_breakpoint()`: with `allow_debug`, a session opens right after the call (the return
/// value is 0); without it the call is a logged no-op (as in the reference).
pub(crate) fn breakpoint_call<C: Vcpu>(vm: &mut MainVm<C>) -> u64 {
    if !vm.opts.gdb.as_ref().is_some_and(|g| g.on_breakpoint) {
        vm.printer.log("Skipped VM breakpoint (debug not enabled)");
        return 0;
    }
    if vm.opts.storage {
        // A storage VM's calls have no end a session could follow (no end hook yet).
        vm.printer
            .log("Skipped VM breakpoint (debugging the storage VM is not supported)");
        return 0;
    }
    match &mut vm.debug {
        // Already debugged: stop there (see run_until_event).
        Some(_) => {}
        None => vm.debug = Some(Debugger::new(Some(Open::Breakpoint))),
    }
    0
}

/// A crash with `remote_debug_on_exception`: open a session at the faulting instruction; the
/// crash is delivered when GDB continues or detaches (or when no GDB comes).
pub(crate) fn on_crash<C: Vcpu>(
    vm: &mut MainVm<C>,
    report: CrashReport,
) -> Result<Event, RunError> {
    if vm.opts.storage {
        return Err(RunError::Crash(report));
    }
    let d = dbg(vm);
    d.pending = Some(Open::Crash(report.clone()));
    d.crash = Some(report);
    d.frame = None;
    let f = exception_frame(vm);
    dbg(vm).frame = Some(f.2);
    run_until_event(vm)
}

/// The exception stub's vector, error code and frame address (the vCPU is in the stub).
fn exception_frame<C: Vcpu>(vm: &MainVm<C>) -> (u8, u64, u64) {
    let rsp = vm.machine.cpu.regs().rsp;
    let vector = vm.machine.mem.read_raw_u64(rsp) as u8;
    if has_error_code(vector) {
        (vector, vm.machine.mem.read_raw_u64(rsp + 8), rsp + 16)
    } else {
        (vector, 0, rsp + 8)
    }
}

fn kvm_pvm() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::path::Path::new("/sys/module/kvm_pvm").exists())
}

/// The end of the run the session belongs to (boot reached `wait_for_requests()` or exited,
/// the request answered or failed): GDB is told the process is gone, breakpoints removed.
pub(crate) fn end<C: Vcpu>(vm: &mut MainVm<C>, failed: bool) {
    let Some(mut d) = vm.debug.take() else {
        return;
    };
    for (a, b) in std::mem::take(&mut d.sw) {
        let _ = vm.machine.mem.write_raw(a, &[b]);
    }
    if let Some((a, b)) = d.entry_bp.take() {
        let _ = vm.machine.mem.write_raw(a, &[b]);
    }
    if !d.hw.is_empty() {
        let _ = vm.machine.cpu.set_debugregs([0; 4], 0xFFFF_0FF0, 0x400);
    }
    if let Some(Gdb::Running(r)) = d.gdb.take() {
        let why = if failed {
            SingleThreadStopReason::Terminated(d.signal.unwrap_or(Signal::SIGKILL))
        } else {
            SingleThreadStopReason::Exited(0)
        };
        let _ = r.report_stop(vm, why);
    }
    tracing::info!("{}: debug session ended", vm.opts.name);
}

/// Open the session: take the program's session flag, listen, wait for GDB, suspend the
/// deadline. Err(reason) when refused (logged by the caller).
fn open<C: Vcpu>(vm: &mut MainVm<C>, why: &Open) -> Result<(), String> {
    let Some(s) = vm.opts.gdb.clone() else {
        return Err("debugging is not enabled".into());
    };
    if s.busy
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(format!(
            "another debug session of program '{}' is open",
            vm.opts.name
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut guard = BusyGuard {
        busy: s.busy.clone(),
        stop: stop.clone(),
        refuser: None,
    };
    let listener =
        TcpListener::bind(s.listen).map_err(|e| format!("cannot listen on {}: {e}", s.listen))?;
    let what = match why {
        Open::Entry => "stopped at the program's entry".to_string(),
        Open::Breakpoint => "sys_breakpoint()".to_string(),
        Open::Crash(r) => format!("crash: {r}"),
    };
    let msg = format!(
        "debug session ({what}): waiting up to {} s for GDB on {}: gdb {} -ex 'target remote {}'",
        s.wait.as_secs(),
        s.listen,
        vm.opts.program_path.display(),
        s.listen
    );
    vm.printer.flush();
    tracing::warn!("{}: {msg}", vm.opts.name);
    // Suspend the deadline while waiting and debugging.
    let left = vm
        .deadline
        .take()
        .map(|(d, budget, w)| (d.saturating_duration_since(Instant::now()), budget, w));
    vm.linux.deadline = None;
    timer::disarm();
    vm.machine.cpu.clear_immediate_exit();
    let conn = accept_within(&listener, s.wait);
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            restore_deadline(vm, left);
            return Err(e);
        }
    };
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(s.wait));
    // Later clients are refused with a reason until the session ends.
    let name = vm.opts.name.clone();
    guard.refuser = std::thread::Builder::new()
        .name("edgevm-gdb-refuse".into())
        .spawn(move || refuse_others(listener, &name, &stop))
        .ok();
    tracing::info!("{}: GDB connected", vm.opts.name);
    let d = dbg(vm);
    d._busy = Some(guard);
    d.saved_deadline = left;
    let gdb = GdbStub::new(conn)
        .run_state_machine(vm)
        .map_err(|e| format!("GDB session failed to start: {e}"))?;
    dbg(vm).gdb = Some(gdb);
    Ok(())
}

fn restore_deadline<C: Vcpu>(vm: &mut MainVm<C>, left: Option<(Duration, Duration, &'static str)>) {
    if let Some((l, budget, w)) = left {
        vm.deadline = Some((Instant::now() + l, budget, w));
        vm.linux.deadline = Some(Instant::now() + l);
        let _ = vm.arm_timer();
    }
}

fn accept_within(l: &TcpListener, wait: Duration) -> Result<TcpStream, String> {
    let end = Instant::now() + wait;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        match l.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= end {
                    return Err(format!("no GDB connected within {} s", wait.as_secs()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accepting GDB failed: {e}")),
        }
    }
}

/// Answer every further client with a GDB error reply that says why, until `stop`.
fn refuse_others(l: TcpListener, name: &str, stop: &AtomicBool) {
    let msg = format!("E.edgevm: a debug session of program '{name}' is already open");
    let sum = msg.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    let packet = format!("${msg}#{sum:02x}");
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                // Read GDB's first packet, answer it with the error, close.
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"+");
                let _ = c.write_all(packet.as_bytes());
                let _ = c.shutdown(std::net::Shutdown::Write);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Where the session goes after serving GDB.
enum Served {
    /// GDB resumed (continue or step).
    Resume,
    /// GDB detached (or went away): the program goes on without a debugger.
    Detach,
    /// GDB killed the program.
    Kill,
}

/// Serve GDB while the program is stopped, until it resumes, detaches or kills it.
fn serve<C: Vcpu>(vm: &mut MainVm<C>) -> Result<Served, RunError> {
    let Some(mut gdb) = dbg(vm).gdb.take() else {
        return Ok(Served::Detach);
    };
    // Stopped: no Ctrl-C polling while GDB has the word.
    timer::disarm();
    vm.machine.cpu.clear_immediate_exit();
    if let Some(stop) = dbg(vm).stop.take() {
        gdb = match gdb {
            Gdb::Running(r) => match r.report_stop(vm, stop) {
                Ok(g) => g,
                Err(e) => return Ok(lost(vm, &e.to_string())),
            },
            other => other,
        };
    }
    loop {
        gdb = match gdb {
            Gdb::Running(r) => {
                dbg(vm).gdb = Some(Gdb::Running(r));
                return Ok(Served::Resume);
            }
            Gdb::Disconnected(d) => {
                return Ok(match d.get_reason() {
                    DisconnectReason::Kill => Served::Kill,
                    _ => Served::Detach,
                });
            }
            Gdb::CtrlCInterrupt(c) => {
                match c.interrupt_handled(vm, None::<SingleThreadStopReason<u64>>) {
                    Ok(g) => g,
                    Err(e) => return Ok(lost(vm, &e.to_string())),
                }
            }
            Gdb::Idle(mut i) => {
                let mut b = [0u8];
                match i.borrow_conn().read(&mut b) {
                    Ok(1) => match i.incoming_data(vm, b[0]) {
                        Ok(g) => g,
                        Err(e) => return Ok(lost(vm, &e.to_string())),
                    },
                    Ok(_) => return Ok(lost(vm, "GDB closed the connection")),
                    // A late fire of the thread's run timer.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Gdb::Idle(i),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(lost(vm, "no command from GDB in time"))
                    }
                    Err(e) => return Ok(lost(vm, &format!("reading from GDB failed: {e}"))),
                }
            }
        };
    }
}

fn lost<C: Vcpu>(vm: &mut MainVm<C>, why: &str) -> Served {
    tracing::warn!("{}: debug session: {why}", vm.opts.name);
    Served::Detach
}

/// Detach: remove every breakpoint, put the deadline back; the program goes on without a
/// debugger (from where it stopped).
fn detach<C: Vcpu>(vm: &mut MainVm<C>) -> Result<Option<CrashReport>, RunError> {
    let Some(mut d) = vm.debug.take() else {
        return Ok(None);
    };
    for (a, b) in std::mem::take(&mut d.sw) {
        vm.machine.mem.write_raw(a, &[b])?;
    }
    if let Some((a, b)) = d.entry_bp.take() {
        vm.machine.mem.write_raw(a, &[b])?;
    }
    if !d.hw.is_empty() {
        vm.machine.cpu.set_debugregs([0; 4], 0xFFFF_0FF0, 0x400)?;
    }
    if let Some(f) = d.frame.take() {
        let fl = vm.machine.mem.read_raw_u64(f + 16);
        vm.machine
            .mem
            .write_raw(f + 16, &((fl & !TF) | RF).to_le_bytes())?;
        let r = vm.machine.cpu.regs_mut();
        r.rsp = f;
        r.rip = layout::DEBUG_IRET;
    } else {
        vm.machine.cpu.regs_mut().rflags &= !TF;
    }
    restore_deadline(vm, d.saved_deadline.take());
    tracing::info!("{}: GDB detached; the program goes on", vm.opts.name);
    Ok(d.crash.take())
}

fn signal_of(vector: u8) -> Signal {
    match vector {
        0 | 16 | 19 => Signal::SIGFPE,
        1 | 3 => Signal::SIGTRAP,
        6 => Signal::SIGILL,
        17 => Signal::SIGBUS,
        _ => Signal::SIGSEGV,
    }
}

/// The run loop while a session is open or opening: [`MainVm::run_until_event`] for a VM
/// with a debugger.
pub(crate) fn run_until_event<C: Vcpu>(vm: &mut MainVm<C>) -> Result<Event, RunError> {
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
                let call = match api::decode(value, vm.machine.cpu.regs()) {
                    Ok(Call::Returned) => return Ok(Event::Returned),
                    Ok(Call::Breakpoint) if dbg(vm).gdb.is_some() => {
                        // sys_breakpoint() with GDB attached: stop there.
                        vm.machine.cpu.regs_mut().rax = 0;
                        dbg(vm).stop = Some(SingleThreadStopReason::Signal(Signal::SIGTRAP));
                        continue;
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
                if stepping && kvm_pvm() {
                    dbg(vm).stop = Some(SingleThreadStopReason::DoneStep);
                }
                if let Some(call) = call {
                    if !vm.generic_hypercall(call)? {
                        return Ok(Event::Hypercall(call));
                    }
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

/// Before a run: leave the exception stub through `iretq` if stopped in one, with TF for a
/// single step and RF so an instruction breakpoint does not fire again.
fn resume_state<C: Vcpu>(vm: &mut MainVm<C>) -> Result<(), RunError> {
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
fn on_exception<C: Vcpu>(vm: &mut MainVm<C>, stepping: bool) -> Result<(), RunError> {
    let (vector, err, frame) = exception_frame(vm);
    let rip = vm.machine.mem.read_raw_u64(frame);
    let d = dbg(vm);
    d.frame = Some(frame);
    // int3: #BP (a trap: RIP after it) where the gate lets CPL3 in (kvm_pvm delivers it so),
    // #GP with error code 0x1A (RIP at it) through edgevm's DPL0 gate on hardware KVM.
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
        let has_hw = !d.hw.is_empty();
        let hw_hit = has_hw && vm.machine.cpu.dr6().is_ok_and(|d6| d6 & 0xF != 0);
        if hw_hit {
            let hw = dbg(vm).hw.clone();
            set_hw(vm, &hw)?;
        }
        let d = dbg(vm);
        d.stop = Some(if hw_hit {
            SingleThreadStopReason::HwBreak(())
        } else if stepping {
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
fn poll_ctrl_c<C: Vcpu>(vm: &mut MainVm<C>) {
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

fn hw_slots(hw: &[u64]) -> [u64; 4] {
    let mut s = [0u64; 4];
    for (i, a) in hw.iter().take(4).enumerate() {
        s[i] = *a;
    }
    s
}

fn set_hw<C: Vcpu>(vm: &mut MainVm<C>, hw: &[u64]) -> Result<(), RunError> {
    let mut dr7 = 0x400u64;
    for i in 0..hw.len().min(4) {
        dr7 |= 1 << (2 * i); // local enable; R/W 00 (execute), LEN 00
    }
    vm.machine
        .cpu
        .set_debugregs(hw_slots(hw), 0xFFFF_0FF0, dr7)?;
    Ok(())
}

// ------------------------------------------------------------------ registers

/// x86-64 with the FS/GS bases and the AVX upper halves (GDB's i386 core, sse, segments and
/// avx features).
pub enum EdgevmX86_64 {}

/// The registers GDB sees.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Regs {
    /// General, segment, x87 and SSE registers.
    pub core: X86_64CoreRegs,
    /// FS base (TLS).
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// Upper halves of YMM0-YMM15.
    pub ymmh: [u128; 16],
}

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for b in self
            .fs_base
            .to_le_bytes()
            .into_iter()
            .chain(self.gs_base.to_le_bytes())
        {
            write_byte(Some(b));
        }
        for y in &self.ymmh {
            for b in y.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        const CORE: usize = 0x218;
        if bytes.len() < CORE {
            return Err(());
        }
        self.core.gdb_deserialize(&bytes[..CORE])?;
        let u64_at = |o: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
        };
        if let (Some(f), Some(g)) = (u64_at(CORE), u64_at(CORE + 8)) {
            self.fs_base = f;
            self.gs_base = g;
        }
        for (i, y) in self.ymmh.iter_mut().enumerate() {
            let o = CORE + 16 + 16 * i;
            if let Some(b) = bytes.get(o..o + 16) {
                *y = u128::from_le_bytes(b.try_into().map_err(|_| ())?);
            }
        }
        Ok(())
    }
}

impl Arch for EdgevmX86_64 {
    type Usize = u64;
    type Registers = Regs;
    type RegId = X86_64CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// GDB's 64bit-core, 64bit-sse, 64bit-segments and 64bit-avx features, in the order of
/// [`Regs::gdb_serialize`].
const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
<flags id="i386_eflags" size="4">
<field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
<field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
<field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
<field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
<field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
<field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
<field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
<field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
<field name="ID" start="21" end="21"/>
</flags>
<reg name="rax" bitsize="64" type="int64" regnum="0"/>
<reg name="rbx" bitsize="64" type="int64"/>
<reg name="rcx" bitsize="64" type="int64"/>
<reg name="rdx" bitsize="64" type="int64"/>
<reg name="rsi" bitsize="64" type="int64"/>
<reg name="rdi" bitsize="64" type="int64"/>
<reg name="rbp" bitsize="64" type="data_ptr"/>
<reg name="rsp" bitsize="64" type="data_ptr"/>
<reg name="r8" bitsize="64" type="int64"/>
<reg name="r9" bitsize="64" type="int64"/>
<reg name="r10" bitsize="64" type="int64"/>
<reg name="r11" bitsize="64" type="int64"/>
<reg name="r12" bitsize="64" type="int64"/>
<reg name="r13" bitsize="64" type="int64"/>
<reg name="r14" bitsize="64" type="int64"/>
<reg name="r15" bitsize="64" type="int64"/>
<reg name="rip" bitsize="64" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="i386_eflags"/>
<reg name="cs" bitsize="32" type="int32"/>
<reg name="ss" bitsize="32" type="int32"/>
<reg name="ds" bitsize="32" type="int32"/>
<reg name="es" bitsize="32" type="int32"/>
<reg name="fs" bitsize="32" type="int32"/>
<reg name="gs" bitsize="32" type="int32"/>
<reg name="st0" bitsize="80" type="i387_ext"/>
<reg name="st1" bitsize="80" type="i387_ext"/>
<reg name="st2" bitsize="80" type="i387_ext"/>
<reg name="st3" bitsize="80" type="i387_ext"/>
<reg name="st4" bitsize="80" type="i387_ext"/>
<reg name="st5" bitsize="80" type="i387_ext"/>
<reg name="st6" bitsize="80" type="i387_ext"/>
<reg name="st7" bitsize="80" type="i387_ext"/>
<reg name="fctrl" bitsize="32" type="int" group="float"/>
<reg name="fstat" bitsize="32" type="int" group="float"/>
<reg name="ftag" bitsize="32" type="int" group="float"/>
<reg name="fiseg" bitsize="32" type="int" group="float"/>
<reg name="fioff" bitsize="32" type="int" group="float"/>
<reg name="foseg" bitsize="32" type="int" group="float"/>
<reg name="fooff" bitsize="32" type="int" group="float"/>
<reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v16i8" type="int8" count="16"/>
<vector id="v8i16" type="int16" count="8"/>
<vector id="v4i32" type="int32" count="4"/>
<vector id="v2i64" type="int64" count="2"/>
<union id="vec128">
<field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
<field name="uint128" type="uint128"/>
</union>
<reg name="xmm0" bitsize="128" type="vec128" regnum="40"/>
<reg name="xmm1" bitsize="128" type="vec128"/>
<reg name="xmm2" bitsize="128" type="vec128"/>
<reg name="xmm3" bitsize="128" type="vec128"/>
<reg name="xmm4" bitsize="128" type="vec128"/>
<reg name="xmm5" bitsize="128" type="vec128"/>
<reg name="xmm6" bitsize="128" type="vec128"/>
<reg name="xmm7" bitsize="128" type="vec128"/>
<reg name="xmm8" bitsize="128" type="vec128"/>
<reg name="xmm9" bitsize="128" type="vec128"/>
<reg name="xmm10" bitsize="128" type="vec128"/>
<reg name="xmm11" bitsize="128" type="vec128"/>
<reg name="xmm12" bitsize="128" type="vec128"/>
<reg name="xmm13" bitsize="128" type="vec128"/>
<reg name="xmm14" bitsize="128" type="vec128"/>
<reg name="xmm15" bitsize="128" type="vec128"/>
<reg name="mxcsr" bitsize="32" type="int" group="vector"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
<reg name="fs_base" bitsize="64" type="int"/>
<reg name="gs_base" bitsize="64" type="int"/>
</feature>
<feature name="org.gnu.gdb.i386.avx">
<reg name="ymm0h" bitsize="128" type="uint128"/>
<reg name="ymm1h" bitsize="128" type="uint128"/>
<reg name="ymm2h" bitsize="128" type="uint128"/>
<reg name="ymm3h" bitsize="128" type="uint128"/>
<reg name="ymm4h" bitsize="128" type="uint128"/>
<reg name="ymm5h" bitsize="128" type="uint128"/>
<reg name="ymm6h" bitsize="128" type="uint128"/>
<reg name="ymm7h" bitsize="128" type="uint128"/>
<reg name="ymm8h" bitsize="128" type="uint128"/>
<reg name="ymm9h" bitsize="128" type="uint128"/>
<reg name="ymm10h" bitsize="128" type="uint128"/>
<reg name="ymm11h" bitsize="128" type="uint128"/>
<reg name="ymm12h" bitsize="128" type="uint128"/>
<reg name="ymm13h" bitsize="128" type="uint128"/>
<reg name="ymm14h" bitsize="128" type="uint128"/>
<reg name="ymm15h" bitsize="128" type="uint128"/>
</feature>
</target>"#;

// ------------------------------------------------------------------ the target

fn fatal(e: impl std::fmt::Display) -> TargetError<String> {
    TargetError::Fatal(e.to_string())
}

impl<C: Vcpu> Target for MainVm<C> {
    type Arch = EdgevmX86_64;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_section_offsets(&mut self) -> Option<SectionOffsetsOps<'_, Self>> {
        Some(self)
    }
}

/// Where the program was loaded relative to its link addresses (a static-pie program's load
/// bias), so GDB relocates its symbols.
impl<C: Vcpu> SectionOffsets for MainVm<C> {
    fn get_section_offsets(&mut self) -> Result<Offsets<u64>, Self::Error> {
        let b = self.elf.bias;
        Ok(Offsets::Sections {
            text: b,
            data: b,
            bss: Some(b),
        })
    }
}

impl<C: Vcpu> SingleThreadBase for MainVm<C> {
    fn read_registers(&mut self, regs: &mut Regs) -> TargetResult<(), Self> {
        let r = *self.machine.cpu.regs();
        let s = self.machine.cpu.sregs().map_err(fatal)?;
        regs.core.regs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        let seg = &mut regs.core.segments;
        (seg.ds, seg.es, seg.fs, seg.gs) = (
            s.ds.selector.into(),
            s.es.selector.into(),
            s.fs.selector.into(),
            s.gs.selector.into(),
        );
        if let Some(f) = dbg(self).frame {
            let m = &self.machine.mem;
            regs.core.rip = m.read_raw_u64(f);
            seg.cs = m.read_raw_u64(f + 8) as u32;
            regs.core.eflags = m.read_raw_u64(f + 16) as u32;
            regs.core.regs[7] = m.read_raw_u64(f + 24);
            seg.ss = m.read_raw_u64(f + 32) as u32;
        } else {
            regs.core.rip = r.rip;
            regs.core.eflags = r.rflags as u32;
            seg.cs = s.cs.selector.into();
            seg.ss = s.ss.selector.into();
        }
        regs.core.eflags &= !(TF as u32);
        regs.fs_base = s.fs.base;
        regs.gs_base = s.gs.base;
        if let Some(x) = self.machine.cpu.xsave_state() {
            fill_fpu(regs, &x);
        }
        Ok(())
    }

    fn write_registers(&mut self, regs: &Regs) -> TargetResult<(), Self> {
        let g = regs.core.regs;
        let frame = dbg(self).frame;
        {
            let r = self.machine.cpu.regs_mut();
            [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
                r.r13, r.r14, r.r15,
            ] = [
                g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[8], g[9], g[10], g[11], g[12], g[13],
                g[14], g[15],
            ];
            if frame.is_none() {
                r.rsp = g[7];
                r.rip = regs.core.rip;
                // Only the arithmetic and direction flags are the debugger's to change.
                r.rflags = (r.rflags & !0xCD5) | (u64::from(regs.core.eflags) & 0xCD5);
            }
        }
        if let Some(f) = frame {
            let m = &mut self.machine.mem;
            let fl = m.read_raw_u64(f + 16);
            let fl = (fl & !0xCD5) | (u64::from(regs.core.eflags) & 0xCD5);
            for (o, v) in [(0, regs.core.rip), (16, fl), (24, g[7])] {
                m.write_raw(f + o, &v.to_le_bytes()).map_err(fatal)?;
            }
        }
        if regs.fs_base != self.machine.cpu.fs_base() {
            self.machine.cpu.set_fs_base(regs.fs_base).map_err(fatal)?;
        }
        if regs.gs_base != self.machine.cpu.gs_base() {
            self.machine.cpu.set_gs_base(regs.gs_base).map_err(fatal)?;
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        // Page 0 is not mapped for the program; nor is anything past its memory.
        let end = self.layout.mem_size;
        if start < 0x1000 || start >= end {
            return Err(TargetError::Errno(14));
        }
        let n = data.len().min((end - start) as usize);
        self.machine
            .mem
            .read_raw(start, &mut data[..n])
            .map_err(|_| TargetError::Errno(14))?;
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        // The program's memory only: never the supervisor structures below it.
        if start < layout::USER_BASE {
            return Err(TargetError::Errno(14));
        }
        self.machine
            .mem
            .write(start, data)
            .map_err(|_| TargetError::Errno(14))
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

/// x87/SSE from the XSAVE legacy area, AVX upper halves from its AVX component.
fn fill_fpu(regs: &mut Regs, x: &[u8]) {
    if x.len() < 512 {
        return;
    }
    let u16_at = |o: usize| u16::from_le_bytes([x[o], x[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(x[o..o + 4].try_into().unwrap_or_default());
    let f = &mut regs.core.fpu;
    f.fctrl = u16_at(0).into();
    f.fstat = u16_at(2).into();
    // Abridged tag (1 bit per register, 1 = valid) -> full tag (2 bits, 11 = empty).
    let ftw = x[4];
    f.ftag = (0..8).fold(0u32, |t, i| {
        t | if ftw & (1 << i) != 0 { 0 } else { 3 << (2 * i) }
    });
    f.fop = u16_at(6).into();
    f.fioff = u32_at(8);
    f.fiseg = u32_at(12);
    f.fooff = u32_at(16);
    f.foseg = u32_at(20);
    regs.core.mxcsr = u32_at(24);
    for (i, st) in regs.core.st.iter_mut().enumerate() {
        st.copy_from_slice(&x[32 + 16 * i..42 + 16 * i]);
    }
    for (i, xmm) in regs.core.xmm.iter_mut().enumerate() {
        let o = 160 + 16 * i;
        *xmm = u128::from_le_bytes(x[o..o + 16].try_into().unwrap_or_default());
    }
    let xstate_bv = x
        .get(512..520)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .unwrap_or(0);
    if xstate_bv & 4 != 0 && x.len() >= 576 + 256 {
        for (i, y) in regs.ymmh.iter_mut().enumerate() {
            let o = 576 + 16 * i;
            *y = u128::from_le_bytes(x[o..o + 16].try_into().unwrap_or_default());
        }
    }
}

impl<C: Vcpu> SingleThreadResume for MainVm<C> {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        dbg(self).stepping = false;
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl<C: Vcpu> SingleThreadSingleStep for MainVm<C> {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        dbg(self).stepping = true;
        Ok(())
    }
}

impl<C: Vcpu> Breakpoints for MainVm<C> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl<C: Vcpu> SwBreakpoint for MainVm<C> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if dbg(self).sw.contains_key(&addr) {
            return Ok(true);
        }
        if addr < layout::USER_BASE || addr >= self.layout.mem_size {
            return Ok(false);
        }
        let mut b = [0u8];
        self.machine.mem.read_raw(addr, &mut b).map_err(fatal)?;
        if self.machine.mem.write(addr, &[INT3]).is_err() {
            return Ok(false);
        }
        dbg(self).sw.insert(addr, b[0]);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(b) = dbg(self).sw.remove(&addr) else {
            return Ok(false);
        };
        self.machine.mem.write(addr, &[b]).map_err(fatal)?;
        Ok(true)
    }
}

impl<C: Vcpu> HwBreakpoint for MainVm<C> {
    fn add_hw_breakpoint(&mut self, addr: u64, kind: usize) -> TargetResult<bool, Self> {
        if kvm_pvm() {
            // kvm_pvm ignores the guest's debug registers: the same int3 as `break`.
            return self.add_sw_breakpoint(addr, kind);
        }
        let mut hw = dbg(self).hw.clone();
        if hw.len() >= 4 {
            return Ok(false);
        }
        hw.push(addr);
        set_hw(self, &hw).map_err(fatal)?;
        dbg(self).hw = hw;
        Ok(true)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, kind: usize) -> TargetResult<bool, Self> {
        if kvm_pvm() {
            return self.remove_sw_breakpoint(addr, kind);
        }
        let mut hw = dbg(self).hw.clone();
        let Some(i) = hw.iter().position(|a| *a == addr) else {
            return Ok(false);
        };
        hw.remove(i);
        set_hw(self, &hw).map_err(fatal)?;
        dbg(self).hw = hw;
        Ok(true)
    }
}
