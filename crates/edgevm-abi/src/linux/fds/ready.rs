//! Readiness of every kind of descriptor, and the calls that wait for it: poll, ppoll,
//! select, pselect6, epoll_wait/epoll_pwait/epoll_pwait2 (the waiting itself: `wait.rs`).

use std::time::{Duration, Instant};

use edgevm_kvm::{GuestMemory, KvmError, Vcpu};

use super::epoll::{EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT};
use super::{DescKind, FdTable, PIPE_SIZE};
use std::os::fd::{AsFd, AsRawFd};

use crate::errno::*;
use crate::files::MAX_FDS;
use crate::hostnet;
use crate::linux::wait::{Io, Timeout};
use crate::linux::{LinuxState, SyscallOutcome};
use crate::linux_abi::{get, put, PollFd, Timespec, Timeval};

const POLLNVAL: u32 = 0x20;

/// What a waiting thread waits for: (descriptor, poll events) pairs.
pub(in crate::linux) type Interest = Vec<(i32, u32)>;

impl FdTable {
    /// The poll bits description `d` has now, among `events` (errors and hang-ups always).
    pub(in crate::linux) fn ready(&self, d: u32, events: u32, now: Instant, depth: u32) -> u32 {
        let Some(desc) = self.descs.get(&d) else {
            return POLLNVAL;
        };
        let bits = match &desc.kind {
            DescKind::Stdin => EPOLLIN,
            DescKind::Output(_) => EPOLLOUT,
            DescKind::File(_) | DescKind::Dir(_) => EPOLLIN | EPOLLOUT,
            DescKind::PipeRead(p) => {
                let p = self.pipes.get(p);
                let mut r = 0;
                if p.is_some_and(|p| !p.buf.is_empty()) {
                    r |= EPOLLIN;
                }
                if p.is_none_or(|p| p.writers == 0) {
                    r |= EPOLLHUP;
                }
                r
            }
            DescKind::PipeWrite(p) => match self.pipes.get(p) {
                Some(p) if p.readers > 0 => {
                    if p.buf.len() < PIPE_SIZE {
                        EPOLLOUT
                    } else {
                        0
                    }
                }
                _ => EPOLLERR,
            },
            DescKind::Event(e) => {
                let mut r = EPOLLOUT;
                if e.count > 0 {
                    r |= EPOLLIN;
                }
                r
            }
            DescKind::Timer(t) => {
                if t.pending(now) > 0 {
                    EPOLLIN
                } else {
                    0
                }
            }
            DescKind::Epoll(ep) => {
                if self.epoll_ready(ep, now, depth) {
                    EPOLLIN
                } else {
                    0
                }
            }
            DescKind::Socket(s) => match &s.fd {
                Some(h) => u32::from(hostnet::poll_now(h.as_fd(), events as u16 as i16) as u16),
                None => EPOLLHUP | EPOLLERR,
            },
            DescKind::Signal(mask) => {
                if self.sig_pending.get() & mask != 0 {
                    EPOLLIN
                } else {
                    0
                }
            }
        };
        bits & (events | EPOLLERR | EPOLLHUP | POLLNVAL)
    }

    /// Changes each time description `d` receives something (edge-triggered epoll).
    pub(in crate::linux) fn generation(&self, d: u32, now: Instant) -> u64 {
        match self.descs.get(&d).map(|x| &x.kind) {
            Some(DescKind::PipeRead(p)) => self.pipes.get(p).map_or(0, |p| p.gen),
            Some(DescKind::Event(e)) => e.gen,
            Some(DescKind::Timer(t)) => t.pending(now),
            Some(DescKind::Signal(mask)) => self.sig_pending.get() & mask,
            // Bytes waiting: grows when more arrive (edge-triggered epoll).
            Some(DescKind::Socket(s)) => {
                s.fd.as_ref()
                    .map_or(0, |h| hostnet::readable_bytes(h.as_fd()) as u64)
            }
            _ => 0,
        }
    }

    /// The poll bits of descriptor `fd` (POLLNVAL if it is not open).
    pub(in crate::linux) fn fd_ready(&self, fd: i32, events: u32, now: Instant) -> u32 {
        match self.fds.get(&fd) {
            Some(&(d, _)) => self.ready(d, events, now, 0),
            None => POLLNVAL,
        }
    }

    /// Add to `out` the host descriptors behind what `interest` names (sockets), with the
    /// poll events asked for.
    pub(in crate::linux) fn host_fds(&self, interest: &Interest, out: &mut Vec<libc::pollfd>) {
        let mut stack: Vec<(u32, u32, u32)> = interest
            .iter()
            .filter_map(|&(fd, ev)| self.fds.get(&fd).map(|x| (x.0, ev, 0)))
            .collect();
        while let Some((d, ev, depth)) = stack.pop() {
            match self.descs.get(&d).map(|x| &x.kind) {
                Some(DescKind::Socket(s)) => {
                    if let Some(h) = &s.fd {
                        out.push(libc::pollfd {
                            fd: h.as_raw_fd(),
                            events: ev as u16 as i16,
                            revents: 0,
                        });
                    }
                }
                Some(DescKind::Epoll(ep)) if depth < 5 => {
                    stack.extend(ep.members().map(|(x, e)| (x, e, depth + 1)));
                }
                _ => {}
            }
        }
    }

    /// When the earliest timer among what `interest` names (through epoll instances too)
    /// expires.
    pub(in crate::linux) fn next_expiry(&self, interest: &Interest) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut stack: Vec<(u32, u32)> = interest
            .iter()
            .filter_map(|&(fd, _)| self.fds.get(&fd).map(|x| (x.0, 0)))
            .collect();
        while let Some((d, depth)) = stack.pop() {
            match self.descs.get(&d).map(|x| &x.kind) {
                Some(DescKind::Timer(t)) => {
                    if let Some(n) = t.next {
                        at = Some(at.map_or(n, |a| a.min(n)));
                    }
                }
                Some(DescKind::Epoll(ep)) if depth < 5 => {
                    stack.extend(ep.regs.keys().map(|&(_, x)| (x, depth + 1)));
                }
                _ => {}
            }
        }
        at
    }
}

/// A timeout in milliseconds (poll, epoll_wait): negative waits forever.
fn ms_timeout(ms: u64) -> Timeout {
    let ms = ms as i64 as i32;
    if ms < 0 {
        None
    } else {
        Some(Duration::from_millis(ms as u64))
    }
}

/// A `struct timespec` timeout (NULL: forever): Err(-errno).
fn ts_timeout(mem: &GuestMemory, at: u64) -> Result<Timeout, i64> {
    if at == 0 {
        return Ok(None);
    }
    let Some(t) = get::<Timespec>(mem, at) else {
        return Err(-EFAULT);
    };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return Err(-EINVAL);
    }
    Ok(Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32)))
}

/// Result of a readiness call: the value, or the run ends.
type CallResult = Result<Result<i64, SyscallOutcome>, KvmError>;

impl LinuxState {
    /// poll/ppoll/select/pselect6/epoll_wait/epoll_pwait/epoll_pwait2; None for other calls.
    pub(in crate::linux) fn readiness_call(
        &mut self,
        nr: i64,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Option<CallResult> {
        let nr_u = nr as u64;
        // The call's own signal mask, in force while it waits (restored when it returns).
        let mask = match nr {
            libc::SYS_ppoll => Some((a[3], a[4])),
            libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => Some((a[4], a[5])),
            libc::SYS_pselect6 if a[5] != 0 => {
                match (mem.read_u64(a[5]), mem.read_u64(a[5].wrapping_add(8))) {
                    (Ok(set), Ok(len)) => Some((set, len)),
                    _ => return Some(Ok(Ok(-EFAULT))),
                }
            }
            _ => None,
        };
        if let Some((set, size)) = mask {
            let e = self.use_call_mask(set, size, mem);
            if e != 0 {
                return Some(Ok(Ok(e)));
            }
        }
        Some(match nr {
            libc::SYS_poll => self.sys_poll(nr_u, a[0], a[1], ms_timeout(a[2]), cpu, mem),
            libc::SYS_ppoll => match ts_timeout(mem, a[2]) {
                Ok(t) => self.sys_poll(nr_u, a[0], a[1], t, cpu, mem),
                Err(e) => Ok(Ok(e)),
            },
            libc::SYS_select => {
                let t = if a[4] == 0 {
                    Ok(None)
                } else {
                    match get::<Timeval>(mem, a[4]) {
                        Some(tv) if tv.tv_sec >= 0 && (0..1_000_000).contains(&tv.tv_usec) => Ok(
                            Some(Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000)),
                        ),
                        Some(_) => Err(-EINVAL),
                        None => Err(-EFAULT),
                    }
                };
                match t {
                    Ok(t) => self.sys_select(nr_u, a, t, cpu, mem),
                    Err(e) => Ok(Ok(e)),
                }
            }
            libc::SYS_pselect6 => match ts_timeout(mem, a[4]) {
                Ok(t) => self.sys_select(nr_u, a, t, cpu, mem),
                Err(e) => Ok(Ok(e)),
            },
            libc::SYS_epoll_wait | libc::SYS_epoll_pwait => {
                self.sys_epoll_wait(nr_u, a, ms_timeout(a[3]), cpu, mem)
            }
            libc::SYS_epoll_pwait2 => match ts_timeout(mem, a[3]) {
                Ok(t) => self.sys_epoll_wait(nr_u, a, t, cpu, mem),
                Err(e) => Ok(Ok(e)),
            },
            _ => return None,
        })
    }

    /// Whether the readiness call in `nr`/`a` would wait now (for the runtime's
    /// [`LinuxState::may_sleep`]): a non-zero timeout and nothing ready.
    pub(in crate::linux) fn readiness_would_wait(
        &self,
        nr: i64,
        a: [u64; 6],
        mem: &GuestMemory,
    ) -> bool {
        let now = Instant::now();
        let zero = |t: Result<Timeout, i64>| matches!(t, Ok(Some(d)) if d.is_zero()) || t.is_err();
        match nr {
            libc::SYS_poll | libc::SYS_ppoll => {
                let t = if nr == libc::SYS_poll {
                    Ok(ms_timeout(a[2]))
                } else {
                    ts_timeout(mem, a[2])
                };
                if zero(t) || a[1] > MAX_FDS as u64 {
                    return false;
                }
                (0..a[1]).all(|i| {
                    get::<PollFd>(mem, a[0].wrapping_add(8 * i)).is_some_and(|p| {
                        p.fd < 0 || self.fds.fd_ready(p.fd, p.events as u16 as u32, now) == 0
                    })
                })
            }
            libc::SYS_epoll_wait | libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => {
                let t = if nr == libc::SYS_epoll_pwait2 {
                    ts_timeout(mem, a[3])
                } else {
                    Ok(ms_timeout(a[3]))
                };
                !zero(t) && self.fds.fd_ready(a[0] as i64 as i32, EPOLLIN, now) == 0
            }
            libc::SYS_select | libc::SYS_pselect6 => {
                a[4] == 0 || {
                    // A zero timeout is the common non-blocking use; anything else may wait.
                    let t = if nr == libc::SYS_select {
                        get::<Timeval>(mem, a[4]).map(|t| t.tv_sec != 0 || t.tv_usec != 0)
                    } else {
                        get::<Timespec>(mem, a[4]).map(|t| t.tv_sec != 0 || t.tv_nsec != 0)
                    };
                    t.unwrap_or(false)
                }
            }
            _ => false,
        }
    }

    fn sys_poll(
        &mut self,
        nr: u64,
        fds: u64,
        n: u64,
        timeout: Timeout,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> CallResult {
        if n > MAX_FDS as u64 {
            return Ok(Ok(-EINVAL));
        }
        if !mem.contains(fds, (n * 8) as usize) {
            return Ok(Ok(-EFAULT));
        }
        self.wait_io(nr, timeout, cpu, mem, |s, mem, last| {
            let now = Instant::now();
            let mut ready = 0;
            let mut interest = Interest::new();
            for i in 0..n {
                let at = fds + 8 * i;
                let Some(mut p) = get::<PollFd>(mem, at) else {
                    return Io::Done(-EFAULT);
                };
                let ev = p.events as u16 as u32;
                p.revents = if p.fd < 0 {
                    0
                } else {
                    s.fds.fd_ready(p.fd, ev, now) as u16 as i16
                };
                if p.revents != 0 {
                    ready += 1;
                } else if p.fd >= 0 {
                    interest.push((p.fd, ev));
                }
                if put(mem, at + 6, &p.revents) != 0 {
                    return Io::Done(-EFAULT);
                }
            }
            if ready > 0 || last {
                Io::Done(ready)
            } else {
                Io::Wait(interest)
            }
        })
    }

    /// select(nfds, readfds, writefds, exceptfds, timeout) and pselect6 (same first five).
    fn sys_select(
        &mut self,
        nr: u64,
        a: [u64; 6],
        timeout: Timeout,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> CallResult {
        let n = a[0] as i64;
        if !(0..=MAX_FDS as i64).contains(&n) {
            return Ok(Ok(-EINVAL));
        }
        let n = n as usize;
        let words = n.div_ceil(64);
        let sets = [a[1], a[2], a[3]];
        let mut want = [vec![0u64; words], vec![0u64; words], vec![0u64; words]];
        for (k, &at) in sets.iter().enumerate() {
            if at == 0 {
                continue;
            }
            for (w, slot) in want[k].iter_mut().enumerate() {
                match mem.read_u64(at + 8 * w as u64) {
                    Ok(v) => *slot = v,
                    Err(_) => return Ok(Ok(-EFAULT)),
                }
            }
            if let Some(last) = want[k].last_mut() {
                if !n.is_multiple_of(64) {
                    *last &= (1u64 << (n % 64)) - 1;
                }
            }
        }
        for fd in 0..n {
            let named = want.iter().any(|s| s[fd / 64] >> (fd % 64) & 1 != 0);
            if named && !self.fds.fds.contains_key(&(fd as i32)) {
                return Ok(Ok(-EBADF));
            }
        }
        self.wait_io(nr, timeout, cpu, mem, |s, mem, last| {
            let now = Instant::now();
            let mut got = [vec![0u64; words], vec![0u64; words], vec![0u64; words]];
            let mut count = 0;
            let mut interest = Interest::new();
            for fd in 0..n {
                let bit = |s: &[u64]| s[fd / 64] >> (fd % 64) & 1 != 0;
                let (r, w, e) = (bit(&want[0]), bit(&want[1]), bit(&want[2]));
                if !(r || w || e) {
                    continue;
                }
                let mut ev = 0;
                if r {
                    ev |= EPOLLIN;
                }
                if w {
                    ev |= EPOLLOUT;
                }
                if e {
                    ev |= 2; // POLLPRI
                }
                let bits = s.fds.fd_ready(fd as i32, ev, now);
                let hits = [
                    r && bits & (EPOLLIN | EPOLLHUP | EPOLLERR) != 0,
                    w && bits & (EPOLLOUT | EPOLLERR) != 0,
                    e && bits & 2 != 0,
                ];
                for (k, hit) in hits.iter().enumerate() {
                    if *hit {
                        got[k][fd / 64] |= 1 << (fd % 64);
                        count += 1;
                    }
                }
                if !hits.iter().any(|h| *h) {
                    interest.push((fd as i32, ev));
                }
            }
            if count == 0 && !last {
                return Io::Wait(interest);
            }
            for (k, &at) in sets.iter().enumerate() {
                if at == 0 {
                    continue;
                }
                for (w, v) in got[k].iter().enumerate() {
                    if mem.write_u64(at + 8 * w as u64, *v).is_err() {
                        return Io::Done(-EFAULT);
                    }
                }
            }
            Io::Done(count)
        })
    }

    fn sys_epoll_wait(
        &mut self,
        nr: u64,
        a: [u64; 6],
        timeout: Timeout,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> CallResult {
        let (epfd, events, max) = (a[0] as i64 as i32, a[1], a[2]);
        let epd = match self.epoll_desc(epfd, events, max, mem) {
            Ok(d) => d,
            Err(e) => return Ok(Ok(e)),
        };
        let max = max.min(MAX_FDS as u64);
        self.wait_io(nr, timeout, cpu, mem, |s, mem, last| {
            if !matches!(
                s.fds.descs.get(&epd).map(|x| &x.kind),
                Some(DescKind::Epoll(_))
            ) {
                // Closed by another thread while this one waited.
                return Io::Done(-EBADF);
            }
            match s.epoll_deliver(epd, events, max, mem) {
                Some(v) => Io::Done(v),
                None if last => Io::Done(0),
                None => Io::Wait(vec![(epfd, EPOLLIN)]),
            }
        })
    }
}
