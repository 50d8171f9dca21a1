//! The descriptor system calls on the table of [`super`]: read/write and their vectored and
//! positioned forms, pipes, fstat, fcntl, poll, ioctl, dup and close.

use super::*;
use edgevm_kvm::GuestMemory;

use super::{LinuxState, Output};
use crate::files::MAX_FDS;
use crate::linux_abi::{put, Stat, Termios, Winsize};

impl LinuxState {
    /// The kind of descriptor `fd`.
    pub(in crate::linux) fn fd_kind(&self, fd: i32) -> FdKind {
        match self.fds.desc(fd).map(|d| &d.kind) {
            None => Closed,
            Some(DescKind::Stdin) => Stdin,
            Some(DescKind::Output(_)) => Output,
            Some(DescKind::File(_)) => File,
            Some(DescKind::Dir(_)) => Dir,
            Some(DescKind::PipeRead(_)) => PipeRead,
            Some(DescKind::PipeWrite(_)) => PipeWrite,
            Some(DescKind::Event(_)) => Event,
            Some(DescKind::Timer(_)) => Timer,
            Some(DescKind::Epoll(_)) => Epoll,
            Some(DescKind::Socket(_)) => Socket,
            Some(DescKind::Signal(_)) => Signal,
        }
    }

    /// The calls on descriptors and paths; None if `nr` is none of them.
    pub(in crate::linux) fn fd_call(
        &mut self,
        nr: i64,
        a: [u64; 6],
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> Option<i64> {
        if let Some(v) = self.path_call(nr, a, mem) {
            return Some(v);
        }
        let fd = a[0] as i64 as i32;
        let kind = self.fd_kind(fd);
        // Seek-type calls on a stream; calls that need a file but got a stream.
        let no_seek = |k| if k == Closed { -EBADF } else { -ESPIPE };
        let not_file = |k| if k == Closed { -EBADF } else { -EINVAL };
        Some(match nr {
            libc::SYS_read => self.read(fd, a[1], a[2], mem, out),
            libc::SYS_write => self.write(fd, a[1], a[2], mem, out),
            libc::SYS_pread64 | libc::SYS_pwrite64 if kind == File && (a[3] as i64) < 0 => -EINVAL,
            libc::SYS_pread64 if kind == File => match self.fds.file_mut(fd) {
                Some(f) => f.read(a[1], a[2], Some(a[3]), mem),
                None => -EBADF,
            },
            libc::SYS_pwrite64 if kind == File => match self.fds.file_mut(fd) {
                Some(f) => f.write(a[1], a[2], Some(a[3]), mem),
                None => -EBADF,
            },
            libc::SYS_pread64 | libc::SYS_pwrite64 if kind == Dir => -EISDIR,
            libc::SYS_lseek => match kind {
                File => match self.fds.file_mut(fd) {
                    Some(f) => f.lseek(a[1] as i64, a[2]),
                    None => -EBADF,
                },
                Dir => match self.fds.dir_mut(fd) {
                    Some(d) => d.lseek(a[1] as i64, a[2]),
                    None => -EBADF,
                },
                k => no_seek(k),
            },
            libc::SYS_pread64 | libc::SYS_pwrite64 => no_seek(kind),
            libc::SYS_readv => self.vectored(fd, a[1], a[2], false, mem, out),
            libc::SYS_writev => self.vectored(fd, a[1], a[2], true, mem, out),
            libc::SYS_close => self.fds.close(fd),
            libc::SYS_dup => self.fds.dup(fd, None, 0, false),
            libc::SYS_dup2 => {
                if kind == Closed {
                    -EBADF
                } else {
                    self.fds.dup(fd, Some(a[1] as i64 as i32), 0, false)
                }
            }
            libc::SYS_dup3 => {
                if a[2] & !O_CLOEXEC != 0 || a[0] == a[1] {
                    -EINVAL
                } else {
                    self.fds
                        .dup(fd, Some(a[1] as i64 as i32), 0, a[2] & O_CLOEXEC != 0)
                }
            }
            libc::SYS_pipe => self.pipe(a[0], 0, mem),
            libc::SYS_pipe2 => self.pipe(a[0], a[1], mem),
            libc::SYS_getdents64 => match self.fds.dir_mut(fd) {
                Some(d) => d.getdents(a[1], a[2], mem),
                None => not_dir(kind),
            },
            libc::SYS_fstat => self.fstat(fd, a[1], mem),
            libc::SYS_ioctl => self.ioctl(fd, a[1], a[2], mem),
            libc::SYS_fcntl => self.fcntl(fd, a[1], a[2]),
            libc::SYS_fsync | libc::SYS_fdatasync => match kind {
                File => self.fds.file(fd).map_or(-EBADF, |f| f.fsync()),
                Dir => 0,
                k => not_file(k),
            },
            libc::SYS_ftruncate => match self.fds.file_mut(fd) {
                Some(f) => f.ftruncate(a[1] as i64),
                None => not_file(kind),
            },
            libc::SYS_fchdir => match self.fds.dir(fd) {
                Some(d) => {
                    self.cwd = d.path.clone();
                    0
                }
                None => not_dir(kind),
            },
            // flock (one process) and fadvise64 are accepted on files only (else ENOSYS).
            libc::SYS_flock | libc::SYS_fadvise64 if matches!(kind, File | Dir) => 0,
            libc::SYS_eventfd => self.sys_eventfd2(a[0], 0),
            libc::SYS_eventfd2 => self.sys_eventfd2(a[0], a[1]),
            libc::SYS_timerfd_create => self.sys_timerfd_create(a[0], a[1]),
            libc::SYS_signalfd => self.sys_signalfd4(a[0], a[1], a[2], 0, mem),
            libc::SYS_signalfd4 => self.sys_signalfd4(a[0], a[1], a[2], a[3], mem),
            libc::SYS_timerfd_settime => self.sys_timerfd_settime(a, mem),
            libc::SYS_timerfd_gettime => self.sys_timerfd_gettime(a[0], a[1], mem),
            libc::SYS_epoll_create => {
                if (a[0] as i64 as i32) <= 0 {
                    -EINVAL
                } else {
                    self.sys_epoll_create1(0)
                }
            }
            libc::SYS_epoll_create1 => self.sys_epoll_create1(a[0]),
            libc::SYS_epoll_ctl => self.sys_epoll_ctl(a, mem),
            _ => return None,
        })
    }

    pub(in crate::linux) fn read(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        let Some(desc) = self.fds.desc_mut(fd) else {
            return -EBADF;
        };
        let nonblock = desc.nonblock;
        match &mut desc.kind {
            DescKind::File(f) => f.read(buf, len, None, mem),
            DescKind::Stdin => 0,
            DescKind::Dir(_) => -EISDIR,
            DescKind::Output(_) | DescKind::PipeWrite(_) => -EBADF,
            DescKind::PipeRead(p) => {
                let p = *p;
                self.pipe_read(p, buf, len, nonblock, mem)
            }
            DescKind::Event(e) => Self::eventfd_read(e, buf, len, mem),
            DescKind::Timer(t) => Self::timerfd_read(t, buf, len, mem),
            DescKind::Epoll(_) => -EINVAL,
            DescKind::Socket(_) => self.sock_recv(fd, &[(buf, len)], 0, None, mem, out).0,
            DescKind::Signal(mask) => {
                let mask = *mask;
                self.signalfd_read(mask, buf, len, mem)
            }
        }
    }

    pub(in crate::linux) fn write(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        let Some(desc) = self.fds.desc_mut(fd) else {
            return -EBADF;
        };
        match &mut desc.kind {
            DescKind::File(f) => f.write(buf, len, None, mem),
            DescKind::Output(stream) => {
                let s = *stream;
                self.sys_write(s, buf, len, mem, out)
            }
            DescKind::PipeWrite(p) => {
                let p = *p;
                self.pipe_write(p, buf, len, mem)
            }
            DescKind::Event(e) => Self::eventfd_write(e, buf, len, mem),
            DescKind::Timer(_) | DescKind::Epoll(_) | DescKind::Signal(_) => -EINVAL,
            DescKind::Socket(_) => self.sock_send(fd, &[(buf, len)], 0, None, mem, out),
            DescKind::Stdin | DescKind::Dir(_) | DescKind::PipeRead(_) => -EBADF,
        }
    }

    /// readv/writev: outputs gather into one write; everything else is one call per entry.
    pub(in crate::linux) fn vectored(
        &mut self,
        fd: i32,
        iov: u64,
        cnt: u64,
        write: bool,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        if let Some(DescKind::Output(s)) = self.fds.desc(fd).map(|d| &d.kind) {
            if !write {
                return -EBADF;
            }
            let s = *s;
            return self.sys_writev(s, iov, cnt, mem, out);
        }
        if self.fd_kind(fd) == Closed {
            return -EBADF;
        }
        if cnt > 1024 {
            return -EINVAL;
        }
        let mut total = 0i64;
        for i in 0..cnt {
            let (Ok(base), Ok(len)) = (
                mem.read_u64(iov.wrapping_add(16 * i)),
                mem.read_u64(iov.wrapping_add(16 * i + 8)),
            ) else {
                return if total > 0 { total } else { -EFAULT };
            };
            if len == 0 {
                continue;
            }
            let r = if write {
                self.write(fd, base, len, mem, out)
            } else {
                self.read(fd, base, len, mem, out)
            };
            if r < 0 {
                return if total > 0 { total } else { r };
            }
            total += r;
            if (r as u64) < len {
                break;
            }
        }
        total
    }

    /// pipe/pipe2: a pipe inside this process (its buffer is part of the process state).
    fn pipe(&mut self, fds: u64, flags: u64, mem: &mut GuestMemory) -> i64 {
        const O_DIRECT: u64 = 0o40000;
        if flags & !(O_CLOEXEC | O_NONBLOCK | O_DIRECT) != 0 {
            return -EINVAL;
        }
        if !mem.contains(fds, 8) {
            return -EFAULT;
        }
        if self.fds.count() + 2 > MAX_FDS {
            return -EMFILE;
        }
        let id = self.fds.next;
        let (cloexec, nonblock) = (flags & O_CLOEXEC != 0, flags & O_NONBLOCK != 0);
        let r = self.fds.install(DescKind::PipeRead(id), cloexec, nonblock);
        let w = self.fds.install(DescKind::PipeWrite(id), cloexec, nonblock);
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&(r as i32).to_le_bytes());
        b[4..].copy_from_slice(&(w as i32).to_le_bytes());
        if mem.write(fds, &b).is_err() {
            self.fds.close(r as i32);
            self.fds.close(w as i32);
            return -EFAULT;
        }
        0
    }

    /// A read from an empty pipe whose write end is open fails with EAGAIN; a blocking
    /// descriptor then waits for a writer (`wait.rs`).
    fn pipe_read(
        &mut self,
        p: u32,
        buf: u64,
        len: u64,
        _nonblock: bool,
        mem: &mut GuestMemory,
    ) -> i64 {
        let Some(pipe) = self.fds.pipes.get_mut(&p) else {
            return 0;
        };
        if pipe.buf.is_empty() {
            return if pipe.writers == 0 { 0 } else { -EAGAIN };
        }
        let n = (len as usize).min(pipe.buf.len());
        if !mem.contains(buf, n) {
            return -EFAULT;
        }
        let data: Vec<u8> = pipe.buf.iter().take(n).copied().collect();
        if mem.write(buf, &data).is_err() {
            return -EFAULT;
        }
        pipe.buf.drain(..n);
        n as i64
    }

    /// A write to a full pipe fails with EAGAIN (a blocking descriptor then waits for a
    /// reader); a write with no reader left fails with EPIPE.
    fn pipe_write(&mut self, p: u32, buf: u64, len: u64, mem: &GuestMemory) -> i64 {
        let Some(pipe) = self.fds.pipes.get_mut(&p) else {
            return -EPIPE;
        };
        if pipe.readers == 0 {
            return -EPIPE;
        }
        let room = PIPE_SIZE - pipe.buf.len();
        if room == 0 {
            return -EAGAIN;
        }
        let n = (len as usize).min(room);
        match mem.read_vec(buf, n) {
            Ok(d) => {
                pipe.buf.extend(d);
                pipe.gen = pipe.gen.wrapping_add(1);
                n as i64
            }
            Err(_) => -EFAULT,
        }
    }

    /// fstat on any kind of descriptor.
    pub(in crate::linux) fn fstat(&mut self, fd: i32, buf: u64, mem: &mut GuestMemory) -> i64 {
        match self.fd_stat(fd) {
            Ok(st) => put(mem, buf, &st),
            Err(e) => e,
        }
    }

    /// The `struct stat` of descriptor `fd`.
    pub(in crate::linux) fn fd_stat(&self, fd: i32) -> Result<Stat, i64> {
        let mode: u32 = match self.fds.desc(fd).map(|d| &d.kind) {
            None => return Err(-EBADF),
            Some(DescKind::File(f)) => return f.stat(),
            Some(DescKind::Dir(d)) => return d.stat(),
            Some(DescKind::Stdin | DescKind::PipeRead(_) | DescKind::PipeWrite(_)) => 0o010600,
            Some(DescKind::Output(_)) => 0o020620, // S_IFCHR: a terminal
            // Anonymous inodes, as Linux reports them.
            Some(
                DescKind::Event(_) | DescKind::Timer(_) | DescKind::Epoll(_) | DescKind::Signal(_),
            ) => 0o600,
            Some(DescKind::Socket(_)) => 0o140777, // S_IFSOCK
        };
        Ok(Stat {
            nlink: 1,
            mode,
            blksize: 4096,
            ..Stat::default()
        })
    }

    /// fcntl.
    fn fcntl(&mut self, fd: i32, cmd: u64, arg: u64) -> i64 {
        const F_DUPFD_CLOEXEC: u64 = 1030;
        const F_GETPIPE_SZ: u64 = 1032;
        let kind = self.fd_kind(fd);
        if kind == Closed {
            return -EBADF;
        }
        match cmd {
            0 | F_DUPFD_CLOEXEC => {
                let min = arg as i64;
                if !(0..MAX_FDS as i64).contains(&min) {
                    return -EINVAL;
                }
                self.fds.dup(fd, None, min as i32, cmd == F_DUPFD_CLOEXEC)
            }
            1 => i64::from(self.fds.fds.get(&fd).is_some_and(|x| x.1)),
            2 => {
                if let Some(x) = self.fds.fds.get_mut(&fd) {
                    x.1 = arg & 1 != 0;
                }
                0
            }
            3 => {
                let d = self.fds.desc(fd).expect("open");
                let nb = if d.nonblock { O_NONBLOCK as i64 } else { 0 };
                nb | match &d.kind {
                    DescKind::File(f) => f.status_flags(),
                    DescKind::Output(_) | DescKind::PipeWrite(_) => 1, // O_WRONLY
                    DescKind::Dir(_) => 0o200000,                      // O_DIRECTORY
                    DescKind::Event(_)
                    | DescKind::Timer(_)
                    | DescKind::Epoll(_)
                    | DescKind::Signal(_)
                    | DescKind::Socket(_) => 2, // O_RDWR
                    _ => 0,
                }
            }
            4 => {
                let d = self.fds.desc_mut(fd).expect("open");
                d.nonblock = arg & O_NONBLOCK != 0;
                if let DescKind::File(f) = &mut d.kind {
                    f.append = arg & O_APPEND != 0;
                }
                0
            }
            // F_GETLK, F_SETLK, F_SETLKW and the OFD variants: one process, always granted.
            5..=7 | 36..=38 => {
                if matches!(kind, File | Dir) {
                    0
                } else {
                    -EINVAL
                }
            }
            F_GETPIPE_SZ if matches!(kind, PipeRead | PipeWrite) => PIPE_SIZE as i64,
            _ => -EINVAL,
        }
    }

    fn sys_write(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        mem: &GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        let len = len.min(64 << 20) as usize;
        if !mem.contains(buf, len) {
            return -EFAULT;
        }
        match mem.read_vec(buf, len.min(out.room())) {
            Ok(data) => {
                out.write(fd, &data);
                len as i64
            }
            Err(_) => -EFAULT,
        }
    }

    fn sys_writev(
        &mut self,
        fd: i32,
        iov: u64,
        cnt: u64,
        mem: &GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        if cnt > 1024 {
            return -EINVAL;
        }
        // At most what one write() takes: 1024 entries naming the same 64 MiB would otherwise
        // make the host allocate 64 GiB (found by the `syscalls` fuzz target). Like Linux, a
        // write past the limit is short.
        const MAX_WRITE: usize = 64 << 20;
        let room = out.room();
        let mut data = Vec::new();
        let mut total = 0usize;
        for i in 0..cnt {
            let (Ok(base), Ok(len)) = (
                mem.read_u64(iov.wrapping_add(16 * i)),
                mem.read_u64(iov.wrapping_add(16 * i + 8)),
            ) else {
                return -EFAULT;
            };
            if len == 0 {
                continue;
            }
            if len > MAX_WRITE as u64 {
                return -EINVAL;
            }
            let take = (len as usize).min(MAX_WRITE - total);
            if !mem.contains(base, take) {
                return -EFAULT;
            }
            let copy = take.min(room.saturating_sub(data.len()));
            match mem.read_vec(base, copy) {
                Ok(d) => data.extend_from_slice(&d),
                Err(_) => return -EFAULT,
            }
            total += take;
            if total == MAX_WRITE {
                break;
            }
        }
        out.write(fd, &data);
        total as i64
    }

    /// ioctl: outputs answer TCGETS and TIOCGWINSZ (a terminal, so glibc and musl line-buffer
    /// stdout: what a program prints appears line by line, and nothing but a partial line can
    /// sit in a stdio buffer when the VM is frozen); FIOCLEX/FIONCLEX on anything open;
    /// everything else is ENOTTY.
    fn ioctl(&mut self, fd: i32, req: u64, arg: u64, mem: &mut GuestMemory) -> i64 {
        const TCGETS: u64 = 0x5401;
        const TIOCGWINSZ: u64 = 0x5413;
        const FIONCLEX: u64 = 0x5450;
        const FIOCLEX: u64 = 0x5451;
        const FIONBIO: u64 = 0x5421;
        const FIONREAD: u64 = 0x541B;
        let kind = self.fd_kind(fd);
        match (kind, req & 0xFFFF_FFFF) {
            (Closed, _) => -EBADF,
            (_, FIONBIO) => {
                let Ok(v) = mem.read_vec(arg, 4) else {
                    return -EFAULT;
                };
                if let Some(d) = self.fds.desc_mut(fd) {
                    d.nonblock = v != [0, 0, 0, 0];
                }
                0
            }
            (PipeRead | Socket, FIONREAD) => {
                let n = match self.fds.desc(fd).map(|d| &d.kind) {
                    Some(DescKind::Socket(s)) => s.fd.as_ref().map_or(0, |h| {
                        crate::hostnet::readable_bytes(std::os::fd::AsFd::as_fd(&**h)) as usize
                    }),
                    Some(DescKind::PipeRead(p)) => self.fds.pipes.get(p).map_or(0, |p| p.buf.len()),
                    _ => 0,
                };
                put(mem, arg, &(n as i32))
            }
            (_, FIOCLEX | FIONCLEX) => {
                if let Some(x) = self.fds.fds.get_mut(&fd) {
                    x.1 = req & 0xFFFF_FFFF == FIOCLEX;
                }
                0
            }
            (Output, TCGETS) => {
                // struct termios (kernel): iflag ICRNL, oflag OPOST|ONLCR, cflag B38400|CS8|
                // CREAD, lflag ISIG|ICANON|ECHO..., c_line, c_cc[19].
                let t = Termios {
                    iflag: 0o400,
                    oflag: 0o5,
                    cflag: 0o277,
                    lflag: 0o105073,
                    ..Termios::default()
                };
                put(mem, arg, &t)
            }
            (Output, TIOCGWINSZ) => {
                let w = Winsize {
                    rows: 24,
                    cols: 80,
                    ..Winsize::default()
                };
                put(mem, arg, &w)
            }
            _ => -ENOTTY,
        }
    }
}

fn not_dir(k: FdKind) -> i64 {
    if k == Closed {
        -EBADF
    } else {
        -ENOTDIR
    }
}
