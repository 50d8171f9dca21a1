//! The file-descriptor table: what each kind of open descriptor does (see [`FdKind`]).

use edgevm_kvm::GuestMemory;

use std::mem::offset_of;

use edgevm_guest_abi::GuestPtr;

use super::{LinuxState, Output};
use crate::errno::*;
use crate::linux_abi::{get, put, PollFd, Stat, Termios, Winsize};

/// What kind of file a descriptor is. Every descriptor operation below asks this first; a new
/// kind (files, directories, pipes, eventfds, sockets) is a variant here and an arm in the
/// operations, and the system-call dispatcher ([`LinuxState::fd_call`]) does not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FdKind {
    /// fd 0: an empty pipe (reads return EOF).
    Stdin,
    /// fd 1 and 2: the program's output, a terminal to the program.
    Output,
    /// The program's `state` file ([`crate::files`]).
    State,
    /// Nothing open.
    Closed,
}

use FdKind::*;

/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;
/// `MAP_ANONYMOUS`.
const MAP_ANONYMOUS: u64 = 0x20;

impl LinuxState {
    /// The kind of descriptor `fd`.
    pub(super) fn fd_kind(&self, fd: i32) -> FdKind {
        if self.files.is_open(fd) {
            return State;
        }
        match fd {
            0 => Stdin,
            1 | 2 => Output,
            _ => Closed,
        }
    }

    /// The calls on descriptors and paths; None if `nr` is none of them.
    pub(super) fn fd_call(
        &mut self,
        nr: i64,
        a: [u64; 6],
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> Option<i64> {
        let fd = a[0] as i64 as i32;
        let kind = self.fd_kind(fd);
        // Seek-type calls on a stream; calls that need a file but got a stream.
        let no_seek = |k| if k == Closed { -EBADF } else { -ESPIPE };
        let not_file = |k| if k == Closed { -EBADF } else { -EINVAL };
        Some(match nr {
            libc::SYS_open => self.files.open(AT_FDCWD, a[0], a[1], mem),
            libc::SYS_creat => self.files.open(AT_FDCWD, a[0], 0o1101, mem),
            libc::SYS_openat => self.files.open(a[0] as i32, a[1], a[2], mem),
            libc::SYS_stat | libc::SYS_lstat => self.files.stat_path(AT_FDCWD, a[0], a[1], mem),
            libc::SYS_newfstatat => self.sys_newfstatat(a, mem),
            libc::SYS_access => self.files.access(AT_FDCWD, a[0], a[1], mem),
            libc::SYS_faccessat | libc::SYS_faccessat2 => {
                self.files.access(a[0] as i32, a[1], a[2], mem)
            }
            libc::SYS_read => match kind {
                State => self.files.read(fd, a[1], a[2], None, mem),
                Stdin => 0,
                Output | Closed => -EBADF,
            },
            libc::SYS_write => match kind {
                State => self.files.write(fd, a[1], a[2], None, mem),
                Output => self.sys_write(fd, a[1], a[2], mem, out),
                Stdin | Closed => -EBADF,
            },
            libc::SYS_pread64 | libc::SYS_pwrite64 if kind == State && (a[3] as i64) < 0 => -EINVAL,
            libc::SYS_pread64 if kind == State => self.files.read(fd, a[1], a[2], Some(a[3]), mem),
            libc::SYS_pwrite64 if kind == State => {
                self.files.write(fd, a[1], a[2], Some(a[3]), mem)
            }
            libc::SYS_lseek if kind == State => self.files.lseek(fd, a[1] as i64, a[2]),
            libc::SYS_lseek | libc::SYS_pread64 | libc::SYS_pwrite64 => no_seek(kind),
            libc::SYS_readv => match kind {
                State => self.files.vectored(fd, a[1], a[2], false, mem),
                Stdin => 0,
                Output | Closed => -EBADF,
            },
            libc::SYS_writev => match kind {
                State => self.files.vectored(fd, a[1], a[2], true, mem),
                Output => self.sys_writev(fd, a[1], a[2], mem, out),
                Stdin | Closed => -EBADF,
            },
            libc::SYS_close => match kind {
                State => self.files.close(fd),
                Stdin | Output => 0,
                Closed => -EBADF,
            },
            libc::SYS_fstat => self.fstat(fd, a[1], mem),
            libc::SYS_ioctl => match kind {
                State => -ENOTTY,
                Stdin | Output | Closed => self.sys_ioctl_std(fd, a[1], a[2], mem),
            },
            libc::SYS_fcntl => match kind {
                State => self.files.fcntl(fd, a[1], a[2]),
                Stdin | Output | Closed => stdio_fcntl(fd, a[1]),
            },
            libc::SYS_fsync | libc::SYS_fdatasync if kind == State => self.files.fsync(fd),
            libc::SYS_ftruncate if kind == State => self.files.ftruncate(fd, a[1] as i64),
            libc::SYS_fsync | libc::SYS_fdatasync | libc::SYS_ftruncate => not_file(kind),
            // flock (one process) and fadvise64 are accepted on files only (else ENOSYS).
            libc::SYS_flock | libc::SYS_fadvise64 if kind == State => 0,
            libc::SYS_mmap
                if a[3] & MAP_ANONYMOUS == 0 && self.fd_kind(a[4] as i64 as i32) == State =>
            {
                -ENODEV
            }
            libc::SYS_poll | libc::SYS_ppoll => self.sys_poll(a[0], a[1], mem),
            _ => return None,
        })
    }

    /// fstat on any kind of descriptor.
    fn fstat(&mut self, fd: i32, buf: u64, mem: &mut GuestMemory) -> i64 {
        match self.fd_kind(fd) {
            State => self.files.fstat(fd, buf, mem),
            Stdin | Output | Closed => self.sys_fstat(fd, buf, mem),
        }
    }

    /// poll/ppoll's answer for one descriptor.
    fn poll_events(&self, fd: i32, events: i16) -> i16 {
        const POLLIN: i16 = 1;
        const POLLOUT: i16 = 4;
        const POLLNVAL: i16 = 0x20;
        if fd < 0 {
            return 0;
        }
        match self.fd_kind(fd) {
            Stdin => events & POLLIN,
            Output => events & POLLOUT,
            State => events & (POLLIN | POLLOUT),
            Closed => POLLNVAL,
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
        if fd != 1 && fd != 2 {
            return -EBADF;
        }
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
        if fd != 1 && fd != 2 {
            return -EBADF;
        }
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

    /// poll/ppoll on the standard descriptors: stdin is at EOF (readable), stdout and stderr
    /// are always writable, anything else is not open (POLLNVAL). Never blocks.
    fn sys_poll(&mut self, fds: u64, n: u64, mem: &mut GuestMemory) -> i64 {
        if n > 1024 {
            return -EINVAL;
        }
        let mut ready = 0;
        for i in 0..n {
            let at = GuestPtr::<PollFd>::new(fds).index(i);
            let Some(mut p) = get::<PollFd>(mem, at) else {
                return -EFAULT;
            };
            p.revents = self.poll_events(p.fd, p.events);
            if p.revents != 0 {
                ready += 1;
            }
            let revents_at = at + offset_of!(PollFd, revents) as u64;
            if put(mem, revents_at, &p.revents) != 0 {
                return -EFAULT;
            }
        }
        ready
    }

    /// stdin is an empty pipe; stdout and stderr look like a terminal (a character device
    /// that answers TCGETS and TIOCGWINSZ), so glibc and musl line-buffer stdout: what a
    /// program prints appears line by line, and nothing but a partial line can sit in a
    /// stdio buffer when the VM is frozen.
    fn sys_fstat(&mut self, fd: i32, buf: u64, mem: &mut GuestMemory) -> i64 {
        if !(0..=2).contains(&fd) {
            return -EBADF;
        }
        let mode: u32 = if fd == 0 { 0o010600 } else { 0o020620 }; // S_IFIFO, S_IFCHR
        let st = Stat {
            nlink: 1,
            mode,
            blksize: 4096,
            ..Stat::default()
        };
        put(mem, buf, &st)
    }

    /// ioctl on fds 0-2: TCGETS and TIOCGWINSZ succeed on stdout/stderr (a terminal, see
    /// `sys_fstat`); everything else is ENOTTY.
    fn sys_ioctl_std(&mut self, fd: i32, req: u64, arg: u64, mem: &mut GuestMemory) -> i64 {
        const TCGETS: u64 = 0x5401;
        const TIOCGWINSZ: u64 = 0x5413;
        match (fd, req & 0xFFFF_FFFF) {
            (1 | 2, TCGETS) => {
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
            (1 | 2, TIOCGWINSZ) => {
                let w = Winsize {
                    rows: 24,
                    cols: 80,
                    ..Winsize::default()
                };
                put(mem, arg, &w)
            }
            (0..=2, _) => -ENOTTY,
            _ => -EBADF,
        }
    }

    fn sys_newfstatat(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const AT_EMPTY_PATH: u64 = 0x1000;
        let path = match mem.read_cstr(a[1], 4096) {
            Ok(p) => p,
            Err(_) => return -EFAULT,
        };
        if path.is_empty() && a[3] & AT_EMPTY_PATH != 0 {
            return self.fstat(a[0] as i32, a[2], mem);
        }
        self.files.stat_path(a[0] as i32, a[1], a[2], mem)
    }
}

/// fcntl on the standard descriptors.
fn stdio_fcntl(fd: i32, cmd: u64) -> i64 {
    match (fd, cmd) {
        (0..=2, 1) => 0,     // F_GETFD
        (0..=2, 2 | 4) => 0, // F_SETFD, F_SETFL
        (0, 3) => 0,         // F_GETFL: O_RDONLY
        (1..=2, 3) => 1,     // O_WRONLY
        (0..=2, _) => -EINVAL,
        _ => -EBADF,
    }
}
