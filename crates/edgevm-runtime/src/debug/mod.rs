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
//!   CPL3 and the #BP gate is DPL3 (as on Linux), so `int3` raises #BP (RIP after it); an
//!   image whose gate is DPL0 gets #GP (error code 0x1A: IDT vector 3, RIP at the `int3`) on
//!   hardware KVM, which is recognized too. Either way the CPL0 exception stub reports it
//!   through its port;
//! * single step sets RFLAGS.TF: the #DB after one instruction goes the same way;
//! * hardware breakpoints (`hbreak`) are `int3` bytes too: kvm_pvm ignores the guest's debug
//!   registers, and under emulated SVM a DR0-DR3 breakpoint was never hit (DEBUGGING.md);
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
use edgevm_kvm::{Exit, MemoryView, Vcpu};
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
use crate::vm::{Event, RunError, Vm};

mod run;
mod target;

pub(crate) use run::run_until_event;
pub use target::{EdgevmX86_64, Regs};

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

type Gdb<C, M> = GdbStubStateMachine<'static, Vm<C, M>, TcpStream>;

/// Why a session opens.
#[derive(Debug, Clone)]
enum Open {
    Entry,
    Breakpoint,
    Crash(CrashReport),
}

/// An open (or opening) GDB session of one VM.
pub(crate) struct Debugger<C: Vcpu, M: MemoryView> {
    gdb: Option<Gdb<C, M>>,
    /// Software breakpoints: address -> the byte the `int3` replaced.
    sw: BTreeMap<u64, u8>,
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

impl<C: Vcpu, M: MemoryView> Debugger<C, M> {
    fn new(pending: Option<Open>) -> Box<Self> {
        Box::new(Debugger {
            gdb: None,
            sw: BTreeMap::new(),
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

fn dbg<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>) -> &mut Debugger<C, M> {
    vm.debug.get_or_insert_with(|| Debugger::new(None))
}

/// `edgevm run --gdb`: an internal breakpoint at the ELF entry opens the session there.
pub(crate) fn stop_at_entry<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>) -> Result<(), RunError> {
    let entry = vm.elf.entry;
    let mut orig = [0u8];
    vm.machine.mem.read_raw(entry, &mut orig)?;
    vm.machine.mem.write_raw(entry, &[INT3])?;
    dbg(vm).entry_bp = Some((entry, orig[0]));
    Ok(())
}

/// `sys_breakpoint()`: with `allow_debug`, a session opens right after the call (the return
/// value is 0); without it the call is a logged no-op (as in the reference).
pub(crate) fn breakpoint_call<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>) -> u64 {
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
pub(crate) fn on_crash<C: Vcpu, M: MemoryView>(
    vm: &mut Vm<C, M>,
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
fn exception_frame<C: Vcpu, M: MemoryView>(vm: &Vm<C, M>) -> (u8, u64, u64) {
    let rsp = vm.machine.cpu.regs().rsp;
    let vector = vm.machine.mem.read_raw_u64(rsp) as u8;
    if has_error_code(vector) {
        (vector, vm.machine.mem.read_raw_u64(rsp + 8), rsp + 16)
    } else {
        (vector, 0, rsp + 8)
    }
}

/// The end of the run the session belongs to (boot reached `wait_for_requests()` or exited,
/// the request answered or failed): GDB is told the process is gone, breakpoints removed.
pub(crate) fn end<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>, failed: bool) {
    let Some(mut d) = vm.debug.take() else {
        return;
    };
    for (a, b) in std::mem::take(&mut d.sw) {
        let _ = vm.machine.mem.write_raw(a, &[b]);
    }
    if let Some((a, b)) = d.entry_bp.take() {
        let _ = vm.machine.mem.write_raw(a, &[b]);
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
fn open<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>, why: &Open) -> Result<(), String> {
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

fn restore_deadline<C: Vcpu, M: MemoryView>(
    vm: &mut Vm<C, M>,
    left: Option<(Duration, Duration, &'static str)>,
) {
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
fn serve<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>) -> Result<Served, RunError> {
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

fn lost<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>, why: &str) -> Served {
    tracing::warn!("{}: debug session: {why}", vm.opts.name);
    Served::Detach
}

/// Detach: remove every breakpoint, put the deadline back; the program goes on without a
/// debugger (from where it stopped).
fn detach<C: Vcpu, M: MemoryView>(vm: &mut Vm<C, M>) -> Result<Option<CrashReport>, RunError> {
    let Some(mut d) = vm.debug.take() else {
        return Ok(None);
    };
    for (a, b) in std::mem::take(&mut d.sw) {
        vm.machine.mem.write_raw(a, &[b])?;
    }
    if let Some((a, b)) = d.entry_bp.take() {
        vm.machine.mem.write_raw(a, &[b])?;
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
