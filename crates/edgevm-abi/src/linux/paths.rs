//! Calls on paths: open, stat, access, readlink, the working directory, mkdir, rename,
//! unlink. Which host file a path names is the sandbox's answer ([`crate::sandbox`]).

use std::os::fd::AsFd;

use edgevm_kvm::GuestMemory;
use rustix::fs::{AtFlags, Mode, OFlags};

use super::fds::{DescKind, AT_FDCWD};
use super::LinuxState;
use crate::errno::*;
use crate::files::{guest_stat, link_stat, statx_bytes, virtual_dir_stat, OpenDir, OpenFile};
use crate::linux_abi::{put, Stat};
use crate::sandbox::{normalize, open_host, parent_of, Target, PATH_MAX};

const O_ACCMODE: u64 = 3;
const O_CREAT: u64 = 0o100;
const O_EXCL: u64 = 0o200;
const O_TRUNC: u64 = 0o1000;
const O_APPEND: u64 = 0o2000;
const O_NONBLOCK: u64 = 0o4000;
const O_DIRECTORY: u64 = 0o200000;
const O_NOFOLLOW: u64 = 0o400000;
const O_CLOEXEC: u64 = 0o2000000;
const O_PATH: u64 = 0o10000000;
const O_TMPFILE: u64 = 0o20000000 | O_DIRECTORY;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_REMOVEDIR: u64 = 0x200;
const AT_EMPTY_PATH: u64 = 0x1000;

fn errno(e: rustix::io::Errno) -> i64 {
    -i64::from(e.raw_os_error())
}

impl LinuxState {
    /// The calls on paths; None if `nr` is none of them.
    pub(super) fn path_call(&mut self, nr: i64, a: [u64; 6], mem: &mut GuestMemory) -> Option<i64> {
        let at = AT_FDCWD as u64;
        let dirfd = |v: u64| v as i64 as i32;
        Some(match nr {
            libc::SYS_open => self.open(AT_FDCWD, a[0], a[1], a[2], mem),
            libc::SYS_creat => self.open(AT_FDCWD, a[0], 0o1101, a[1], mem),
            libc::SYS_openat => self.open(dirfd(a[0]), a[1], a[2], a[3], mem),
            libc::SYS_stat => self.stat_call(at, a[0], a[1], 0, mem),
            libc::SYS_lstat => self.stat_call(at, a[0], a[1], AT_SYMLINK_NOFOLLOW, mem),
            libc::SYS_newfstatat => self.stat_call(a[0], a[1], a[2], a[3], mem),
            libc::SYS_statx => self.statx(a, mem),
            libc::SYS_access => self.access(AT_FDCWD, a[0], a[1], mem),
            libc::SYS_faccessat | libc::SYS_faccessat2 => self.access(dirfd(a[0]), a[1], a[2], mem),
            libc::SYS_readlink => self.readlink(AT_FDCWD, a[0], a[1], a[2], mem),
            libc::SYS_readlinkat => self.readlink(dirfd(a[0]), a[1], a[2], a[3], mem),
            libc::SYS_getcwd => self.getcwd(a[0], a[1], mem),
            libc::SYS_chdir => self.chdir(a[0], mem),
            libc::SYS_mkdir => self.mkdir(AT_FDCWD, a[0], a[1], mem),
            libc::SYS_mkdirat => self.mkdir(dirfd(a[0]), a[1], a[2], mem),
            libc::SYS_unlink => self.unlink(AT_FDCWD, a[0], 0, mem),
            libc::SYS_rmdir => self.unlink(AT_FDCWD, a[0], AT_REMOVEDIR, mem),
            libc::SYS_unlinkat => self.unlink(dirfd(a[0]), a[1], a[2], mem),
            libc::SYS_rename => self.rename([AT_FDCWD, AT_FDCWD], [a[0], a[1]], 0, mem),
            libc::SYS_renameat => self.rename([dirfd(a[0]), dirfd(a[2])], [a[1], a[3]], 0, mem),
            libc::SYS_renameat2 => self.rename([dirfd(a[0]), dirfd(a[2])], [a[1], a[3]], a[4], mem),
            _ => return None,
        })
    }

    /// The guest path `path` (relative to `dirfd`), absolute and normalized.
    pub(super) fn guest_path(
        &self,
        dirfd: i32,
        path: u64,
        mem: &GuestMemory,
    ) -> Result<Vec<u8>, i64> {
        let p = match mem.read_cstr(path, PATH_MAX) {
            Ok(p) => p,
            Err(edgevm_kvm::MemError::Unterminated { .. }) => return Err(-ENAMETOOLONG),
            Err(_) => return Err(-EFAULT),
        };
        if p.first() == Some(&b'/') || p.is_empty() {
            return normalize(b"/", &p);
        }
        if dirfd == AT_FDCWD {
            return normalize(&self.cwd, &p);
        }
        match self.fds.dir(dirfd) {
            Some(d) => normalize(&d.path, &p),
            None if self.fd_kind(dirfd) == super::fds::FdKind::Closed => Err(-EBADF),
            None => Err(-ENOTDIR),
        }
    }

    /// Ok if the working directory is a directory the program can reach ("/" always is).
    pub fn check_cwd(&self) -> Result<(), i64> {
        if self.cwd == b"/" {
            return Ok(());
        }
        let st = self.stat_path(&self.cwd, false)?;
        if st.mode & 0o170000 != 0o040000 {
            return Err(-ENOTDIR);
        }
        Ok(())
    }

    /// Whether this VM may write below `rule` now.
    fn may_write(&self, rule: &crate::sandbox::PathRule) -> bool {
        self.may_write && rule.writable
    }

    fn log_denied(&self, p: &[u8], e: i64) {
        if self.cfg.verbose && e == -ENOENT {
            tracing::info!(
                "inaccessible path {:?} (not in allowed_paths)",
                String::from_utf8_lossy(p)
            );
        }
    }

    /// open/openat/creat.
    fn open(&mut self, dirfd: i32, path: u64, flags: u64, mode: u64, mem: &GuestMemory) -> i64 {
        let p = match self.guest_path(dirfd, path, mem) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let acc = flags & O_ACCMODE;
        if acc == O_ACCMODE || flags & O_TMPFILE == O_TMPFILE {
            return -EINVAL;
        }
        let (read, write) = (acc != 1, acc != 0);
        let creat = flags & O_CREAT != 0;
        let trunc = flags & O_TRUNC != 0;
        let dir_only = p.len() > 1 && p.ends_with(b"/") || flags & O_DIRECTORY != 0;
        let cloexec = flags & O_CLOEXEC != 0;
        let nonblock = flags & O_NONBLOCK != 0;
        let sandbox = self.sandbox.clone();
        let target = match sandbox.resolve(&p) {
            Ok(t) => t,
            Err(e) => {
                self.log_denied(&p, e);
                return e;
            }
        };
        let clean = p
            .strip_suffix(b"/")
            .filter(|s| !s.is_empty())
            .unwrap_or(&p)
            .to_vec();
        let (rule, base, rel, strict) = match target {
            Target::VirtualDir(names) => {
                if write || trunc {
                    return -EISDIR;
                }
                if creat && flags & O_EXCL != 0 {
                    return -EEXIST;
                }
                let d = OpenDir::virtual_dir(&names, clean);
                return self.fds.install(DescKind::Dir(d), cloexec, nonblock);
            }
            Target::Link(r) => {
                if flags & O_NOFOLLOW != 0 && flags & O_PATH == 0 {
                    return -ELOOP;
                }
                (r, r.real.clone(), Vec::new(), false)
            }
            Target::Host {
                rule,
                base,
                rel,
                strict_first,
            } => (rule, base, rel, strict_first),
        };
        let may_write = self.may_write(rule);
        if (write || trunc) && !may_write {
            return -EROFS;
        }
        let host = host_oflags(flags, read, write, dir_only, may_write);
        let mode = if rule.real.as_path() == self.cfg.state_file.as_deref().unwrap_or("".as_ref()) {
            0o600
        } else {
            (mode as u32) & 0o777
        };
        let fd = match open_host(&base, &rel, strict, host, mode) {
            Ok(fd) => fd,
            Err(e) if e == -ENOENT && creat && !may_write => return -EROFS,
            Err(e) => {
                self.log_denied(&p, e);
                return e;
            }
        };
        if creat && !may_write && flags & O_EXCL != 0 {
            return -EEXIST;
        }
        let st = match rustix::fs::fstat(&fd) {
            Ok(s) => s,
            Err(e) => return errno(e),
        };
        // Opened O_NONBLOCK so that a FIFO in an allowed tree cannot stall the host thread;
        // FIFOs and sockets are not for guests (ENXIO).
        if matches!(st.st_mode & 0o170000, 0o010000 | 0o140000) {
            return -ENXIO;
        }
        let is_dir = st.st_mode & 0o170000 == 0o040000;
        if is_dir {
            if write {
                return -EISDIR;
            }
            return match OpenDir::host(fd, clean) {
                Ok(d) => self.fds.install(DescKind::Dir(d), cloexec, nonblock),
                Err(e) => e,
            };
        }
        if self.fds.count() >= crate::files::MAX_FDS {
            return -EMFILE;
        }
        let f = OpenFile {
            file: std::sync::Arc::new(std::fs::File::from(fd)),
            offset: 0,
            read,
            write: write && may_write,
            append: flags & O_APPEND != 0,
            path: clean,
        };
        self.fds.install(DescKind::File(f), cloexec, nonblock)
    }

    /// The `struct stat` of a path (following a final symlink unless `nofollow`).
    fn stat_path(&self, p: &[u8], nofollow: bool) -> Result<Stat, i64> {
        let target = self
            .sandbox
            .resolve(p)
            .inspect_err(|&e| self.log_denied(p, e))?;
        let (base, rel, strict) = match target {
            Target::VirtualDir(_) => return Ok(virtual_dir_stat()),
            Target::Link(r) if nofollow => {
                return Ok(link_stat(r.real.as_os_str().len()));
            }
            Target::Link(r) => (r.real.clone(), Vec::new(), false),
            Target::Host {
                base,
                rel,
                strict_first,
                ..
            } => (base, rel, strict_first),
        };
        let mut flags = OFlags::PATH;
        if nofollow {
            flags |= OFlags::NOFOLLOW;
        }
        if p.len() > 1 && p.ends_with(b"/") {
            flags |= OFlags::DIRECTORY;
        }
        let fd = open_host(&base, &rel, strict, flags, 0)?;
        rustix::fs::fstat(&fd)
            .map(|s| guest_stat(&s))
            .map_err(errno)
    }

    /// The `struct stat` for stat/lstat/newfstatat/statx arguments.
    fn stat_any(&self, dirfd: i32, path: u64, flags: u64, mem: &GuestMemory) -> Result<Stat, i64> {
        if flags & AT_EMPTY_PATH != 0 && matches!(mem.read_cstr(path, 1).as_deref(), Ok(b"")) {
            if dirfd == AT_FDCWD {
                let cwd = self.cwd.clone();
                return self.stat_path(&cwd, false);
            }
            return self.fd_stat(dirfd);
        }
        let p = self.guest_path(dirfd, path, mem)?;
        self.stat_path(&p, flags & AT_SYMLINK_NOFOLLOW != 0)
    }

    fn stat_call(
        &mut self,
        dirfd: u64,
        path: u64,
        buf: u64,
        flags: u64,
        mem: &mut GuestMemory,
    ) -> i64 {
        match self.stat_any(dirfd as i64 as i32, path, flags, mem) {
            Ok(st) => put(mem, buf, &st),
            Err(e) => e,
        }
    }

    fn statx(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        match self.stat_any(a[0] as i64 as i32, a[1], a[2], mem) {
            Ok(st) => match mem.write(a[4], &statx_bytes(&st)) {
                Ok(()) => 0,
                Err(_) => -EFAULT,
            },
            Err(e) => e,
        }
    }

    /// access/faccessat: W_OK is EROFS where this VM may not write.
    fn access(&mut self, dirfd: i32, path: u64, mode: u64, mem: &GuestMemory) -> i64 {
        if mode & !7 != 0 {
            return -EINVAL;
        }
        let p = match self.guest_path(dirfd, path, mem) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let st = match self.stat_path(&p, false) {
            Ok(s) => s,
            Err(e) => return e,
        };
        if mode & 2 != 0 {
            let writable = match self.sandbox.resolve(&p) {
                Ok(Target::Host { rule, .. }) => self.may_write(rule),
                _ => false,
            };
            if !writable {
                return -EROFS;
            }
        }
        if mode & 1 != 0 && st.mode & 0o111 == 0 {
            return -EACCES;
        }
        0
    }

    /// readlink/readlinkat: symlink rules, links inside allowed trees, /proc/self/exe and
    /// /proc/self/fd/N.
    fn readlink(
        &mut self,
        dirfd: i32,
        path: u64,
        buf: u64,
        size: u64,
        mem: &mut GuestMemory,
    ) -> i64 {
        if (size as i64) <= 0 {
            return -EINVAL;
        }
        let p = match self.guest_path(dirfd, path, mem) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let target: Vec<u8> = match self.sandbox.resolve(&p) {
            Ok(Target::Link(r)) => r.real.as_os_str().as_encoded_bytes().to_vec(),
            Ok(Target::VirtualDir(_)) => return -EINVAL,
            Ok(Target::Host {
                base,
                rel,
                strict_first,
                ..
            }) => {
                let fd = match open_host(
                    &base,
                    &rel,
                    strict_first,
                    OFlags::PATH | OFlags::NOFOLLOW,
                    0,
                ) {
                    Ok(fd) => fd,
                    Err(e) => return e,
                };
                match rustix::fs::readlinkat(fd.as_fd(), "", Vec::new()) {
                    Ok(t) => t.into_bytes(),
                    Err(e) if e == rustix::io::Errno::NOENT => return -EINVAL,
                    Err(e) => return errno(e),
                }
            }
            Err(e) if p == b"/proc/self/exe" => {
                let _ = e;
                self.cfg.exe_path.as_bytes().to_vec()
            }
            Err(e) => match p.strip_prefix(b"/proc/self/fd/") {
                Some(n) => {
                    let fd = std::str::from_utf8(n)
                        .ok()
                        .and_then(|s| s.parse::<i32>().ok());
                    match fd.and_then(|fd| self.fds.desc(fd)).map(|d| &d.kind) {
                        Some(DescKind::File(f)) => f.path.clone(),
                        Some(DescKind::Dir(d)) => d.path.clone(),
                        Some(DescKind::PipeRead(i) | DescKind::PipeWrite(i)) => {
                            format!("pipe:[{i}]").into_bytes()
                        }
                        Some(DescKind::Stdin | DescKind::Output(_)) => b"/dev/pts/0".to_vec(),
                        Some(DescKind::Event(_)) => b"anon_inode:[eventfd]".to_vec(),
                        Some(DescKind::Timer(_)) => b"anon_inode:[timerfd]".to_vec(),
                        Some(DescKind::Epoll(_)) => b"anon_inode:[eventpoll]".to_vec(),
                        Some(DescKind::Socket(_)) => b"socket:[0]".to_vec(),
                        Some(DescKind::Signal(_)) => b"anon_inode:[signalfd]".to_vec(),
                        None => return -ENOENT,
                    }
                }
                None => {
                    self.log_denied(&p, e);
                    return e;
                }
            },
        };
        let n = target.len().min(size as usize);
        match mem.write(buf, &target[..n]) {
            Ok(()) => n as i64,
            Err(_) => -EFAULT,
        }
    }

    fn getcwd(&mut self, buf: u64, size: u64, mem: &mut GuestMemory) -> i64 {
        let mut c = self.cwd.clone();
        c.push(0);
        if (size as usize) < c.len() {
            return -ERANGE;
        }
        match mem.write(buf, &c) {
            Ok(()) => c.len() as i64,
            Err(_) => -EFAULT,
        }
    }

    fn chdir(&mut self, path: u64, mem: &GuestMemory) -> i64 {
        let p = match self.guest_path(AT_FDCWD, path, mem) {
            Ok(p) => p,
            Err(e) => return e,
        };
        match self.stat_path(&p, false) {
            Ok(st) if st.mode & 0o170000 == 0o040000 => {
                let mut p = p;
                if p.len() > 1 && p.ends_with(b"/") {
                    p.pop();
                }
                self.cwd = p;
                0
            }
            Ok(_) => -ENOTDIR,
            Err(e) => e,
        }
    }

    /// The confined parent directory and last name of a path this VM may change.
    fn writable_parent(&self, p: &[u8]) -> Result<(std::os::fd::OwnedFd, Vec<u8>), i64> {
        match self.sandbox.resolve(p) {
            Ok(Target::Host {
                rule,
                base,
                rel,
                strict_first,
            }) => {
                if !self.may_write(rule) {
                    return Err(-EROFS);
                }
                let rel = rel.strip_suffix(b"/").unwrap_or(&rel);
                parent_of(&base, rel, strict_first)
            }
            Ok(_) => Err(-EROFS),
            Err(e) => {
                self.log_denied(p, e);
                Err(e)
            }
        }
    }

    fn mkdir(&mut self, dirfd: i32, path: u64, mode: u64, mem: &GuestMemory) -> i64 {
        let r = self.guest_path(dirfd, path, mem).and_then(|p| {
            if let Ok(Target::VirtualDir(_) | Target::Link(_)) = self.sandbox.resolve(&p) {
                return Err(-EEXIST);
            }
            let (dir, name) = self.writable_parent(&p)?;
            rustix::fs::mkdirat(
                &dir,
                name.as_slice(),
                Mode::from_raw_mode((mode as u32) & 0o777),
            )
            .map_err(errno)
        });
        r.err().unwrap_or(0)
    }

    fn unlink(&mut self, dirfd: i32, path: u64, flags: u64, mem: &GuestMemory) -> i64 {
        if flags & !AT_REMOVEDIR != 0 {
            return -EINVAL;
        }
        let r = self.guest_path(dirfd, path, mem).and_then(|p| {
            let (dir, name) = self.writable_parent(&p)?;
            let f = if flags & AT_REMOVEDIR != 0 {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            rustix::fs::unlinkat(&dir, name.as_slice(), f).map_err(errno)
        });
        r.err().unwrap_or(0)
    }

    fn rename(&mut self, dirfd: [i32; 2], path: [u64; 2], flags: u64, mem: &GuestMemory) -> i64 {
        if flags & !7 != 0 {
            return -EINVAL;
        }
        let r = (|| {
            let from = self.guest_path(dirfd[0], path[0], mem)?;
            let to = self.guest_path(dirfd[1], path[1], mem)?;
            let (d1, n1) = self.writable_parent(&from)?;
            let (d2, n2) = self.writable_parent(&to)?;
            rustix::fs::renameat_with(
                &d1,
                n1.as_slice(),
                &d2,
                n2.as_slice(),
                rustix::fs::RenameFlags::from_bits_retain(flags as u32),
            )
            .map_err(errno)
        })();
        r.err().unwrap_or(0)
    }
}

/// The host's open flags for a guest open: the access mode, never blocking (a FIFO must not
/// stall the host), and creation only where the guest may write.
fn host_oflags(flags: u64, read: bool, write: bool, dir_only: bool, may_write: bool) -> OFlags {
    let mut host = if write {
        if read {
            OFlags::RDWR
        } else {
            OFlags::WRONLY
        }
    } else {
        OFlags::RDONLY
    };
    host |= OFlags::NONBLOCK;
    if dir_only {
        host |= OFlags::DIRECTORY;
    }
    if flags & O_NOFOLLOW != 0 {
        host |= OFlags::NOFOLLOW;
    }
    if flags & O_TRUNC != 0 {
        host |= OFlags::TRUNC;
    }
    if flags & O_CREAT != 0 && may_write {
        host |= OFlags::CREATE;
        if flags & O_EXCL != 0 {
            host |= OFlags::EXCL;
        }
    }
    host
}
