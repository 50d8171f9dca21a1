//! Process calls: signal actions and masks (delivery: signals.rs), identity, time and sleeping, limits,
//! thread-local bases, random bytes (threads and futexes: threads.rs).

use std::time::{Duration, Instant};

use edgevm_kvm::{GuestMemory, KvmError, Vcpu};

use super::{signals, threads, wr, LinuxState, SyscallOutcome};
use crate::errno::*;
use crate::layout;
use crate::linux_abi::{get, put, Rlimit, Timespec, Timeval};

impl LinuxState {
    /// The process calls: Err(Continue) for calls not emulated (ENOSYS), Err(outcome) for
    /// calls that end the run.
    #[allow(clippy::type_complexity)]
    pub(super) fn process_call(
        &mut self,
        nr: i64,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let v = match nr {
            libc::SYS_rt_sigaction => Ok(self.sys_rt_sigaction(a, mem)),
            libc::SYS_rt_sigprocmask => return self.sys_rt_sigprocmask(a, cpu, mem),
            libc::SYS_sigaltstack => Ok(self.sys_sigaltstack(a[0], a[1], cpu, mem)),
            libc::SYS_rt_sigreturn => return self.sys_rt_sigreturn(cpu, mem),
            libc::SYS_sched_yield => Ok(self.sys_sched_yield(cpu, mem)?),
            libc::SYS_nanosleep => return self.sys_nanosleep(a[0], cpu, mem, None),
            libc::SYS_clock_nanosleep => {
                let abs = if a[1] & 1 != 0 { Some(a[0]) } else { None };
                return self.sys_nanosleep(a[2], cpu, mem, abs);
            }
            libc::SYS_getpid => Ok(1),
            libc::SYS_gettid => Ok(i64::from(self.tid())),
            libc::SYS_clone => Ok(self.sys_clone(a, cpu, mem)?),
            libc::SYS_clone3 => Ok(self.sys_clone3(a, cpu, mem)?),
            libc::SYS_getuid
            | libc::SYS_getgid
            | libc::SYS_geteuid
            | libc::SYS_getegid
            | libc::SYS_getppid => Ok(0),
            libc::SYS_exit_group => Err(SyscallOutcome::Exit((a[0] & 0xFF) as i32)),
            libc::SYS_exit => return self.sys_exit_thread((a[0] & 0xFF) as i32, cpu, mem),
            libc::SYS_kill => {
                if !(-1..=1).contains(&(a[0] as i64)) {
                    Ok(-ESRCH)
                } else {
                    let cur = self.threads.cur;
                    return self.sys_signal(cur, a[1] as i64, signals::SI_USER, cpu, mem);
                }
            }
            libc::SYS_tkill => return self.sys_tkill(a[0] as i64, a[1] as i64, cpu, mem),
            libc::SYS_tgkill => {
                if a[0] as i64 != 1 {
                    Ok(-ESRCH)
                } else {
                    return self.sys_tkill(a[1] as i64, a[2] as i64, cpu, mem);
                }
            }
            libc::SYS_uname => Ok(self.sys_uname(a[0], mem)),
            libc::SYS_gettimeofday => Ok(self.sys_gettimeofday(a[0], a[1], mem)),
            libc::SYS_time => Ok(self.sys_time(a[0], mem)),
            libc::SYS_clock_gettime => Ok(self.sys_clock_gettime(a[0], a[1], mem)),
            libc::SYS_clock_getres => Ok(if a[1] != 0 {
                put(
                    mem,
                    a[1],
                    &Timespec {
                        tv_sec: 0,
                        tv_nsec: 1,
                    },
                )
            } else {
                0
            }),
            libc::SYS_getrlimit => Ok(self.sys_prlimit(0, a[0], a[1], mem)),
            // Accepted and ignored, as prlimit's new limits (Go's runtime raises
            // RLIMIT_NOFILE at start).
            libc::SYS_setrlimit => Ok(if a[0] > 15 {
                -EINVAL
            } else if get::<Rlimit>(mem, a[1]).is_none() {
                -EFAULT
            } else {
                0
            }),
            libc::SYS_prlimit64 => Ok(self.sys_prlimit(a[0], a[1], a[3], mem)),
            libc::SYS_arch_prctl => Ok(self.sys_arch_prctl(a[0], a[1], cpu, mem)?),
            libc::SYS_futex => return self.sys_futex(a, cpu, mem),
            libc::SYS_sched_getaffinity => Ok(self.sys_sched_getaffinity(a[1], a[2], mem)),
            libc::SYS_set_tid_address => {
                self.threads.current_mut().clear_tid = a[0];
                Ok(i64::from(self.tid()))
            }
            libc::SYS_set_robust_list => Ok(if a[1] != 24 {
                -EINVAL
            } else {
                self.robust_list = a[0];
                0
            }),
            libc::SYS_getcpu => Ok(getcpu(a, mem)),
            libc::SYS_getrandom => Ok(self.sys_getrandom(a[0], a[1], mem)),
            libc::SYS_rseq => Ok(self.sys_rseq(a, mem)),
            libc::SYS_setitimer => Ok(self.sys_setitimer(a[0], a[1], a[2], mem)),
            libc::SYS_getitimer => Ok(self.sys_getitimer(a[0], a[1], mem)),
            libc::SYS_alarm => Ok(self.sys_alarm(a[0])),
            libc::SYS_timer_create => Ok(self.sys_timer_create(a[0], a[1], a[2], mem)),
            libc::SYS_timer_settime => Ok(self.sys_timer_settime(a, mem)),
            libc::SYS_timer_gettime => Ok(self.sys_timer_gettime(a[0], a[1], mem)),
            libc::SYS_timer_getoverrun => Ok(self.sys_timer_getoverrun(a[0])),
            libc::SYS_timer_delete => Ok(self.sys_timer_delete(a[0])),
            libc::SYS_pause => return self.sys_pause(cpu, mem),
            libc::SYS_rt_sigsuspend => {
                let e = self.use_call_mask(a[0], a[1], mem);
                if e != 0 || a[0] == 0 {
                    return Ok(Ok(if e != 0 { e } else { -EFAULT }));
                }
                if self.signal_ready() {
                    return Ok(Ok(-EINTR));
                }
                return self.sys_pause(cpu, mem);
            }
            libc::SYS_rt_sigtimedwait => return self.sys_rt_sigtimedwait(a, cpu, mem),
            _ => Err(SyscallOutcome::Continue),
        };
        Ok(v)
    }

    fn sys_rt_sigaction(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        let (sig, act, oact) = (a[0], a[1], a[2]);
        if sig == 0 || sig > 64 || (act != 0 && (sig == 9 || sig == 19)) {
            return -EINVAL;
        }
        if oact != 0 {
            let old = self.sigactions.get(&sig).copied().unwrap_or([0; 32]);
            if mem.write(oact, &old).is_err() {
                return -EFAULT;
            }
        }
        if act != 0 {
            let mut new = [0u8; 32];
            if mem.read(act, &mut new).is_err() {
                return -EFAULT;
            }
            self.sigactions.insert(sig, new);
        }
        0
    }

    #[allow(clippy::type_complexity)]
    fn sys_rt_sigprocmask(
        &mut self,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let (how, set, oset) = (a[0], a[1], a[2]);
        if set != 0 && how > 2 {
            return Ok(Ok(-EINVAL));
        }
        let new = if set != 0 {
            let Ok(s) = mem.read_u64(set) else {
                return Ok(Ok(-EFAULT));
            };
            Some(s & !signals::UNBLOCKABLE)
        } else {
            None
        };
        if oset != 0 && mem.write_u64(oset, self.threads.current().sigmask).is_err() {
            return Ok(Ok(-EFAULT));
        }
        if let Some(s) = new {
            let mask = &mut self.threads.current_mut().sigmask;
            match how {
                0 => *mask |= s,
                1 => *mask &= !s,
                _ => *mask = s,
            }
            // A pending signal it unblocks runs now.
            let r = *cpu.regs();
            return self.deliver_pending(threads::after_syscall(&r, 0), true, cpu, mem);
        }
        Ok(Ok(0))
    }

    #[allow(clippy::type_complexity)]
    fn sys_tkill(
        &mut self,
        tid: i64,
        sig: i64,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let Some(t) = self.thread_index(tid) else {
            return Ok(Ok(-ESRCH));
        };
        self.sys_signal(t, sig, signals::SI_TKILL, cpu, mem)
    }

    #[allow(clippy::type_complexity)]
    fn sys_signal(
        &mut self,
        t: usize,
        sig: i64,
        code: i32,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        if !(0..=64).contains(&sig) {
            return Ok(Ok(-EINVAL));
        }
        if sig == 0 {
            return Ok(Ok(0));
        }
        self.send_signal(t, sig as u64, code, cpu, mem)
    }

    fn sys_uname(&mut self, buf: u64, mem: &mut GuestMemory) -> i64 {
        let mut u = [0u8; 65 * 6];
        for (i, s) in [
            "Linux",
            "edgevm",
            "6.1.0-edgevm",
            "#1 SMP edgevm",
            "x86_64",
            "(none)",
        ]
        .iter()
        .enumerate()
        {
            u[i * 65..i * 65 + s.len()].copy_from_slice(s.as_bytes());
        }
        wr(mem, buf, &u)
    }

    fn sys_gettimeofday(&mut self, tv: u64, tz: u64, mem: &mut GuestMemory) -> i64 {
        let (s, ns) = host_clock(libc::CLOCK_REALTIME);
        if tv != 0 {
            let t = Timeval {
                tv_sec: s,
                tv_usec: ns / 1000,
            };
            if put(mem, tv, &t) != 0 {
                return -EFAULT;
            }
        }
        if tz != 0 && mem.write(tz, &[0u8; 8]).is_err() {
            return -EFAULT;
        }
        0
    }

    fn sys_time(&mut self, tloc: u64, mem: &mut GuestMemory) -> i64 {
        let (s, _) = host_clock(libc::CLOCK_REALTIME);
        if tloc != 0 && mem.write_u64(tloc, s as u64).is_err() {
            return -EFAULT;
        }
        s
    }

    fn sys_clock_gettime(&mut self, clk: u64, tp: u64, mem: &mut GuestMemory) -> i64 {
        if clk > 11 {
            return -EINVAL;
        }
        let (s, ns) = host_clock(clk as libc::clockid_t);
        put(
            mem,
            tp,
            &Timespec {
                tv_sec: s,
                tv_nsec: ns,
            },
        )
    }

    #[allow(clippy::type_complexity)]
    fn sys_nanosleep(
        &mut self,
        req: u64,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        abs_clock: Option<u64>,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let Some(Timespec {
            tv_sec: s,
            tv_nsec: ns,
        }) = get(mem, req)
        else {
            return Ok(Ok(-EFAULT));
        };
        if s < 0 || !(0..1_000_000_000).contains(&ns) {
            return Ok(Ok(-EINVAL));
        }
        let mut dur = Duration::new(s as u64, ns as u32);
        if let Some(clk) = abs_clock {
            let (ns_, nns) = host_clock(clk as libc::clockid_t);
            let now = Duration::new(ns_.max(0) as u64, nns as u32);
            dur = dur.saturating_sub(now);
        }
        if self.thread_count() > 1 || self.next_timer().is_some() {
            // The other threads run meanwhile, a timer's signal ends the sleep.
            return self.sleep_thread(dur.min(Duration::from_secs(1 << 32)), cpu, mem);
        }
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if dur > left {
                std::thread::sleep(left);
                return Ok(Err(SyscallOutcome::DeadlineExceeded));
            }
        }
        std::thread::sleep(dur);
        Ok(Ok(0))
    }

    fn sys_sched_getaffinity(&mut self, len: u64, mask: u64, mem: &mut GuestMemory) -> i64 {
        if len < 8 {
            return -EINVAL;
        }
        match mem.write_u64(mask, 1) {
            Ok(()) => 8,
            Err(_) => -EFAULT,
        }
    }

    fn sys_prlimit(&mut self, pid: u64, resource: u64, old: u64, mem: &mut GuestMemory) -> i64 {
        if pid != 0 && pid != 1 {
            return -ESRCH;
        }
        if resource > 15 {
            return -EINVAL;
        }
        // New limits are accepted and ignored: edgevm's limits come from the configuration.
        if old == 0 {
            return 0;
        }
        self.write_rlimit(resource, old, mem)
    }

    fn sys_arch_prctl(
        &mut self,
        code: u64,
        addr: u64,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<i64, KvmError> {
        // As Linux: a base at or above the top of the user address space is refused.
        const TASK_SIZE_MAX: u64 = (1 << 47) - 4096;
        if matches!(code, 0x1001 | 0x1002) && addr >= TASK_SIZE_MAX {
            return Ok(-EPERM);
        }
        Ok(match code {
            0x1001 => {
                cpu.set_gs_base(addr)?;
                0
            }
            0x1002 => {
                cpu.set_fs_base(addr)?;
                0
            }
            0x1003 => wr(mem, addr, &cpu.fs_base().to_le_bytes()),
            0x1004 => wr(mem, addr, &cpu.gs_base().to_le_bytes()),
            _ => -EINVAL,
        })
    }

    fn sys_getrandom(&mut self, buf: u64, len: u64, mem: &mut GuestMemory) -> i64 {
        let len = len.min(32 << 20) as usize;
        if !mem.contains(buf, len) {
            return -EFAULT;
        }
        // In pieces: no 32 MiB host buffer for a 32 MiB request.
        let mut data = vec![0u8; len.min(64 << 10)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(data.len());
            fill_random(&mut data[..n]);
            if mem.write(buf + done as u64, &data[..n]).is_err() {
                return -EFAULT;
            }
            done += n;
        }
        len as i64
    }

    fn sys_rseq(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const RSEQ_FLAG_UNREGISTER: u64 = 1;
        if a[2] & RSEQ_FLAG_UNREGISTER != 0 {
            self.rseq = 0;
            return 0;
        }
        if a[1] < 32 {
            return -EINVAL;
        }
        // One vCPU: the program always runs on CPU 0. cpu_id_start and cpu_id.
        let r = wr(mem, a[0], &[0u8; 8]);
        if r == 0 {
            self.rseq = a[0];
        }
        r
    }
}

/// getrlimit/prlimit64 values.
impl LinuxState {
    pub(super) fn rlimit(&self, resource: u64) -> (u64, u64) {
        const INF: u64 = u64::MAX;
        match resource {
            3 => (layout::STACK_SIZE, layout::STACK_SIZE), // RLIMIT_STACK
            7 => (1024, 4096),                             // RLIMIT_NOFILE
            2 | 9 => (self.cfg.max_memory, self.cfg.max_memory), // RLIMIT_DATA, RLIMIT_AS
            _ => (INF, INF),
        }
    }

    /// Fill an rlimit struct for `resource` at `old`.
    pub fn write_rlimit(&self, resource: u64, old: u64, mem: &mut GuestMemory) -> i64 {
        let (cur, max) = self.rlimit(resource);
        put(mem, old, &Rlimit { cur, max })
    }
}

/// The time of `clk`: what the guests' vDSO computes, for the clocks it answers (so a program
/// sees one clock whether it asks the vDSO or makes the system call), else the host's.
pub(super) fn host_clock(clk: libc::clockid_t) -> (i64, i64) {
    if let Some(t) = edgevm_kvm::vdso::clock(clk) {
        return t;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    let r = unsafe { libc::clock_gettime(clk, &mut ts) };
    if r != 0 {
        // SAFETY: as above, with a clock that always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    }
    (ts.tv_sec, ts.tv_nsec)
}

/// Fill `buf` with cryptographically secure random bytes. Small requests (the per-request
/// seed, a program's usual getrandom) come from the thread's ChaCha generator of the `rand`
/// crate (seeded from the OS and reseeded periodically): no system call (getrandom(2) took
/// ~0.45 µs of a ~35 µs hello request cycle here). Large ones (a guest may ask for up to
/// 32 MiB) go to the kernel, which is faster at bulk and does not depend on how this binary
/// was optimized (an unoptimized test build made 32 MiB in seconds, past request deadlines).
pub fn fill_random(buf: &mut [u8]) {
    if buf.len() <= 4096 {
        rand::RngCore::fill_bytes(&mut rand::rng(), buf);
        return;
    }
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most buf.len()-done bytes into the slice's remaining part.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            // Never leave predictable bytes: fall back to the generator for the rest.
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf[done..]);
            return;
        }
        done += n as usize;
    }
}

/// getcpu: CPU and node 0.
fn getcpu(a: [u64; 6], mem: &mut GuestMemory) -> i64 {
    for p in [a[0], a[1]] {
        if p != 0 && mem.write(p, &0u32.to_le_bytes()).is_err() {
            return -EFAULT;
        }
    }
    0
}
