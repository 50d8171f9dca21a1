//! Timer signals: `setitimer`/`getitimer`/`alarm` (ITIMER_REAL → SIGALRM, ITIMER_VIRTUAL →
//! SIGVTALRM, ITIMER_PROF → SIGPROF) and POSIX timers (`timer_create` with SIGEV_SIGNAL,
//! SIGEV_NONE or SIGEV_THREAD_ID, `timer_settime` relative or TIMER_ABSTIME, `timer_gettime`,
//! `timer_getoverrun`, `timer_delete`), and `pause`.
//!
//! Time is the VM's: every timer counts the time that passes while the program exists (the
//! VM has no separate CPU-time clock, so ITIMER_VIRTUAL/ITIMER_PROF and the CPU-time clocks
//! advance like CLOCK_MONOTONIC). Expired timers are seen at the next system call, at the run
//! timer's exit the runtime arms for [`LinuxState::next_timer`], and while every thread waits;
//! their signal goes to the thread named (SIGEV_THREAD_ID) or to a thread that does not block
//! it, interrupts a sleep or futex wait with `EINTR` when a handler runs, and is delivered as
//! any other signal (a signal already pending counts as an overrun, as on Linux). Bounded: at
//! most [`MAX_TIMERS`] POSIX timers per program, periods of at least [`MIN_INTERVAL`] (shorter
//! ones are raised to it), and at most one timer exit per [`MIN_INTERVAL`]. Timers are not
//! frozen with the program: a request starts with none and its own go at its reset.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgevm_kvm::{GuestMemory, KvmError, Vcpu};

use super::process::host_clock;
use super::signals::{SigInfo, SI_KERNEL, SI_TIMER};
use super::threads::Wait;
use super::{LinuxState, SyscallOutcome};
use crate::errno::*;
use crate::linux_abi::{get, put, Timespec, Timeval};

/// POSIX timers per program at once.
pub const MAX_TIMERS: usize = 32;
/// The shortest period a timer repeats with.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

/// One timer.
#[derive(Debug, Clone)]
struct Timer {
    /// Signal sent at expiry (0: SIGEV_NONE).
    sig: u64,
    /// SIGEV_THREAD_ID's thread, else None (the process).
    target: Option<u32>,
    /// si_value.
    value: u64,
    /// The clock TIMER_ABSTIME values are on.
    clock: i32,
    /// Next expiry (None: disarmed).
    next: Option<Instant>,
    interval: Duration,
    /// Expiries not delivered since the last delivery (timer_getoverrun).
    overrun: u32,
    /// The overrun count of the last delivery.
    last_overrun: u32,
}

/// A program's timers: ITIMER_REAL/VIRTUAL/PROF under keys -1/-2/-3, POSIX timers under
/// their ids (0..).
#[derive(Debug, Clone, Default)]
pub(super) struct Timers {
    list: BTreeMap<i32, Timer>,
    /// When timers last fired (the next timer exit comes MIN_INTERVAL later at the earliest).
    last_fire: Option<Instant>,
    /// Armed or disarmed since the runtime last looked (it re-arms its run timer).
    pub changed: bool,
}

fn dur_of(s: i64, ns: i64) -> Duration {
    Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
}

fn itimer_signal(which: u64) -> u64 {
    match which {
        0 => 14, // SIGALRM
        1 => 26, // SIGVTALRM
        _ => 27, // SIGPROF
    }
}

impl LinuxState {
    /// When the runtime should stop the guest next for a timer (None: no timer would send
    /// a signal now). A timer whose signal is still pending (blocked, or waiting for the
    /// program to leave a stub) needs no stop: its expiries become overruns when it fires
    /// next, and the guest runs on (a host slower than the timer's period cannot keep it
    /// from running).
    pub fn next_timer(&self) -> Option<Instant> {
        let pending = |t: &Timer| {
            let b = 1u64 << (t.sig - 1);
            match t.target {
                Some(tid) => self
                    .threads
                    .list
                    .iter()
                    .any(|th| th.tid == tid && th.pending & b != 0),
                None => self.threads.list.iter().any(|th| th.pending & b != 0),
            }
        };
        let at = self
            .timers
            .list
            .values()
            .filter(|t| t.sig != 0 && !pending(t))
            .filter_map(|t| t.next)
            .min()?;
        Some(match self.timers.last_fire {
            Some(l) => at.max(l + MIN_INTERVAL),
            None => at,
        })
    }

    /// Whether a timer was armed or disarmed since the last call (the runtime then re-arms
    /// its run timer for [`LinuxState::next_timer`]).
    pub fn take_timers_changed(&mut self) -> bool {
        std::mem::take(&mut self.timers.changed)
    }

    /// Timers are not part of a frozen program (see the module docs).
    pub fn clear_timers(&mut self) {
        self.timers = Timers::default();
    }

    /// Whether any timer exists (no clock read on a system call's path otherwise).
    pub(super) fn timers_armed(&self) -> bool {
        !self.timers.list.is_empty()
    }

    /// Whether a timer is due now.
    pub(super) fn timers_due(&self, now: Instant) -> bool {
        self.next_timer().is_some_and(|t| t <= now)
    }

    /// The run timer stopped the guest in user mode (not in a system call): fire due timers
    /// and run the handler of a signal now ready for the running thread. Err: the program
    /// ends (a timer signal with the default action).
    pub fn timer_tick(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<(), SyscallOutcome>, KvmError> {
        if !self.timers_due(Instant::now()) {
            return Ok(Ok(()));
        }
        if let Err(e) = self.fire_timers(Instant::now()) {
            return Ok(Err(e));
        }
        let th = self.threads.current();
        if th.pending & !th.sigmask == 0 || cpu.sregs()?.cs.dpl != 3 {
            // At CPL0 (a stub): the next system call or tick delivers it.
            return Ok(Ok(()));
        }
        let ctx = *cpu.regs();
        let r = self.deliver_pending(ctx, false, cpu, mem)?;
        self.switched = false;
        Ok(r.map(|_| ()))
    }

    /// Fire every due timer: its signal becomes pending in a thread (a waiting thread with a
    /// handler for it is woken with EINTR). Err: a signal whose default action ends the
    /// program.
    pub(super) fn fire_timers(&mut self, now: Instant) -> Result<(), SyscallOutcome> {
        let mut fired = Vec::new();
        for (&id, t) in self.timers.list.iter_mut() {
            let Some(next) = t.next.filter(|n| *n <= now) else {
                continue;
            };
            let mut late = 0u32;
            if t.interval.is_zero() {
                t.next = None;
            } else {
                let n = (now - next).as_nanos() / t.interval.as_nanos();
                late = n.min(u128::from(u32::MAX >> 1)) as u32;
                t.next = Some(next + t.interval * (late + 1));
            }
            if t.sig != 0 {
                fired.push((id, t.sig, t.target, t.value, late));
            }
        }
        self.timers.changed = true;
        for (id, sig, target, value, late) in fired {
            let t = match target {
                Some(tid) => match self.thread_index(i64::from(tid)) {
                    Some(t) => t,
                    None => continue,
                },
                None => self.process_signal_target(sig),
            };
            let th = &mut self.threads.list[t];
            let b = 1u64 << (sig - 1);
            if th.pending & b != 0 {
                // Not delivered yet: one more overrun.
                if let Some(tm) = self.timers.list.get_mut(&id) {
                    tm.overrun = tm.overrun.saturating_add(late + 1);
                }
                continue;
            }
            let overrun = self
                .timers
                .list
                .get_mut(&id)
                .map(|tm| {
                    let o = tm.overrun.saturating_add(late);
                    tm.overrun = 0;
                    tm.last_overrun = o;
                    o
                })
                .unwrap_or(0);
            let info = if id < 0 {
                SigInfo {
                    code: SI_KERNEL,
                    ..SigInfo::default()
                }
            } else {
                SigInfo {
                    code: SI_TIMER,
                    addr: value,
                    err: (id as u32 as u64) | (u64::from(overrun) << 32),
                    ..SigInfo::default()
                }
            };
            self.post_signal(t, sig, info)?;
        }
        // The next timer stop comes MIN_INTERVAL after this one's work, not its start.
        self.timers.last_fire = Some(Instant::now());
        Ok(())
    }

    /// The thread a process-directed signal goes to: the running one unless it blocks it,
    /// else a waiting one that does not, else the running one (pending until unblocked).
    fn process_signal_target(&self, sig: u64) -> usize {
        let b = 1u64 << (sig - 1);
        let cur = self.threads.cur;
        let list = &self.threads.list;
        if list[cur].sigmask & b == 0 && list[cur].wait == Wait::Runnable {
            return cur;
        }
        list.iter()
            .position(|t| t.sigmask & b == 0 && t.wait != Wait::Exited)
            .unwrap_or(cur)
    }

    /// setitimer(which, new, old).
    pub(super) fn sys_setitimer(
        &mut self,
        which: u64,
        new: u64,
        old: u64,
        mem: &mut GuestMemory,
    ) -> i64 {
        if which > 2 {
            return -EINVAL;
        }
        let set = if new != 0 {
            let Some(v) = get::<[Timeval; 2]>(mem, new) else {
                return -EFAULT;
            };
            if v.iter()
                .any(|t| t.tv_sec < 0 || !(0..1_000_000).contains(&t.tv_usec))
            {
                return -EINVAL;
            }
            Some((
                dur_of(v[0].tv_sec, v[0].tv_usec * 1000),
                dur_of(v[1].tv_sec, v[1].tv_usec * 1000),
            ))
        } else {
            None
        };
        if old != 0 && self.sys_getitimer(which, old, mem) != 0 {
            return -EFAULT;
        }
        if let Some((interval, value)) = set {
            self.arm(-1 - which as i32, value, interval, itimer_signal(which));
        }
        0
    }

    /// getitimer(which, cur).
    pub(super) fn sys_getitimer(&mut self, which: u64, cur: u64, mem: &mut GuestMemory) -> i64 {
        if which > 2 {
            return -EINVAL;
        }
        let (value, interval) = self.remaining(-1 - which as i32);
        let tv = |d: Duration| Timeval {
            tv_sec: d.as_secs() as i64,
            tv_usec: i64::from(d.subsec_micros()),
        };
        if put(mem, cur, &[tv(interval), tv(value)]) != 0 {
            return -EFAULT;
        }
        0
    }

    /// alarm(seconds): the seconds left of the previous alarm.
    pub(super) fn sys_alarm(&mut self, secs: u64) -> i64 {
        let (left, _) = self.remaining(-1);
        let mut old = left.as_secs() as i64;
        if left.subsec_micros() >= 500_000 || (old == 0 && !left.is_zero()) {
            old += 1;
        }
        let secs = secs.min(u64::from(u32::MAX));
        self.arm(-1, Duration::from_secs(secs), Duration::ZERO, 14);
        old
    }

    /// (time to the next expiry, period) of timer `id`; zero when disarmed.
    fn remaining(&self, id: i32) -> (Duration, Duration) {
        let now = Instant::now();
        match self.timers.list.get(&id) {
            Some(t) => {
                let left = match t.next {
                    // A periodic timer not fired yet (SIGEV_NONE, or its signal pending):
                    // the time to its next period.
                    Some(n) if n < now && !t.interval.is_zero() => {
                        let i = t.interval.as_nanos();
                        let into = (now - n).as_nanos() % i;
                        Duration::from_nanos((i - into) as u64)
                    }
                    Some(n) => n.saturating_duration_since(now),
                    None => Duration::ZERO,
                };
                (left, t.interval)
            }
            None => (Duration::ZERO, Duration::ZERO),
        }
    }

    /// Arm (value > 0) or disarm (value 0) timer `id` (an itimer is created on first use).
    fn arm(&mut self, id: i32, value: Duration, interval: Duration, sig: u64) {
        let t = self.timers.list.entry(id).or_insert(Timer {
            sig,
            target: None,
            value: 0,
            clock: 1,
            next: None,
            interval: Duration::ZERO,
            overrun: 0,
            last_overrun: 0,
        });
        if value.is_zero() {
            t.next = None;
            t.interval = Duration::ZERO;
        } else {
            t.next = Instant::now().checked_add(value.min(Duration::from_secs(1 << 40)));
            t.interval = if interval.is_zero() {
                interval
            } else {
                interval.max(MIN_INTERVAL)
            };
        }
        t.overrun = 0;
        self.timers.changed = true;
    }

    /// timer_create(clock, sigevent, timerid).
    pub(super) fn sys_timer_create(
        &mut self,
        clock: u64,
        sev: u64,
        out: u64,
        mem: &mut GuestMemory,
    ) -> i64 {
        let clock = clock as i64 as i32;
        if !matches!(clock, 0 | 1 | 2 | 3 | 7) {
            return -EINVAL;
        }
        let id = (0..MAX_TIMERS as i32).find(|i| !self.timers.list.contains_key(i));
        let (sig, target, value) = if sev == 0 {
            (14, None, id.unwrap_or(0) as u64)
        } else {
            let Some(raw) = get::<[u8; 20]>(mem, sev) else {
                return -EFAULT;
            };
            let value = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
            let signo = i32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let notify = i32::from_le_bytes(raw[12..16].try_into().unwrap_or_default());
            let tid = i32::from_le_bytes(raw[16..20].try_into().unwrap_or_default());
            match notify {
                SIGEV_NONE => (0, None, value),
                SIGEV_SIGNAL | SIGEV_THREAD_ID if !(1..=64).contains(&signo) => return -EINVAL,
                SIGEV_SIGNAL => (signo as u64, None, value),
                SIGEV_THREAD_ID => {
                    if self.thread_index(i64::from(tid)).is_none() {
                        return -EINVAL;
                    }
                    (signo as u64, Some(tid as u32), value)
                }
                _ => return -EINVAL,
            }
        };
        let Some(id) = id else {
            return -EAGAIN;
        };
        if mem.write(out, &id.to_le_bytes()).is_err() {
            return -EFAULT;
        }
        self.timers.list.insert(
            id,
            Timer {
                sig,
                target,
                value,
                clock,
                next: None,
                interval: Duration::ZERO,
                overrun: 0,
                last_overrun: 0,
            },
        );
        0
    }

    /// timer_settime(id, flags, new, old).
    pub(super) fn sys_timer_settime(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        let (id, flags, new, old) = (a[0] as i64 as i32, a[1], a[2], a[3]);
        if id < 0 || !self.timers.list.contains_key(&id) {
            return -EINVAL;
        }
        let Some(v) = get::<[Timespec; 2]>(mem, new) else {
            return -EFAULT;
        };
        if v.iter()
            .any(|t| t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec))
        {
            return -EINVAL;
        }
        if old != 0 && self.sys_timer_gettime(id as u64, old, mem) != 0 {
            return -EFAULT;
        }
        let interval = dur_of(v[0].tv_sec, v[0].tv_nsec);
        let mut value = dur_of(v[1].tv_sec, v[1].tv_nsec);
        if flags & 1 != 0 && !value.is_zero() {
            // TIMER_ABSTIME: a time on the timer's clock (already passed: fires at once).
            let clock = self.timers.list[&id].clock;
            let (s, ns) = host_clock(clock);
            value = value
                .saturating_sub(dur_of(s, ns))
                .max(Duration::from_nanos(1));
        }
        let sig = self.timers.list[&id].sig;
        self.arm(id, value, interval, sig);
        0
    }

    /// timer_gettime(id, cur).
    pub(super) fn sys_timer_gettime(&mut self, id: u64, cur: u64, mem: &mut GuestMemory) -> i64 {
        let id = id as i64 as i32;
        if id < 0 || !self.timers.list.contains_key(&id) {
            return -EINVAL;
        }
        let (value, interval) = self.remaining(id);
        let ts = |d: Duration| Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        };
        if put(mem, cur, &[ts(interval), ts(value)]) != 0 {
            return -EFAULT;
        }
        0
    }

    /// timer_getoverrun(id).
    pub(super) fn sys_timer_getoverrun(&self, id: u64) -> i64 {
        let id = id as i64 as i32;
        match self.timers.list.get(&id) {
            Some(t) if id >= 0 => i64::from(t.last_overrun.min(i32::MAX as u32)),
            _ => -EINVAL,
        }
    }

    /// timer_delete(id).
    pub(super) fn sys_timer_delete(&mut self, id: u64) -> i64 {
        let id = id as i64 as i32;
        if id < 0 || self.timers.list.remove(&id).is_none() {
            return -EINVAL;
        }
        self.timers.changed = true;
        0
    }
}
