//! The file-descriptor table: what each kind of open descriptor does (see [`FdKind`]).
//!
//! Descriptors name open file descriptions ([`Desc`]) as on Linux: `dup` shares one (its
//! offset and status flags), `close` drops a reference. The whole table, pipes included, is
//! plain data cloned with the process state, so a request VM's reset restores exactly the
//! descriptors (and offsets) the frozen program had. Calls on paths are in [`super::paths`].

use std::collections::{BTreeMap, VecDeque};

use super::{LinuxState, Output};
use crate::errno::*;
use crate::files::{OpenDir, OpenFile, MAX_FDS};

/// What kind of file a descriptor is. Every descriptor operation below asks this first; a new
/// kind (eventfds, sockets, ...) is a variant here, one in [`DescKind`], and an arm in the
/// operations; the system-call dispatcher ([`LinuxState::fd_call`]) does not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FdKind {
    /// An empty pipe (reads return EOF): fd 0 at the start.
    Stdin,
    /// The program's output (fd 1 and 2 at the start), a terminal to the program.
    Output,
    /// A host file (an allowed path or the state file).
    File,
    /// A directory (host or virtual).
    Dir,
    /// The read end of a pipe.
    PipeRead,
    /// The write end of a pipe.
    PipeWrite,
    /// An eventfd.
    Event,
    /// A timerfd.
    Timer,
    /// An epoll instance.
    Epoll,
    /// A socket (a host socket).
    Socket,
    /// A signalfd.
    Signal,
    /// Nothing open.
    Closed,
}

use FdKind::*;

/// What an open file description is.
#[derive(Debug, Clone)]
pub(super) enum DescKind {
    Stdin,
    /// Output stream 1 or 2.
    Output(i32),
    File(OpenFile),
    Dir(OpenDir),
    PipeRead(u32),
    PipeWrite(u32),
    Event(EventFd),
    Timer(TimerFd),
    Epoll(Epoll),
    Socket(Socket),
    /// A signalfd: the signals it reads (a mask).
    Signal(u64),
}

/// An open file description.
#[derive(Debug, Clone)]
pub(super) struct Desc {
    /// Descriptors naming it.
    refs: u32,
    /// O_NONBLOCK.
    nonblock: bool,
    pub(super) kind: DescKind,
}

/// Bytes a pipe holds.
const PIPE_SIZE: usize = 65536;

/// A pipe's buffer and how many descriptions of each end are open.
#[derive(Debug, Clone, Default)]
struct Pipe {
    buf: VecDeque<u8>,
    readers: u32,
    writers: u32,
    /// Writes so far (edge-triggered epoll).
    gen: u64,
}

/// The descriptor table.
#[derive(Debug, Clone)]
pub(super) struct FdTable {
    /// fd -> (description, FD_CLOEXEC).
    fds: BTreeMap<i32, (u32, bool)>,
    descs: BTreeMap<u32, Desc>,
    pipes: BTreeMap<u32, Pipe>,
    next: u32,
    /// The pending signals of the thread whose view of readiness is being asked (a signalfd
    /// is readable for the thread that has one of its signals pending, as on Linux): set by
    /// whoever asks, see [`LinuxState::wait_io`] and [`LinuxState::wake_ready`].
    pub(super) sig_pending: SigView,
}

/// A signal mask any holder of the table may set (an atomic so the state stays `Sync`; one
/// thread at a time uses a VM's state).
#[derive(Debug, Default)]
pub(super) struct SigView(std::sync::atomic::AtomicU64);

impl SigView {
    pub(super) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn set(&self, v: u64) {
        self.0.store(v, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Clone for SigView {
    fn clone(&self) -> SigView {
        SigView(self.get().into())
    }
}

impl FdTable {
    /// stdin (an empty pipe), stdout and stderr.
    pub(super) fn new() -> FdTable {
        let mut t = FdTable {
            fds: BTreeMap::new(),
            descs: BTreeMap::new(),
            pipes: BTreeMap::new(),
            next: 0,
            sig_pending: Default::default(),
        };
        for (fd, k) in [
            (0, DescKind::Stdin),
            (1, DescKind::Output(1)),
            (2, DescKind::Output(2)),
        ] {
            let d = t.new_desc(k, false);
            t.attach(fd, d, false);
        }
        t
    }

    fn new_desc(&mut self, kind: DescKind, nonblock: bool) -> u32 {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        self.descs.insert(
            id,
            Desc {
                refs: 0,
                nonblock,
                kind,
            },
        );
        id
    }

    /// The lowest free descriptor >= `min`; None past the limit.
    fn free_fd(&self, min: i32) -> Option<i32> {
        let mut n = min.max(0);
        for (&fd, _) in self.fds.range(n..) {
            if fd != n {
                break;
            }
            n += 1;
        }
        ((n as usize) < MAX_FDS).then_some(n)
    }

    /// Install a new description at the lowest free descriptor: the fd, or -EMFILE.
    pub(super) fn install(&mut self, kind: DescKind, cloexec: bool, nonblock: bool) -> i64 {
        let Some(fd) = self.free_fd(0) else {
            return -EMFILE;
        };
        let d = self.new_desc(kind, nonblock);
        self.attach(fd, d, cloexec);
        i64::from(fd)
    }

    fn attach(&mut self, fd: i32, d: u32, cloexec: bool) {
        if let Some(desc) = self.descs.get_mut(&d) {
            desc.refs += 1;
            if desc.refs == 1 {
                match desc.kind {
                    DescKind::PipeRead(p) => self.pipes.entry(p).or_default().readers += 1,
                    DescKind::PipeWrite(p) => self.pipes.entry(p).or_default().writers += 1,
                    _ => {}
                }
            }
        }
        self.fds.insert(fd, (d, cloexec));
    }

    /// close: -EBADF if `fd` is not open.
    pub(super) fn close(&mut self, fd: i32) -> i64 {
        let Some((d, _)) = self.fds.remove(&fd) else {
            return -EBADF;
        };
        let Some(desc) = self.descs.get_mut(&d) else {
            return 0;
        };
        desc.refs -= 1;
        if desc.refs == 0 {
            let desc = self.descs.remove(&d);
            self.epoll_forget(d);
            let pipe = match desc.map(|d| d.kind) {
                Some(DescKind::PipeRead(p)) => self.pipes.get_mut(&p).map(|x| {
                    x.readers -= 1;
                    p
                }),
                Some(DescKind::PipeWrite(p)) => self.pipes.get_mut(&p).map(|x| {
                    x.writers -= 1;
                    p
                }),
                _ => None,
            };
            if let Some(p) = pipe {
                if self
                    .pipes
                    .get(&p)
                    .is_some_and(|x| x.readers + x.writers == 0)
                {
                    self.pipes.remove(&p);
                }
            }
        }
        0
    }

    /// dup/dup2/dup3/F_DUPFD: `new` None = the lowest free >= `min`.
    fn dup(&mut self, old: i32, new: Option<i32>, min: i32, cloexec: bool) -> i64 {
        let Some(&(d, _)) = self.fds.get(&old) else {
            return -EBADF;
        };
        let fd = match new {
            Some(n) => {
                if n < 0 || n as usize >= MAX_FDS {
                    return -EBADF;
                }
                if n == old {
                    return i64::from(n);
                }
                self.close(n);
                n
            }
            None => match self.free_fd(min) {
                Some(n) => n,
                None => return -EMFILE,
            },
        };
        self.attach(fd, d, cloexec);
        i64::from(fd)
    }

    pub(super) fn desc(&self, fd: i32) -> Option<&Desc> {
        self.fds.get(&fd).and_then(|(d, _)| self.descs.get(d))
    }

    pub(super) fn desc_mut(&mut self, fd: i32) -> Option<&mut Desc> {
        let d = self.fds.get(&fd)?.0;
        self.descs.get_mut(&d)
    }

    /// The open file behind `fd`, if it is one.
    pub(super) fn file(&self, fd: i32) -> Option<&OpenFile> {
        match &self.desc(fd)?.kind {
            DescKind::File(f) => Some(f),
            _ => None,
        }
    }

    fn file_mut(&mut self, fd: i32) -> Option<&mut OpenFile> {
        match &mut self.desc_mut(fd)?.kind {
            DescKind::File(f) => Some(f),
            _ => None,
        }
    }

    /// The open directory behind `fd`, if it is one.
    pub(super) fn dir(&self, fd: i32) -> Option<&OpenDir> {
        match &self.desc(fd)?.kind {
            DescKind::Dir(d) => Some(d),
            _ => None,
        }
    }

    fn dir_mut(&mut self, fd: i32) -> Option<&mut OpenDir> {
        match &mut self.desc_mut(fd)?.kind {
            DescKind::Dir(d) => Some(d),
            _ => None,
        }
    }

    /// Freeze: every open file becomes read-only.
    pub(super) fn make_read_only(&mut self) {
        for d in self.descs.values_mut() {
            match &mut d.kind {
                DescKind::File(f) => f.write = false,
                // One host connection cannot serve every request VM: closed (socket.rs).
                DescKind::Socket(s) => s.fd = None,
                _ => {}
            }
        }
    }

    /// Open sockets (host sockets held).
    pub(super) fn socket_count(&self) -> usize {
        self.descs
            .values()
            .filter(|d| matches!(&d.kind, DescKind::Socket(s) if s.fd.is_some()))
            .count()
    }

    /// Open descriptors other than stdin/stdout/stderr-like ones.
    pub(super) fn count_files(&self) -> usize {
        self.fds
            .values()
            .filter(|(d, _)| {
                !matches!(
                    self.descs.get(d).map(|x| &x.kind),
                    Some(DescKind::Stdin | DescKind::Output(_)) | None
                )
            })
            .count()
    }

    /// Whether the table is stdin, stdout and stderr as at the start, nothing else.
    pub(super) fn is_initial(&self) -> bool {
        let kind = |fd: i32| self.desc(fd).map(|d| &d.kind);
        self.fds.len() == 3
            && matches!(kind(0), Some(DescKind::Stdin))
            && matches!(kind(1), Some(DescKind::Output(1)))
            && matches!(kind(2), Some(DescKind::Output(2)))
            && self.fds.values().all(|(_, cloexec)| !cloexec)
    }

    /// Whether reads and writes of `fd` wait when they cannot go on (a blocking pipe,
    /// eventfd, timerfd, signalfd or socket).
    pub(super) fn waits(&self, fd: i32) -> bool {
        self.desc(fd).is_some_and(|d| {
            !d.nonblock
                && matches!(
                    d.kind,
                    DescKind::PipeRead(_)
                        | DescKind::PipeWrite(_)
                        | DescKind::Event(_)
                        | DescKind::Timer(_)
                        | DescKind::Socket(_)
                        | DescKind::Signal(_)
                )
        })
    }

    /// Open descriptors.
    pub(super) fn count(&self) -> usize {
        self.fds.len()
    }
}

/// `AT_FDCWD`.
pub(super) const AT_FDCWD: i32 = -100;
const O_NONBLOCK: u64 = 0o4000;
const O_CLOEXEC: u64 = 0o2000000;
const O_APPEND: u64 = 0o2000;

mod calls;
mod epoll;
mod event;
mod ready;
mod socket;

use epoll::Epoll;
pub(super) use epoll::{EPOLLIN, EPOLLOUT};
use event::{EventFd, TimerFd};
pub(super) use ready::Interest;
use socket::Socket;
pub(super) use socket::RESOLVER_FILES;
