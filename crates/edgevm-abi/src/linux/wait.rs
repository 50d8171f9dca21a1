//! Waiting for descriptors: how a call that must wait for readiness (a blocking read of an
//! empty pipe, poll, epoll_wait, ...) blocks its thread.
//!
//! The call is tried; when it cannot complete, its thread waits (`Wait::Io`) for the
//! descriptors it named and the scheduler runs another thread. When one of them becomes ready
//! (or the call's timeout passes) the thread is made runnable at its `syscall` instruction
//! again (RIP - 2, RAX = the call number), so the call runs again on its own registers and
//! completes, or waits again with the same deadline (kept in the thread's `restart`). With no
//! thread to run, the host waits: on the host descriptors behind the guest's sockets and
//! until the earliest timeout or timer; never past the run's deadline. Nothing to wait for at
//! all (every thread waits on something only another thread could change) is a deadlock.

use std::time::{Duration, Instant};

use edgevm_kvm::{kvm_regs, GuestMemory, KvmError, Vcpu};

use super::fds::Interest;
use super::threads::{after_syscall, Wait};
use super::{LinuxState, SyscallOutcome};

/// How long a call may wait: None forever, Some(ZERO) not at all.
pub(super) type Timeout = Option<Duration>;

/// What one try of a waiting call found.
pub(super) enum Io {
    /// The call completes with this value.
    Done(i64),
    /// Nothing ready: wait for these descriptors.
    Wait(Interest),
}

/// Registers that make a thread run the system call in `r` again when it resumes.
fn restart_regs(r: &kvm_regs) -> kvm_regs {
    let mut u = after_syscall(r, r.rax as i64);
    u.rip = r.rcx.wrapping_sub(2);
    u
}

impl LinuxState {
    /// Run the call `nr` (tried by `f`; its `bool` says the timeout has passed and it must
    /// answer now) until it completes, blocking its thread while it waits (see the module).
    pub(super) fn wait_io<F>(
        &mut self,
        nr: u64,
        timeout: Timeout,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        mut f: F,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError>
    where
        F: FnMut(&mut LinuxState, &mut GuestMemory, bool) -> Io,
    {
        let until = match self.threads.current_mut().restart.take() {
            Some((n, u)) if n == nr => u,
            _ => timeout.map(|t| Instant::now() + t.min(Duration::from_secs(1 << 32))),
        };
        loop {
            let last = until.is_some_and(|u| Instant::now() >= u);
            // A signalfd is ready for the thread that has its signals pending.
            self.fds.sig_pending.set(self.threads.current().pending);
            let interest = match f(self, mem, last) {
                Io::Done(v) => return Ok(Ok(v)),
                Io::Wait(i) => i,
            };
            let r = *cpu.regs();
            {
                let t = self.threads.current_mut();
                t.regs = restart_regs(&r);
                t.wait = Wait::Io;
                t.io = interest;
                t.until = until;
                t.restart = Some((nr, until));
            }
            let next = self.pick_next();
            let cur = self.threads.cur;
            let next = match next {
                Ok(n) => n,
                Err(e) => {
                    let t = self.threads.current_mut();
                    t.wait = Wait::Runnable;
                    t.restart = None;
                    return Ok(Err(e));
                }
            };
            if next == cur {
                let t = self.threads.current_mut();
                t.wait = Wait::Runnable;
                t.io.clear();
                t.restart = None;
                if self.signal_ready() {
                    // A timer's signal: the call ends with EINTR, its handler runs next.
                    return Ok(Ok(-crate::errno::EINTR));
                }
                continue;
            }
            self.switch_to(cpu, mem, next, true)?;
            return Ok(Ok(0));
        }
    }

    /// Make runnable every thread waiting for descriptors that are ready now (or whose
    /// timeout passed): they run their call again.
    pub(super) fn wake_ready(&mut self) {
        let now = Instant::now();
        let fds = &self.fds;
        for t in self.threads.list.iter_mut() {
            if t.wait != Wait::Io {
                continue;
            }
            fds.sig_pending.set(t.pending);
            let due = t.until.is_some_and(|u| u <= now)
                || t.io.iter().any(|&(fd, ev)| fds.fd_ready(fd, ev, now) != 0);
            if due {
                t.wait = Wait::Runnable;
                t.io.clear();
            }
        }
    }

    /// What the host waits on when no thread can run: the host descriptors behind what the
    /// waiting threads wait for, and the earliest timer among those.
    pub(super) fn io_waits(&self) -> (Vec<libc::pollfd>, Option<Instant>) {
        let mut host = Vec::new();
        let mut at: Option<Instant> = None;
        for t in &self.threads.list {
            if t.wait != Wait::Io {
                continue;
            }
            self.fds.host_fds(&t.io, &mut host);
            if let Some(n) = self.fds.next_expiry(&t.io) {
                at = Some(at.map_or(n, |a| a.min(n)));
            }
        }
        (host, at)
    }
}

/// Wait on the host until one of `fds` is ready or `until` (None: only for the descriptors).
pub(super) fn host_wait(fds: &mut [libc::pollfd], until: Option<Instant>) {
    let now = Instant::now();
    if fds.is_empty() {
        if let Some(u) = until {
            std::thread::sleep(u.saturating_duration_since(now));
        }
        return;
    }
    let ms: i32 = match until {
        None => -1,
        Some(u) => {
            let d = u.saturating_duration_since(now);
            // Round up: waking a little late is harmless, early means another round.
            d.as_millis()
                .saturating_add(u128::from(d.subsec_nanos() % 1_000_000 != 0))
                .min(i32::MAX as u128) as i32
        }
    };
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

impl LinuxState {
    /// The calls that may wait for descriptors: the readiness calls, and reads and writes of
    /// blocking pipes, eventfds and timerfds. None for every other call.
    pub(super) fn waiting_call(
        &mut self,
        nr: i64,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        out: &mut dyn super::Output,
    ) -> Option<Result<Result<i64, SyscallOutcome>, KvmError>> {
        if let Some(r) = self.readiness_call(nr, a, cpu, mem) {
            return Some(r);
        }
        if let Some(r) = self.socket_call(nr, a, cpu, mem, out) {
            return Some(r);
        }
        let ev = self.blocking_io(nr, a)?;
        let fd = a[0] as i64 as i32;
        Some(self.wait_io(nr as u64, None, cpu, mem, |s, mem, _| {
            let v = match nr {
                libc::SYS_read => s.read(fd, a[1], a[2], mem, out),
                libc::SYS_write => s.write(fd, a[1], a[2], mem, out),
                libc::SYS_readv => s.vectored(fd, a[1], a[2], false, mem, out),
                _ => s.vectored(fd, a[1], a[2], true, mem, out),
            };
            if v == -crate::errno::EAGAIN {
                Io::Wait(vec![(fd, ev)])
            } else {
                Io::Done(v)
            }
        }))
    }

    /// The poll event a read or write on a blocking descriptor that may have to wait needs;
    /// None when the call never waits.
    fn blocking_io(&self, nr: i64, a: [u64; 6]) -> Option<u32> {
        use super::fds::{EPOLLIN, EPOLLOUT};
        let ev = match nr {
            libc::SYS_read | libc::SYS_readv => EPOLLIN,
            libc::SYS_write | libc::SYS_writev => EPOLLOUT,
            _ => return None,
        };
        self.fds.waits(a[0] as i64 as i32).then_some(ev)
    }

    /// Whether the call would wait now (for [`LinuxState::may_sleep`]).
    pub(super) fn io_would_wait(&self, nr: i64, a: [u64; 6], mem: &GuestMemory) -> bool {
        self.fds.sig_pending.set(self.threads.current().pending);
        if let Some(ev) = self.blocking_io(nr, a) {
            return self.fds.fd_ready(a[0] as i64 as i32, ev, Instant::now()) == 0;
        }
        self.readiness_would_wait(nr, a, mem)
    }
}
