//! SMP: the extra vCPUs of a request VM that run `multiprocess*` workers (docs/DESIGN.md,
//! "SMP (multiprocess)").
//!
//! A VM gets its extra vCPUs the first time a request calls `multiprocess*` (never on the
//! ordinary path): vCPU `k` (1..=smp) of the same KVM VM, each on its own host thread, which
//! waits for jobs. A job enters the worker's function through the request entry stub (the
//! frozen FPU/SSE/AVX image, the FS base of the caller, GS at the vCPU's own `vcpuid()` block)
//! on its own stack, and ends when the function returns, or when the worker calls
//! `multiprocess_wait()` (the end of a `multiprocess_clone` worker). A worker runs plain
//! computation over the VM's memory: every system call but `sched_yield` and every kvm_api
//! call but `multiprocess_wait` is refused (the request fails with the call's name), because
//! the emulated process (descriptors, threads, memory maps, page tables) belongs to the main
//! vCPU's thread. Each job is bounded by the request's deadline (its own thread's timer), a
//! crash or a refusal fails the request, and every worker is stopped before the request's
//! response is taken and its VM reset.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgevm_abi::crash::CrashReport;
use edgevm_abi::guest_abi::nr;
use edgevm_abi::layout;
use edgevm_kvm::{kvm_regs, kvm_sregs, Exit, KvmVcpu, SmpVcpu};

use crate::request_vm::FailureKind;
use crate::timer;

/// Largest `smp` (extra vCPUs per VM), as the reference.
pub const MAX_SMP: u32 = 16;
/// Stack of each `multiprocess`/`multiprocess_array` worker, as the reference.
pub const WORKER_STACK: u64 = 512 << 10;
/// How long stopping a worker may take before the VM is given up.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// SYSRETQ's RFLAGS mask (as the Linux emulation's).
const SYSRET_RFLAGS_MASK: u64 = 0x3C_7FD7;

/// Why a worker did not finish its function.
#[derive(Debug, Clone)]
pub(crate) struct WorkerError {
    /// The vCPU id (1..).
    pub vcpu: u32,
    /// What happened.
    pub message: String,
    /// A CPU exception (the symbol is added on the request's thread).
    pub crash: Option<CrashReport>,
    /// Statistics kind.
    pub kind: FailureKind,
}

/// One `multiprocess*` call: how many workers still run and the first failure.
struct Batch {
    state: Mutex<BatchState>,
    done: Condvar,
    /// The request ends: workers stop at once.
    stop: AtomicBool,
}

#[derive(Default)]
struct BatchState {
    running: usize,
    error: Option<WorkerError>,
    /// A worker vCPU could not be brought back to a clean state: the VM must be replaced.
    stale: bool,
}

impl Batch {
    fn finish(&self, r: Result<(), WorkerError>, stale: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.running = s.running.saturating_sub(1);
        s.stale |= stale;
        if let Err(e) = r {
            if s.error.is_none() {
                s.error = Some(e);
            }
        }
        self.done.notify_all();
    }
}

struct Job {
    regs: kvm_regs,
    sregs: kvm_sregs,
    deadline: Instant,
    batch: Arc<Batch>,
}

/// How another thread stops a worker's vCPU: its `immediate_exit` byte and its thread.
struct Kick {
    immediate_exit: usize,
    tid: AtomicI32,
}

impl Kick {
    fn kick(&self) {
        // SAFETY: the byte is in the kvm_run mapping of the worker's vCPU, which lives until
        // the worker thread ends; `Smp` joins that thread before it is dropped. A volatile
        // byte store races with KVM only as the signal handler's does (KVM reads it at entry).
        unsafe { std::ptr::write_volatile(self.immediate_exit as *mut u8, 1) };
        let tid = self.tid.load(Ordering::SeqCst);
        if tid > 0 {
            // SAFETY: tgkill with this process's id and a thread id of it; the signal's
            // handler (timer.rs) only stores a byte.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    tid,
                    timer::KICK_SIGNAL as libc::c_int,
                )
            };
        }
    }
}

/// Read access to guest memory for a worker thread's crash report (the exception frame).
#[derive(Clone, Copy)]
struct MemRead {
    base: usize,
    size: u64,
}

impl MemRead {
    fn u64_at(&self, addr: u64) -> Option<u64> {
        if addr.checked_add(8)? > self.size {
            return None;
        }
        // SAFETY: in bounds of the guest memory mapping, which outlives every worker thread
        // (the VM drops `Smp`, joining them, before its memory); guest bytes are plain data.
        Some(unsafe { std::ptr::read_unaligned((self.base as u64 + addr) as *const u64) })
    }
}

struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    kick: Arc<Kick>,
}

/// A VM's extra vCPUs and the `multiprocess*` call running on them.
pub struct Smp {
    workers: Vec<Worker>,
    batch: Option<Arc<Batch>>,
    /// Stacks of this request's `multiprocess`/`multiprocess_array` workers: (base, count).
    pub(crate) stacks: Option<(u64, u32)>,
}

impl Smp {
    pub(crate) fn new() -> Smp {
        Smp {
            workers: Vec::new(),
            batch: None,
            stacks: None,
        }
    }

    /// Make extra vCPUs up to `n` in total (ids 1..=n) on `cpu`'s VM, with `template`'s
    /// special registers and the syscall MSRs.
    pub(crate) fn ensure(
        &mut self,
        cpu: &KvmVcpu,
        n: u32,
        template: &kvm_sregs,
        mem: (usize, u64),
    ) -> Result<(), String> {
        while (self.workers.len() as u32) < n {
            let id = self.workers.len() as u32 + 1;
            let mut v = cpu
                .add_vcpu(u64::from(id))
                .map_err(|e| format!("cannot make vCPU {id}: {e}"))?;
            v.set_sregs(template)
                .and_then(|()| v.copy_xcr0())
                .map_err(|e| format!("cannot set up vCPU {id}: {e}"))?;
            for (msr, val) in edgevm_abi::cpu::SETUP_MSRS {
                v.set_msr(msr, val)
                    .map_err(|e| format!("cannot set up vCPU {id}: {e}"))?;
            }
            let kick = Arc::new(Kick {
                immediate_exit: v.immediate_exit_ptr() as usize,
                tid: AtomicI32::new(0),
            });
            let (tx, rx) = mpsc::channel::<Job>();
            let k = kick.clone();
            let memr = MemRead {
                base: mem.0,
                size: mem.1,
            };
            let thread = std::thread::Builder::new()
                .name(format!("edgevm-vcpu{id}"))
                .spawn(move || worker_main(id, v, rx, k, memr))
                .map_err(|e| format!("cannot start the thread of vCPU {id}: {e}"))?;
            self.workers.push(Worker {
                tx: Some(tx),
                thread: Some(thread),
                kick,
            });
        }
        Ok(())
    }

    /// Whether workers of a `multiprocess*` call may still run (not waited for yet).
    pub fn active(&self) -> bool {
        self.batch.is_some()
    }

    /// Start one job per entry of `jobs` (vCPU ids 1.., registers, special registers).
    pub(crate) fn start(&mut self, jobs: Vec<(kvm_regs, kvm_sregs)>, deadline: Instant) {
        let batch = Arc::new(Batch {
            state: Mutex::new(BatchState {
                running: jobs.len(),
                ..Default::default()
            }),
            done: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        for (w, (regs, sregs)) in self.workers.iter().zip(jobs) {
            let job = Job {
                regs,
                sregs,
                deadline,
                batch: batch.clone(),
            };
            let sent = w.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
            if !sent {
                batch.finish(
                    Err(WorkerError {
                        vcpu: 0,
                        message: "a worker thread is gone".into(),
                        crash: None,
                        kind: FailureKind::Other,
                    }),
                    false,
                );
            }
        }
        self.batch = Some(batch);
    }

    /// Wait for the workers of the running call, at most `limit` (None: until they end).
    /// Ok(None): still running after `limit`; Ok(Some(stale)) when all ended well (stale: a
    /// vCPU must be replaced); Err: the first worker's failure (the others are stopped).
    pub(crate) fn wait(&mut self, limit: Option<Duration>) -> Result<Option<bool>, WorkerError> {
        let Some(batch) = self.batch.clone() else {
            return Ok(Some(false));
        };
        let until = limit.map(|l| Instant::now() + l);
        let mut s = batch.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.running > 0 && s.error.is_none() {
            match until {
                Some(u) => {
                    let now = Instant::now();
                    if now >= u {
                        return Ok(None);
                    }
                    s = batch
                        .done
                        .wait_timeout(s, u - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => s = batch.done.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
        let err = s.error.clone();
        let stale = s.stale;
        drop(s);
        if let Some(e) = err {
            self.stop();
            return Err(e);
        }
        self.batch = None;
        Ok(Some(stale))
    }

    /// Stop every worker of the running call (the request ends) and wait until they have
    /// stopped; true when a vCPU could not be stopped or cleaned (the VM must be replaced).
    pub(crate) fn stop(&mut self) -> bool {
        let Some(batch) = self.batch.take() else {
            return false;
        };
        batch.stop.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.kick.kick();
        }
        let until = Instant::now() + STOP_GRACE;
        let mut s = batch.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.running > 0 {
            let now = Instant::now();
            if now >= until {
                tracing::error!("multiprocess workers did not stop within {STOP_GRACE:?}");
                return true;
            }
            s = batch
                .done
                .wait_timeout(s, (until - now).min(Duration::from_millis(20)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if s.running > 0 {
                // A kick that landed between a worker's check and its next KVM_RUN.
                for w in &self.workers {
                    w.kick.kick();
                }
            }
        }
        s.stale
    }
}

impl Drop for Smp {
    fn drop(&mut self) {
        self.stop();
        for w in &mut self.workers {
            w.tx = None;
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn worker_main(id: u32, mut cpu: SmpVcpu, rx: mpsc::Receiver<Job>, kick: Arc<Kick>, mem: MemRead) {
    kick.tid
        .store(nix::unistd::gettid().as_raw(), Ordering::SeqCst);
    while let Ok(job) = rx.recv() {
        let r = run_job(id, &mut cpu, &job, mem);
        timer::disarm();
        cpu.clear_immediate_exit();
        // Leave no instruction half done for the next job (see KvmVcpu::settle).
        let stale = !cpu.settle();
        job.batch.finish(r, stale);
    }
}

fn refused(vcpu: u32, what: String) -> WorkerError {
    WorkerError {
        vcpu,
        message: format!(
            "{what} is not allowed on a multiprocess worker (workers may compute, call \
             sched_yield() and multiprocess_wait(), and return)"
        ),
        crash: None,
        kind: FailureKind::Api,
    }
}

fn run_job(id: u32, cpu: &mut SmpVcpu, job: &Job, mem: MemRead) -> Result<(), WorkerError> {
    let other = |message: String| WorkerError {
        vcpu: id,
        message,
        crash: None,
        kind: FailureKind::Other,
    };
    cpu.set_sregs(&job.sregs)
        .map_err(|e| other(e.to_string()))?;
    *cpu.regs_mut() = job.regs;
    let ie = cpu.immediate_exit_ptr();
    loop {
        if job.batch.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= job.deadline {
            return Err(WorkerError {
                vcpu: id,
                message: "timed out (the request's max_request_time)".into(),
                crash: None,
                kind: FailureKind::Timeout,
            });
        }
        timer::arm(ie, job.deadline - now).map_err(|e| other(e.to_string()))?;
        let exit = cpu.run().map_err(|e| other(e.to_string()))?;
        match exit {
            Exit::IoOut { port, value, .. } if port == layout::API_PORT => {
                if value == nr::RETURNED || value == nr::MULTIPROCESS_WAIT {
                    return Ok(());
                }
                return Err(refused(
                    id,
                    format!("kvm_api call {} ({value:#x})", edgevm_abi::api::name(value)),
                ));
            }
            Exit::IoOut { port, .. } if port == layout::SYSCALL_PORT => {
                let r = *cpu.regs();
                if r.rax != libc::SYS_sched_yield as u64 {
                    return Err(refused(
                        id,
                        format!(
                            "system call {} ({})",
                            edgevm_abi::syscall_name(r.rax),
                            r.rax
                        ),
                    ));
                }
                std::thread::yield_now();
                let cpl0 = cpu.sregs().map(|s| s.cs.dpl == 0).unwrap_or(false);
                let regs = cpu.regs_mut();
                regs.rax = 0;
                if !cpl0 {
                    // SYSCALL stayed at CPL3 (kvm_pvm): do what SYSRETQ would.
                    regs.rip = r.rcx;
                    regs.rflags = (r.r11 & SYSRET_RFLAGS_MASK) | 2;
                }
            }
            Exit::IoOut { port, .. } if port == layout::EXCEPTION_PORT => {
                let report = crash_report(cpu, mem);
                return Err(WorkerError {
                    vcpu: id,
                    message: format!("crashed: {report}"),
                    crash: Some(report),
                    kind: FailureKind::Exception,
                });
            }
            Exit::Interrupted => cpu.clear_immediate_exit(),
            Exit::Shutdown => return Err(other("triple fault".into())),
            other_exit => {
                return Err(other(format!(
                    "unexpected VM exit {other_exit:?} at RIP {:#x}",
                    cpu.regs().rip
                )))
            }
        }
    }
}

/// The exception frame the CPL0 stub left (as `edgevm_abi::crash::decode_exception`, with
/// this thread's view of memory; the symbol is added later).
fn crash_report(cpu: &mut SmpVcpu, mem: MemRead) -> CrashReport {
    let rsp = cpu.regs().rsp;
    let vector = mem.u64_at(rsp).unwrap_or(255) as u8;
    let mut frame = rsp.wrapping_add(8);
    let error_code = if matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30) {
        let e = mem.u64_at(frame);
        frame = frame.wrapping_add(8);
        e
    } else {
        None
    };
    let cr2 = (vector == 14).then(|| cpu.sregs().map(|s| s.cr2).unwrap_or(0));
    CrashReport {
        vector,
        error_code,
        rip: mem.u64_at(frame).unwrap_or(0),
        rsp: mem.u64_at(frame.wrapping_add(24)).unwrap_or(0),
        cr2,
        symbol: None,
        stack_overflow: false,
        // The low system pages; a worker's fault in the page-table area reads "read-only".
        system_area: cr2.is_some_and(|a| a < layout::IO_AREA),
    }
}
