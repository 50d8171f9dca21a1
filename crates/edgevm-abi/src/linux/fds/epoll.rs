//! epoll instances: registrations kept in the open file description, readiness computed from
//! the table when asked (level-triggered, edge-triggered and one-shot as on Linux).
//!
//! Edge-triggered registrations report when the ready mask gains a bit or when the object
//! received something new while ready (a pipe or eventfd written again, a timer expiring
//! again: its generation changed), so a waker that writes an eventfd without ever reading it
//! (mio's) is seen every time.

use std::collections::BTreeMap;
use std::time::Instant;

use edgevm_kvm::GuestMemory;

use super::{DescKind, FdTable, O_CLOEXEC};
use crate::errno::*;
use crate::linux::LinuxState;

pub(in crate::linux) const EPOLLIN: u32 = 0x1;
pub(in crate::linux) const EPOLLOUT: u32 = 0x4;
pub(in crate::linux) const EPOLLERR: u32 = 0x8;
pub(in crate::linux) const EPOLLHUP: u32 = 0x10;
const EPOLLEXCLUSIVE: u32 = 1 << 28;
const EPOLLWAKEUP: u32 = 1 << 29;
const EPOLLONESHOT: u32 = 1 << 30;
const EPOLLET: u32 = 1 << 31;
/// Nesting of epoll instances inside each other (Linux's EP_MAX_NESTS).
const MAX_NESTS: u32 = 4;
/// Bytes of a `struct epoll_event` (packed on x86_64).
pub(in crate::linux) const EVENT_SIZE: u64 = 12;

/// One registration.
#[derive(Debug, Clone, Default)]
pub(in crate::linux) struct Reg {
    events: u32,
    data: u64,
    /// Edge-triggered: the mask and generation seen at the last look.
    last: u32,
    last_gen: u64,
    /// One-shot and reported: off until EPOLL_CTL_MOD.
    disabled: bool,
}

/// An epoll instance: (fd, description) -> registration, as Linux keys them.
#[derive(Debug, Clone, Default)]
pub(in crate::linux) struct Epoll {
    pub regs: BTreeMap<(i32, u32), Reg>,
    /// Where the next epoll_wait starts looking (ready registrations take turns).
    cursor: usize,
}

/// The readiness bits a registration asks for (error and hang-up always).
fn wanted(events: u32) -> u32 {
    (events & !(EPOLLET | EPOLLONESHOT | EPOLLEXCLUSIVE | EPOLLWAKEUP)) | EPOLLERR | EPOLLHUP
}

impl Epoll {
    /// The descriptions registered and the readiness bits each asks for.
    pub fn members(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.regs
            .iter()
            .filter(|(_, r)| !r.disabled)
            .map(|(&(_, d), r)| (d, wanted(r.events) & 0xFFFF))
    }
}

impl FdTable {
    /// What registration `r` would report now (0: nothing).
    fn reg_report(&self, d: u32, r: &Reg, now: Instant, depth: u32) -> u32 {
        if r.disabled {
            return 0;
        }
        let want = wanted(r.events);
        let mask = self.ready(d, want, now, depth) & want;
        if r.events & EPOLLET == 0 {
            return mask;
        }
        let fresh = mask & !r.last != 0 || (mask != 0 && self.generation(d, now) != r.last_gen);
        if fresh {
            mask
        } else {
            0
        }
    }

    /// Whether epoll instance `ep` has something to report.
    pub(in crate::linux) fn epoll_ready(&self, ep: &Epoll, now: Instant, depth: u32) -> bool {
        if depth > MAX_NESTS {
            return false;
        }
        ep.regs
            .iter()
            .any(|(&(_, d), r)| self.reg_report(d, r, now, depth + 1) != 0)
    }

    /// Whether epoll description `from` reaches description `to` through nested instances
    /// (or nests deeper than Linux allows).
    fn epoll_reaches(&self, from: u32, to: u32, depth: u32) -> bool {
        if from == to || depth > MAX_NESTS {
            return true;
        }
        let Some(DescKind::Epoll(ep)) = self.descs.get(&from).map(|d| &d.kind) else {
            return false;
        };
        ep.regs
            .keys()
            .any(|&(_, d)| self.epoll_reaches(d, to, depth + 1))
    }

    /// Forget every registration of description `d` (it was closed).
    pub(in crate::linux) fn epoll_forget(&mut self, d: u32) {
        for desc in self.descs.values_mut() {
            if let DescKind::Epoll(ep) = &mut desc.kind {
                ep.regs.retain(|&(_, x), _| x != d);
            }
        }
    }

    /// The events epoll instance `epd` reports now, at most `max` (edge-triggered and one-shot
    /// registrations are updated as reported).
    pub(in crate::linux) fn epoll_collect(&mut self, epd: u32, max: usize) -> Vec<(u32, u64)> {
        let now = Instant::now();
        let Some(DescKind::Epoll(ep)) = self.descs.get(&epd).map(|d| &d.kind) else {
            return Vec::new();
        };
        let keys: Vec<(i32, u32)> = ep.regs.keys().copied().collect();
        let start = ep.cursor % keys.len().max(1);
        let mut out = Vec::new();
        let mut updates = Vec::new();
        let mut next_cursor = start;
        for i in 0..keys.len() {
            let k = keys[(start + i) % keys.len()];
            let r = &ep.regs[&k];
            let rep = self.reg_report(k.1, r, now, 1);
            if r.events & EPOLLET != 0 {
                let want = wanted(r.events);
                let mask = self.ready(k.1, want, now, 1) & want;
                updates.push((k, mask, self.generation(k.1, now), rep != 0));
            } else if rep != 0 {
                updates.push((k, 0, 0, true));
            }
            if rep != 0 {
                out.push((rep, r.data));
                next_cursor = (start + i + 1) % keys.len();
                if out.len() == max {
                    break;
                }
            }
        }
        if let Some(DescKind::Epoll(ep)) = self.descs.get_mut(&epd).map(|d| &mut d.kind) {
            ep.cursor = next_cursor;
            for (k, mask, gen, reported) in updates {
                if let Some(r) = ep.regs.get_mut(&k) {
                    if r.events & EPOLLET != 0 {
                        r.last = mask;
                        r.last_gen = gen;
                    }
                    if reported && r.events & EPOLLONESHOT != 0 {
                        r.disabled = true;
                    }
                }
            }
        }
        out
    }
}

impl LinuxState {
    /// epoll_create1(flags) (epoll_create(size) passes 0 after checking size > 0).
    pub(in crate::linux) fn sys_epoll_create1(&mut self, flags: u64) -> i64 {
        if flags & !O_CLOEXEC != 0 {
            return -EINVAL;
        }
        self.fds
            .install(DescKind::Epoll(Epoll::default()), flags != 0, false)
    }

    /// epoll_ctl(epfd, op, fd, event).
    pub(in crate::linux) fn sys_epoll_ctl(&mut self, a: [u64; 6], mem: &GuestMemory) -> i64 {
        const ADD: u64 = 1;
        const DEL: u64 = 2;
        const MOD: u64 = 3;
        let (epfd, op, fd) = (a[0] as i64 as i32, a[1], a[2] as i64 as i32);
        let (Some(&(epd, _)), Some(&(d, _))) = (self.fds.fds.get(&epfd), self.fds.fds.get(&fd))
        else {
            return -EBADF;
        };
        if !matches!(
            self.fds.descs.get(&epd).map(|x| &x.kind),
            Some(DescKind::Epoll(_))
        ) || epfd == fd
        {
            return -EINVAL;
        }
        if matches!(
            self.fds.descs.get(&d).map(|x| &x.kind),
            Some(DescKind::File(_) | DescKind::Dir(_))
        ) {
            return -EPERM;
        }
        let ev = if op == DEL {
            (0, 0)
        } else {
            let mut b = [0u8; EVENT_SIZE as usize];
            if mem.read(a[3], &mut b).is_err() {
                return -EFAULT;
            }
            (
                u32::from_le_bytes(b[..4].try_into().expect("4")),
                u64::from_le_bytes(b[4..].try_into().expect("8")),
            )
        };
        if op == ADD
            && matches!(
                self.fds.descs.get(&d).map(|x| &x.kind),
                Some(DescKind::Epoll(_))
            )
            && self.fds.epoll_reaches(d, epd, 1)
        {
            return -ELOOP;
        }
        let Some(DescKind::Epoll(ep)) = self.fds.descs.get_mut(&epd).map(|x| &mut x.kind) else {
            return -EINVAL;
        };
        let key = (fd, d);
        match op {
            ADD => {
                if ep.regs.contains_key(&key) {
                    return -EEXIST;
                }
                ep.regs.insert(
                    key,
                    Reg {
                        events: ev.0,
                        data: ev.1,
                        ..Reg::default()
                    },
                );
                0
            }
            MOD => {
                if ev.0 & EPOLLEXCLUSIVE != 0 {
                    return -EINVAL;
                }
                match ep.regs.get_mut(&key) {
                    Some(r) => {
                        *r = Reg {
                            events: ev.0,
                            data: ev.1,
                            ..Reg::default()
                        };
                        0
                    }
                    None => -ENOENT,
                }
            }
            DEL => match ep.regs.remove(&key) {
                Some(_) => 0,
                None => -ENOENT,
            },
            _ => -EINVAL,
        }
    }

    /// The epoll description behind `epfd`, checked for epoll_wait: Err(-errno).
    pub(in crate::linux) fn epoll_desc(
        &self,
        epfd: i32,
        events: u64,
        max: u64,
        mem: &GuestMemory,
    ) -> Result<u32, i64> {
        let max = max as i64 as i32;
        if max <= 0 || max as u64 > (i32::MAX as u64) / EVENT_SIZE {
            return Err(-EINVAL);
        }
        if !mem.contains(events, (max as u64 * EVENT_SIZE) as usize) {
            return Err(-EFAULT);
        }
        let Some(&(d, _)) = self.fds.fds.get(&epfd) else {
            return Err(-EBADF);
        };
        match self.fds.descs.get(&d).map(|x| &x.kind) {
            Some(DescKind::Epoll(_)) => Ok(d),
            _ => Err(-EINVAL),
        }
    }

    /// Write what epoll instance `epd` reports (at most `max`) at `events`: how many, or None.
    pub(in crate::linux) fn epoll_deliver(
        &mut self,
        epd: u32,
        events: u64,
        max: u64,
        mem: &mut GuestMemory,
    ) -> Option<i64> {
        let got = self.fds.epoll_collect(epd, max as usize);
        if got.is_empty() {
            return None;
        }
        let mut b = Vec::with_capacity(got.len() * EVENT_SIZE as usize);
        for (e, data) in &got {
            b.extend_from_slice(&e.to_le_bytes());
            b.extend_from_slice(&data.to_le_bytes());
        }
        Some(match mem.write(events, &b) {
            Ok(()) => got.len() as i64,
            Err(_) => -EFAULT,
        })
    }
}
