//! eventfd and timerfd: descriptors whose whole state is a counter, kept in the open file
//! description (so `dup` shares it and a request VM's reset restores it).

use std::time::{Duration, Instant};

use edgevm_kvm::GuestMemory;

use super::super::process::host_clock;
use super::{DescKind, O_CLOEXEC, O_NONBLOCK};
use crate::errno::*;
use crate::linux::LinuxState;
use crate::linux_abi::{get, put, Timespec};

/// An eventfd: a 64-bit counter.
#[derive(Debug, Clone, Default)]
pub(in crate::linux) struct EventFd {
    pub count: u64,
    /// EFD_SEMAPHORE: a read takes 1, not the whole count.
    pub semaphore: bool,
    /// Writes so far (edge-triggered epoll).
    pub gen: u64,
}

/// A timerfd: when it next expires, its period, and the expirations not read yet.
#[derive(Debug, Clone, Default)]
pub(in crate::linux) struct TimerFd {
    /// CLOCK_REALTIME (absolute settings follow the wall clock) or a monotonic clock.
    pub clock: i32,
    pub next: Option<Instant>,
    pub interval: Duration,
    /// Expirations counted before `next` (read resets it).
    pub ticks: u64,
}

impl TimerFd {
    /// Count the expirations up to `now` into `ticks`, moving `next` past `now`.
    pub fn advance(&mut self, now: Instant) {
        let Some(next) = self.next else {
            return;
        };
        if now < next {
            return;
        }
        if self.interval.is_zero() {
            self.ticks = self.ticks.saturating_add(1);
            self.next = None;
            return;
        }
        let periods = (now - next).as_nanos() / self.interval.as_nanos() + 1;
        self.ticks = self
            .ticks
            .saturating_add(periods.min(u64::MAX as u128) as u64);
        let step = self
            .interval
            .checked_mul(periods.min(u32::MAX as u128) as u32)
            .unwrap_or(Duration::from_secs(1 << 40));
        self.next = next.checked_add(step);
    }

    /// Expirations not read yet, as of `now` (without changing anything).
    pub fn pending(&self, now: Instant) -> u64 {
        let mut t = self.clone();
        t.advance(now);
        t.ticks
    }
}

/// `struct itimerspec`.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
struct Itimerspec {
    interval: Timespec,
    value: Timespec,
}

fn to_duration(t: Timespec) -> Option<Duration> {
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return None;
    }
    Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32).min(Duration::from_secs(1 << 40)))
}

fn to_timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

impl LinuxState {
    /// eventfd2(initval, flags).
    pub(in crate::linux) fn sys_eventfd2(&mut self, init: u64, flags: u64) -> i64 {
        const EFD_SEMAPHORE: u64 = 1;
        if flags & !(O_CLOEXEC | O_NONBLOCK | EFD_SEMAPHORE) != 0 {
            return -EINVAL;
        }
        let e = EventFd {
            count: init & 0xFFFF_FFFF,
            semaphore: flags & EFD_SEMAPHORE != 0,
            gen: 0,
        };
        self.fds.install(
            DescKind::Event(e),
            flags & O_CLOEXEC != 0,
            flags & O_NONBLOCK != 0,
        )
    }

    /// read() on an eventfd: 8 bytes, or EAGAIN while the count is 0.
    pub(in crate::linux) fn eventfd_read(
        e: &mut EventFd,
        buf: u64,
        len: u64,
        mem: &mut GuestMemory,
    ) -> i64 {
        if len < 8 {
            return -EINVAL;
        }
        if e.count == 0 {
            return -EAGAIN;
        }
        let v = if e.semaphore { 1 } else { e.count };
        if mem.write_u64(buf, v).is_err() {
            return -EFAULT;
        }
        e.count -= v;
        8
    }

    /// write() on an eventfd: adds the 8-byte value; EAGAIN when it would pass u64::MAX - 1.
    pub(in crate::linux) fn eventfd_write(
        e: &mut EventFd,
        buf: u64,
        len: u64,
        mem: &GuestMemory,
    ) -> i64 {
        if len < 8 {
            return -EINVAL;
        }
        let Ok(v) = mem.read_u64(buf) else {
            return -EFAULT;
        };
        if v == u64::MAX {
            return -EINVAL;
        }
        if e.count.checked_add(v).is_none_or(|s| s == u64::MAX) {
            return -EAGAIN;
        }
        e.count += v;
        e.gen = e.gen.wrapping_add(1);
        8
    }

    /// timerfd_create(clock, flags).
    pub(in crate::linux) fn sys_timerfd_create(&mut self, clock: u64, flags: u64) -> i64 {
        let clock = clock as i64 as i32;
        if !matches!(
            clock,
            libc::CLOCK_REALTIME
                | libc::CLOCK_MONOTONIC
                | libc::CLOCK_BOOTTIME
                | libc::CLOCK_REALTIME_ALARM
                | libc::CLOCK_BOOTTIME_ALARM
        ) {
            return -EINVAL;
        }
        if flags & !(O_CLOEXEC | O_NONBLOCK) != 0 {
            return -EINVAL;
        }
        let t = TimerFd {
            clock,
            ..TimerFd::default()
        };
        self.fds.install(
            DescKind::Timer(t),
            flags & O_CLOEXEC != 0,
            flags & O_NONBLOCK != 0,
        )
    }

    /// timerfd_settime(fd, flags, new, old).
    pub(in crate::linux) fn sys_timerfd_settime(
        &mut self,
        a: [u64; 6],
        mem: &mut GuestMemory,
    ) -> i64 {
        const TFD_TIMER_ABSTIME: u64 = 1;
        const TFD_TIMER_CANCEL_ON_SET: u64 = 2;
        let fd = a[0] as i64 as i32;
        if a[1] & !(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) != 0 {
            return -EINVAL;
        }
        let Some(new) = get::<Itimerspec>(mem, a[2]) else {
            return -EFAULT;
        };
        let (Some(value), Some(interval)) = (to_duration(new.value), to_duration(new.interval))
        else {
            return -EINVAL;
        };
        let old = match self.timerfd_gettime(fd) {
            Ok(o) => o,
            Err(e) => return e,
        };
        if a[3] != 0 && put(mem, a[3], &old) != 0 {
            return -EFAULT;
        }
        let Some(DescKind::Timer(t)) = self.fds.desc_mut(fd).map(|d| &mut d.kind) else {
            return -EINVAL;
        };
        let now = Instant::now();
        t.ticks = 0;
        t.interval = interval;
        t.next = if value.is_zero() {
            None
        } else if a[1] & TFD_TIMER_ABSTIME != 0 {
            let (s, ns) = host_clock(t.clock);
            let clock_now = Duration::new(s.max(0) as u64, ns as u32);
            Some(now + value.saturating_sub(clock_now))
        } else {
            Some(now + value)
        };
        0
    }

    /// timerfd_gettime(fd, cur).
    pub(in crate::linux) fn sys_timerfd_gettime(
        &mut self,
        fd: u64,
        cur: u64,
        mem: &mut GuestMemory,
    ) -> i64 {
        match self.timerfd_gettime(fd as i64 as i32) {
            Ok(v) => put(mem, cur, &v),
            Err(e) => e,
        }
    }

    fn timerfd_gettime(&mut self, fd: i32) -> Result<Itimerspec, i64> {
        match self.fds.desc_mut(fd).map(|d| &mut d.kind) {
            None => Err(-EBADF),
            Some(DescKind::Timer(t)) => {
                let now = Instant::now();
                t.advance(now);
                Ok(Itimerspec {
                    interval: to_timespec(t.interval),
                    value: to_timespec(t.next.map_or(Duration::ZERO, |n| {
                        n.saturating_duration_since(now)
                            .max(Duration::from_nanos(1))
                    })),
                })
            }
            Some(_) => Err(-EINVAL),
        }
    }

    /// read() on a timerfd: the expirations since the last read (8 bytes), EAGAIN for none.
    pub(in crate::linux) fn timerfd_read(
        t: &mut TimerFd,
        buf: u64,
        len: u64,
        mem: &mut GuestMemory,
    ) -> i64 {
        if len < 8 {
            return -EINVAL;
        }
        t.advance(Instant::now());
        if t.ticks == 0 {
            return -EAGAIN;
        }
        if mem.write_u64(buf, t.ticks).is_err() {
            return -EFAULT;
        }
        t.ticks = 0;
        8
    }
}
