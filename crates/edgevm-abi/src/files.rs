//! The one file a program can open: its `state` file.
//!
//! Every program gets `KVM_STATE=state` in its environment. Opening that path inside the guest
//! (`state`, `./state` or `/state`: the working directory is `/`) opens the host file
//! `<filename>.state` (the program's configured `filename` plus `.state`), so what a program
//! keeps there survives live updates and server restarts. Every other path fails with
//! `ENOENT`, as before: the guest never names a host path, it can only reach this one file,
//! whose host path comes from the configuration.
//!
//! Who may write: the main VM while it initializes (and runs warmup requests) and the storage
//! VM. When a program is frozen at `wait_for_requests()` its file table becomes read-only
//! ([`Files::make_read_only`]): request VMs may open the state file read-only, an open for
//! writing (`O_WRONLY`, `O_RDWR`, `O_TRUNC`, or `O_CREAT` of a missing file) fails with
//! `EROFS`, and descriptors the main VM left open at the freeze are inherited as read-only
//! descriptors (`write` fails with `EBADF`, `ftruncate` with `EINVAL`, as on Linux for a
//! descriptor not open for writing), each request starting at the offset they had at the
//! freeze. The file table is part of the emulated process state, so a request VM's reset
//! closes what the request opened and restores the inherited descriptors.
//!
//! Descriptors hold the host file and their own offset; reads and writes are positioned
//! (`pread`/`pwrite` on the host), so clones of the table (request VMs, resets) share host
//! files without sharing offsets or duplicating host descriptors.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use edgevm_kvm::GuestMemory;

/// Descriptors a VM may have open at once (besides stdin/stdout/stderr).
pub const MAX_OPEN_FILES: usize = 16;
/// Largest state file a program may write (writes past it fail with `EFBIG`).
pub const MAX_STATE_SIZE: u64 = 1 << 30;
/// Most bytes moved by one read or write call.
const MAX_IO: u64 = 64 << 20;
/// Host copy chunk.
const CHUNK: usize = 1 << 20;

use crate::errno::*;
use crate::linux_abi::{put, Stat};

const O_ACCMODE: u64 = 3;
const O_WRONLY: u64 = 1;
const O_RDWR: u64 = 2;
const O_CREAT: u64 = 0o100;
const O_EXCL: u64 = 0o200;
const O_TRUNC: u64 = 0o1000;
const O_APPEND: u64 = 0o2000;
const O_DIRECTORY: u64 = 0o200000;
const O_CLOEXEC: u64 = 0o2000000;
const AT_FDCWD: i32 = -100;

/// One open descriptor.
#[derive(Debug, Clone)]
struct OpenFile {
    file: Arc<File>,
    offset: u64,
    read: bool,
    write: bool,
    append: bool,
    cloexec: bool,
}

/// A VM's open files (the state file only) and whether it may write.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// Host path of the state file (None: the program has none; every open is ENOENT).
    state: Option<PathBuf>,
    /// Opens for writing are allowed (main VM before the freeze, storage VM).
    writable: bool,
    open: BTreeMap<i32, OpenFile>,
}

fn errno(e: &std::io::Error) -> i64 {
    -(e.raw_os_error().map(i64::from).unwrap_or(EIO))
}

impl Files {
    /// A table for a VM whose state file lives at `state` on the host (writable).
    pub fn new(state: Option<PathBuf>) -> Files {
        Files {
            state,
            writable: true,
            open: BTreeMap::new(),
        }
    }

    /// Freeze: no more opens for writing, and descriptors already open become read-only.
    pub fn make_read_only(&mut self) {
        self.writable = false;
        for f in self.open.values_mut() {
            f.write = false;
        }
    }

    /// Whether `fd` is an open file here.
    pub fn is_open(&self, fd: i32) -> bool {
        self.open.contains_key(&fd)
    }

    /// Number of open descriptors.
    pub fn count(&self) -> usize {
        self.open.len()
    }

    /// The host path if `dirfd`/`path` names the state file; Err(errno) otherwise.
    fn resolve(&self, dirfd: i32, path: u64, mem: &GuestMemory) -> Result<PathBuf, i64> {
        let p = mem.read_cstr(path, 4096).map_err(|_| -EFAULT)?;
        let named = matches!(p.as_slice(), b"state" | b"./state" | b"/state");
        if !p.starts_with(b"/") && dirfd != AT_FDCWD {
            // Relative to a directory descriptor: there are none.
            return Err(-EBADF);
        }
        match &self.state {
            Some(host) if named => Ok(host.clone()),
            _ => Err(-ENOENT),
        }
    }

    /// open/openat/creat.
    pub fn open(&mut self, dirfd: i32, path: u64, flags: u64, mem: &GuestMemory) -> i64 {
        let host = match self.resolve(dirfd, path, mem) {
            Ok(h) => h,
            Err(e) => return e,
        };
        if flags & O_DIRECTORY != 0 {
            return -ENOTDIR;
        }
        let acc = flags & O_ACCMODE;
        if acc == O_ACCMODE {
            return -EINVAL;
        }
        let (read, write) = (acc != O_WRONLY, acc != 0);
        let creat = flags & O_CREAT != 0;
        let trunc = flags & O_TRUNC != 0;
        if !self.writable {
            if write || trunc {
                return -EROFS;
            }
            if creat && !host.exists() {
                return -EROFS;
            }
            if creat && flags & O_EXCL != 0 {
                return -EEXIST;
            }
        }
        if self.open.len() >= MAX_OPEN_FILES {
            return -EMFILE;
        }
        let host_write = self.writable && (write || trunc || creat);
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(host_write).mode(0o600);
        if host_write {
            o.create(creat).truncate(trunc);
            if creat && flags & O_EXCL != 0 {
                o.create_new(true);
            }
        }
        let file = match o.open(&host) {
            Ok(f) => f,
            Err(e) => return errno(&e),
        };
        let fd = (3..).find(|n| !self.open.contains_key(n)).unwrap_or(3);
        self.open.insert(
            fd,
            OpenFile {
                file: Arc::new(file),
                offset: 0,
                read,
                write: write && self.writable,
                append: flags & O_APPEND != 0,
                cloexec: flags & O_CLOEXEC != 0,
            },
        );
        i64::from(fd)
    }

    /// close.
    pub fn close(&mut self, fd: i32) -> i64 {
        match self.open.remove(&fd) {
            Some(_) => 0,
            None => -EBADF,
        }
    }

    /// read/pread64 (`at`: None = at the descriptor's offset, which then moves).
    pub fn read(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        at: Option<u64>,
        mem: &mut GuestMemory,
    ) -> i64 {
        let Some(f) = self.open.get_mut(&fd) else {
            return -EBADF;
        };
        if !f.read {
            return -EBADF;
        }
        let len = len.min(MAX_IO);
        if !mem.contains(buf, len as usize) {
            return -EFAULT;
        }
        let start = at.unwrap_or(f.offset);
        let mut chunk = vec![0u8; (len as usize).min(CHUNK)];
        let mut done = 0u64;
        while done < len {
            let want = ((len - done) as usize).min(CHUNK);
            let n = match f
                .file
                .read_at(&mut chunk[..want], start.saturating_add(done))
            {
                Ok(n) => n,
                Err(e) if done == 0 => return errno(&e),
                Err(_) => break,
            };
            if n == 0 {
                break;
            }
            if mem.write(buf + done, &chunk[..n]).is_err() {
                return -EFAULT;
            }
            done += n as u64;
            if n < want {
                break;
            }
        }
        if at.is_none() {
            f.offset = start.saturating_add(done);
        }
        done as i64
    }

    /// write/pwrite64 from guest memory.
    pub fn write(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        at: Option<u64>,
        mem: &GuestMemory,
    ) -> i64 {
        let writable = self.writable;
        let Some(f) = self.open.get_mut(&fd) else {
            return -EBADF;
        };
        if !f.write || !writable {
            return -EBADF;
        }
        let len = len.min(MAX_IO);
        if !mem.contains(buf, len as usize) {
            return -EFAULT;
        }
        let start = match at {
            Some(p) => p,
            None if f.append => match f.file.metadata() {
                Ok(m) => m.len(),
                Err(e) => return errno(&e),
            },
            None => f.offset,
        };
        if start.saturating_add(len) > MAX_STATE_SIZE {
            return -EFBIG;
        }
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(CHUNK);
            let Ok(data) = mem.read_vec(buf + done, n) else {
                return -EFAULT;
            };
            if let Err(e) = f.file.write_all_at(&data, start + done) {
                if done == 0 {
                    return errno(&e);
                }
                break;
            }
            done += n as u64;
        }
        if at.is_none() {
            f.offset = start + done;
        }
        done as i64
    }

    /// readv/writev on a file descriptor: one call per iovec entry.
    pub fn vectored(
        &mut self,
        fd: i32,
        iov: u64,
        cnt: u64,
        write: bool,
        mem: &mut GuestMemory,
    ) -> i64 {
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
                self.write(fd, base, len, None, mem)
            } else {
                self.read(fd, base, len, None, mem)
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

    /// lseek.
    pub fn lseek(&mut self, fd: i32, off: i64, whence: u64) -> i64 {
        let Some(f) = self.open.get_mut(&fd) else {
            return -EBADF;
        };
        let size = || f.file.metadata().map(|m| m.len() as i64);
        let base = match whence {
            0 => 0,
            1 => f.offset as i64,
            2 => match size() {
                Ok(s) => s,
                Err(e) => return errno(&e),
            },
            // SEEK_DATA / SEEK_HOLE: no holes are reported.
            3 | 4 => {
                let s = match size() {
                    Ok(s) => s,
                    Err(e) => return errno(&e),
                };
                if off < 0 || off >= s {
                    return -ENXIO;
                }
                let to = if whence == 3 { off } else { s };
                f.offset = to as u64;
                return to;
            }
            _ => return -EINVAL,
        };
        match base.checked_add(off) {
            Some(to) if to >= 0 => {
                f.offset = to as u64;
                to
            }
            _ => -EINVAL,
        }
    }

    /// fstat of an open descriptor.
    pub fn fstat(&self, fd: i32, buf: u64, mem: &mut GuestMemory) -> i64 {
        let Some(f) = self.open.get(&fd) else {
            return -EBADF;
        };
        match f.file.metadata() {
            Ok(m) => write_stat(&m, mem, buf),
            Err(e) => errno(&e),
        }
    }

    /// stat/lstat/newfstatat by path.
    pub fn stat_path(&self, dirfd: i32, path: u64, buf: u64, mem: &mut GuestMemory) -> i64 {
        let host = match self.resolve(dirfd, path, mem) {
            Ok(h) => h,
            Err(e) => return e,
        };
        match std::fs::metadata(&host) {
            Ok(m) => write_stat(&m, mem, buf),
            Err(e) => errno(&e),
        }
    }

    /// access/faccessat: F_OK, R_OK and W_OK (EROFS where writing is not allowed).
    pub fn access(&self, dirfd: i32, path: u64, mode: u64, mem: &GuestMemory) -> i64 {
        let host = match self.resolve(dirfd, path, mem) {
            Ok(h) => h,
            Err(e) => return e,
        };
        if let Err(e) = std::fs::metadata(&host) {
            return errno(&e);
        }
        if mode & 1 != 0 {
            return -EACCES;
        }
        if mode & 2 != 0 && !self.writable {
            return -EROFS;
        }
        0
    }

    /// ftruncate.
    pub fn ftruncate(&mut self, fd: i32, len: i64) -> i64 {
        let writable = self.writable;
        let Some(f) = self.open.get(&fd) else {
            return -EBADF;
        };
        if !f.write || !writable || len < 0 {
            return -EINVAL;
        }
        if len as u64 > MAX_STATE_SIZE {
            return -EFBIG;
        }
        match f.file.set_len(len as u64) {
            Ok(()) => 0,
            Err(e) => errno(&e),
        }
    }

    /// fsync/fdatasync (a no-op where nothing can be written).
    pub fn fsync(&self, fd: i32) -> i64 {
        let Some(f) = self.open.get(&fd) else {
            return -EBADF;
        };
        if !f.write || !self.writable {
            return 0;
        }
        match f.file.sync_data() {
            Ok(()) => 0,
            Err(e) => errno(&e),
        }
    }

    /// fcntl on an open descriptor: F_GETFD/F_SETFD/F_GETFL/F_SETFL (O_APPEND); record locks
    /// succeed (one process).
    pub fn fcntl(&mut self, fd: i32, cmd: u64, arg: u64) -> i64 {
        let Some(f) = self.open.get_mut(&fd) else {
            return -EBADF;
        };
        match cmd {
            1 => i64::from(f.cloexec),
            2 => {
                f.cloexec = arg & 1 != 0;
                0
            }
            3 => {
                let acc = match (f.read, f.write) {
                    (true, true) => O_RDWR,
                    (false, true) => O_WRONLY,
                    _ => 0,
                };
                (acc | if f.append { O_APPEND } else { 0 }) as i64
            }
            4 => {
                f.append = arg & O_APPEND != 0;
                0
            }
            // F_GETLK, F_SETLK, F_SETLKW and the OFD variants.
            5..=7 | 36..=38 => 0,
            _ => -EINVAL,
        }
    }
}

/// A `struct stat` for a host file: its size, blocks and times; a regular file, mode 0644.
fn write_stat(m: &std::fs::Metadata, mem: &mut GuestMemory, buf: u64) -> i64 {
    let st = Stat {
        dev: 0x45,
        ino: 2,
        nlink: 1,
        mode: 0o100644, // S_IFREG | 0644
        size: m.len() as i64,
        blksize: 4096,
        blocks: m.blocks() as i64,
        atime: m.atime(),
        atime_nsec: m.atime_nsec(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
        ..Stat::default()
    };
    put(mem, buf, &st)
}
