//! Host files and directories behind guest descriptors: what one open file or directory does.
//!
//! Which host files a guest may open, and under which names, is the sandbox's business
//! ([`crate::sandbox`]); the descriptor table is [`crate::linux`]'s. A program's `state` file
//! (`KVM_STATE=state`, also `/state`: the host file `<filename>.state`) is one writable rule of
//! the sandbox, so what a program keeps there survives live updates and server restarts.
//!
//! Who may write: the main VM while it initializes (and runs warmup requests) and the storage
//! VM, and only below `writable` rules. When a program is frozen at `wait_for_requests()`
//! its descriptor table becomes read-only: request VMs may open files read-only, an open for
//! writing (`O_WRONLY`, `O_RDWR`, `O_TRUNC`, or `O_CREAT` of a missing file) fails with
//! `EROFS`, and descriptors the main VM left open at the freeze are inherited as read-only
//! descriptors (`write` fails with `EBADF`, `ftruncate` with `EINVAL`, as on Linux for a
//! descriptor not open for writing), each request starting at the offset they had at the
//! freeze. The table is part of the emulated process state, so a request VM's reset closes
//! what the request opened and restores the inherited descriptors and their offsets.
//!
//! Descriptors hold the host file and their own offset; reads and writes are positioned
//! (`pread`/`pwrite` on the host), so clones of the table (request VMs, resets) share host
//! files without sharing offsets or duplicating host descriptors. A directory's entries are
//! read once, when it is opened, and kept with the descriptor (its position is an index).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use edgevm_kvm::GuestMemory;

/// Descriptors a VM may have open at once (including stdin/stdout/stderr): RLIMIT_NOFILE.
pub const MAX_FDS: usize = 1024;
/// Largest file a program may write (writes past it fail with `EFBIG`).
pub const MAX_STATE_SIZE: u64 = 1 << 30;
/// Most entries of one directory a guest can list.
pub const MAX_DIR_ENTRIES: usize = 1 << 16;
/// Most bytes moved by one read or write call (a longer one is short, as Linux may make it):
/// a call copies at most this much on the thread running the VM (about a millisecond).
const MAX_IO: u64 = 4 << 20;
/// Host copy chunk.
const CHUNK: usize = 1 << 20;

use crate::errno::*;
use crate::linux_abi::Stat;

pub(crate) fn errno(e: &std::io::Error) -> i64 {
    -(e.raw_os_error().map(i64::from).unwrap_or(EIO))
}

/// One open host file.
#[derive(Debug, Clone)]
pub struct OpenFile {
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) append: bool,
    /// The guest path it was opened by.
    pub(crate) path: Vec<u8>,
}

impl OpenFile {
    /// read/pread64 (`at`: None = at the descriptor's offset, which then moves).
    pub fn read(&mut self, buf: u64, len: u64, at: Option<u64>, mem: &mut GuestMemory) -> i64 {
        if !self.read {
            return -EBADF;
        }
        let len = len.min(MAX_IO);
        if !mem.contains(buf, len as usize) {
            return -EFAULT;
        }
        let start = at.unwrap_or(self.offset);
        let mut chunk = vec![0u8; (len as usize).min(CHUNK)];
        let mut done = 0u64;
        while done < len {
            let want = ((len - done) as usize).min(CHUNK);
            let n = match self
                .file
                .read_at(&mut chunk[..want], start.saturating_add(done))
            {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
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
            self.offset = start.saturating_add(done);
        }
        done as i64
    }

    /// Bytes at `off` into a host buffer (file-backed mmap); short at the end of the file.
    pub fn read_into(&self, off: u64, out: &mut [u8]) -> Result<usize, i64> {
        let mut done = 0;
        while done < out.len() {
            match self.file.read_at(&mut out[done..], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(&e)),
            }
        }
        Ok(done)
    }

    /// write/pwrite64 from guest memory.
    pub fn write(&mut self, buf: u64, len: u64, at: Option<u64>, mem: &GuestMemory) -> i64 {
        if !self.write {
            return -EBADF;
        }
        let len = len.min(MAX_IO);
        if !mem.contains(buf, len as usize) {
            return -EFAULT;
        }
        let start = match at {
            Some(p) => p,
            None if self.append => match self.file.metadata() {
                Ok(m) => m.len(),
                Err(e) => return errno(&e),
            },
            None => self.offset,
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
            if let Err(e) = self.file.write_all_at(&data, start + done) {
                if done == 0 {
                    return errno(&e);
                }
                break;
            }
            done += n as u64;
        }
        if at.is_none() {
            self.offset = start + done;
        }
        done as i64
    }

    /// lseek.
    pub fn lseek(&mut self, off: i64, whence: u64) -> i64 {
        let size = || self.file.metadata().map(|m| m.len() as i64);
        let base = match whence {
            0 => 0,
            1 => self.offset as i64,
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
                self.offset = to as u64;
                return to;
            }
            _ => return -EINVAL,
        };
        match base.checked_add(off) {
            Some(to) if to >= 0 => {
                self.offset = to as u64;
                to
            }
            _ => -EINVAL,
        }
    }

    /// ftruncate.
    pub fn ftruncate(&mut self, len: i64) -> i64 {
        if !self.write || len < 0 {
            return -EINVAL;
        }
        if len as u64 > MAX_STATE_SIZE {
            return -EFBIG;
        }
        match self.file.set_len(len as u64) {
            Ok(()) => 0,
            Err(e) => errno(&e),
        }
    }

    /// fsync/fdatasync (a no-op where nothing can be written).
    pub fn fsync(&self) -> i64 {
        if !self.write {
            return 0;
        }
        match self.file.sync_data() {
            Ok(()) => 0,
            Err(e) => errno(&e),
        }
    }

    /// The F_GETFL access mode and flags.
    pub fn status_flags(&self) -> i64 {
        const O_WRONLY: i64 = 1;
        const O_RDWR: i64 = 2;
        const O_APPEND: i64 = 0o2000;
        let acc = match (self.read, self.write) {
            (true, true) => O_RDWR,
            (false, true) => O_WRONLY,
            _ => 0,
        };
        acc | if self.append { O_APPEND } else { 0 }
    }

    /// fstat.
    pub(crate) fn stat(&self) -> Result<Stat, i64> {
        rustix::fs::fstat(&*self.file)
            .map(|st| guest_stat(&st))
            .map_err(|e| -i64::from(e.raw_os_error()))
    }
}

/// One directory entry as getdents64 reports it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub(crate) ino: u64,
    pub(crate) kind: u8,
    pub(crate) name: Vec<u8>,
}

/// An open directory: its entries, read when it was opened, and the position in them.
#[derive(Debug, Clone)]
pub struct OpenDir {
    /// The host directory (None: a virtual directory of the sandbox).
    pub(crate) host: Option<Arc<std::os::fd::OwnedFd>>,
    /// The guest path it was opened by (normalized, absolute): openat relative to it, fchdir.
    pub(crate) path: Vec<u8>,
    pub(crate) entries: Arc<Vec<DirEntry>>,
    pub(crate) pos: usize,
}

const DT_DIR: u8 = 4;

impl OpenDir {
    /// A host directory opened for reading: its entries now.
    pub fn host(fd: std::os::fd::OwnedFd, path: Vec<u8>) -> Result<OpenDir, i64> {
        let mut dir = rustix::fs::Dir::read_from(&fd).map_err(|e| -i64::from(e.raw_os_error()))?;
        let mut entries = Vec::new();
        while let Some(e) = dir.read() {
            let e = e.map_err(|e| -i64::from(e.raw_os_error()))?;
            if entries.len() >= MAX_DIR_ENTRIES {
                return Err(-ENOMEM);
            }
            entries.push(DirEntry {
                ino: e.ino(),
                kind: file_type_byte(e.file_type()),
                name: e.file_name().to_bytes().to_vec(),
            });
        }
        Ok(OpenDir {
            host: Some(Arc::new(fd)),
            path,
            entries: Arc::new(entries),
            pos: 0,
        })
    }

    /// A virtual directory listing `names` (each a directory or the top of a rule).
    pub fn virtual_dir(names: &[Vec<u8>], path: Vec<u8>) -> OpenDir {
        let mut entries = vec![
            DirEntry {
                ino: 1,
                kind: DT_DIR,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: 1,
                kind: DT_DIR,
                name: b"..".to_vec(),
            },
        ];
        for (i, n) in names.iter().enumerate() {
            entries.push(DirEntry {
                ino: 2 + i as u64,
                kind: 0, // DT_UNKNOWN: the program stats it
                name: n.clone(),
            });
        }
        OpenDir {
            host: None,
            path,
            entries: Arc::new(entries),
            pos: 0,
        }
    }

    /// getdents64 into the guest buffer.
    pub fn getdents(&mut self, buf: u64, len: u64, mem: &mut GuestMemory) -> i64 {
        let len = len.min(1 << 20) as usize;
        let mut out = Vec::new();
        let mut pos = self.pos;
        while let Some(e) = self.entries.get(pos) {
            let reclen = (19 + e.name.len() + 1).div_ceil(8) * 8;
            if out.len() + reclen > len {
                break;
            }
            let start = out.len();
            out.extend_from_slice(&e.ino.to_le_bytes());
            out.extend_from_slice(&((pos + 1) as i64).to_le_bytes());
            out.extend_from_slice(&(reclen as u16).to_le_bytes());
            out.push(e.kind);
            out.extend_from_slice(&e.name);
            out.resize(start + reclen, 0);
            pos += 1;
        }
        if out.is_empty() && pos < self.entries.len() {
            return -EINVAL; // buffer too small for the next entry
        }
        if mem.write(buf, &out).is_err() {
            return -EFAULT;
        }
        self.pos = pos;
        out.len() as i64
    }

    /// lseek on a directory: SEEK_SET to a position getdents64 reported (d_off), SEEK_CUR 0.
    pub fn lseek(&mut self, off: i64, whence: u64) -> i64 {
        let to = match whence {
            0 => off,
            1 => (self.pos as i64).saturating_add(off),
            _ => return -EINVAL,
        };
        if to < 0 {
            return -EINVAL;
        }
        self.pos = (to as usize).min(self.entries.len());
        to
    }

    /// fstat.
    pub(crate) fn stat(&self) -> Result<Stat, i64> {
        match &self.host {
            Some(fd) => rustix::fs::fstat(&**fd)
                .map(|st| guest_stat(&st))
                .map_err(|e| -i64::from(e.raw_os_error())),
            None => Ok(virtual_dir_stat()),
        }
    }
}

fn file_type_byte(t: rustix::fs::FileType) -> u8 {
    use rustix::fs::FileType::*;
    match t {
        Fifo => 1,
        CharacterDevice => 2,
        Directory => 4,
        BlockDevice => 6,
        RegularFile => 8,
        Symlink => 10,
        Socket => 12,
        Unknown => 0,
    }
}

/// The guest's `struct stat` for a host `stat`: the host's type, permission bits, size, times,
/// device and inode numbers; owner root.
pub(crate) fn guest_stat(s: &rustix::fs::Stat) -> Stat {
    Stat {
        dev: s.st_dev,
        ino: s.st_ino,
        nlink: s.st_nlink,
        mode: s.st_mode,
        rdev: s.st_rdev,
        size: s.st_size,
        blksize: s.st_blksize,
        blocks: s.st_blocks,
        atime: s.st_atime,
        atime_nsec: s.st_atime_nsec as i64,
        mtime: s.st_mtime,
        mtime_nsec: s.st_mtime_nsec as i64,
        ctime: s.st_ctime,
        ctime_nsec: s.st_ctime_nsec as i64,
        ..Stat::default()
    }
}

/// A virtual directory of the sandbox: read-only, owned by root.
pub(crate) fn virtual_dir_stat() -> Stat {
    Stat {
        dev: 0x45,
        ino: 1,
        nlink: 2,
        mode: 0o040555,
        blksize: 4096,
        ..Stat::default()
    }
}

/// A symlink rule's link: `len` bytes of target.
pub(crate) fn link_stat(len: usize) -> Stat {
    Stat {
        dev: 0x45,
        ino: 3,
        nlink: 1,
        mode: 0o120777,
        size: len as i64,
        blksize: 4096,
        ..Stat::default()
    }
}

/// A `struct statx` (256 bytes) with the basic fields of `s`.
pub(crate) fn statx_bytes(s: &Stat) -> [u8; 256] {
    let mut b = [0u8; 256];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(0, &0x7FFu32.to_le_bytes()); // STATX_BASIC_STATS
    put(4, &(s.blksize as u32).to_le_bytes());
    put(16, &(s.nlink as u32).to_le_bytes());
    put(20, &s.uid.to_le_bytes());
    put(24, &s.gid.to_le_bytes());
    put(28, &(s.mode as u16).to_le_bytes());
    put(32, &s.ino.to_le_bytes());
    put(40, &(s.size as u64).to_le_bytes());
    put(48, &(s.blocks as u64).to_le_bytes());
    for (off, sec, nsec) in [
        (0x40, s.atime, s.atime_nsec),
        (0x60, s.ctime, s.ctime_nsec),
        (0x70, s.mtime, s.mtime_nsec),
    ] {
        put(off, &sec.to_le_bytes());
        put(off + 8, &(nsec as u32).to_le_bytes());
    }
    let (rmaj, rmin) = (libc::major(s.rdev), libc::minor(s.rdev));
    let (dmaj, dmin) = (libc::major(s.dev), libc::minor(s.dev));
    put(0x80, &rmaj.to_le_bytes());
    put(0x84, &rmin.to_le_bytes());
    put(0x88, &dmaj.to_le_bytes());
    put(0x8c, &dmin.to_le_bytes());
    b
}

/// Largest file `mmap_backed_files` shares (a bigger one is mapped as a private copy).
pub const MAX_SHARED_FILE: u64 = 1 << 30;

/// What identifies a file's contents for [`sealed_copy`]: device, inode, size, modification
/// and change times (as make and rsync judge a file unchanged).
type FileIdentity = (u64, u64, i64, i64, i64, i64, i64);

fn identity(f: &File) -> std::io::Result<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::from_raw_os_error(libc::ENODEV));
    }
    Ok((
        m.dev(),
        m.ino(),
        m.size() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// The sealed copies alive, by the identity of the file they copy.
static SEALED: std::sync::Mutex<
    std::collections::BTreeMap<FileIdentity, std::sync::Weak<std::os::fd::OwnedFd>>,
> = std::sync::Mutex::new(std::collections::BTreeMap::new());

/// `mmap_backed_files`: a sealed memfd holding the bytes of `file` (shrinking, growing and
/// writing it are sealed off) and its size, one per file identity in the whole server,
/// shared by every VM that maps that file. Why a copy and not the file itself: a host
/// mapping of the file would fault the server (SIGBUS) the moment someone truncates the
/// file while a VM maps it, and programs' frozen images would change with the file; the
/// sealed copy can do neither. None: not a regular file, empty, larger than
/// [`MAX_SHARED_FILE`], changed while being copied, or the host refused (the caller makes a
/// private copy instead).
pub fn sealed_copy(file: &File) -> Option<(Arc<std::os::fd::OwnedFd>, u64)> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let id = identity(file).ok()?;
    let size = id.2 as u64;
    if size == 0 || size > MAX_SHARED_FILE {
        return None;
    }
    if let Some(fd) = SEALED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .and_then(std::sync::Weak::upgrade)
    {
        return Some((fd, size));
    }
    let memfd = rustix::fs::memfd_create(
        c"edgevm-mapped-file",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .ok()?;
    let copy = File::from(memfd);
    let mut buf = vec![0u8; CHUNK.min(size as usize)];
    let mut done = 0u64;
    while done < size {
        let want = ((size - done) as usize).min(buf.len());
        let n = match file.read_at(&mut buf[..want], done) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        copy.write_all_at(&buf[..n], done).ok()?;
        done += n as u64;
    }
    // Changed while copied: no consistent copy to share.
    if identity(file).ok()? != id {
        return None;
    }
    rustix::fs::fcntl_add_seals(
        &copy,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .ok()?;
    let fd = Arc::new(std::os::fd::OwnedFd::from(copy));
    let mut cache = SEALED.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|_, w| w.strong_count() > 0);
    match cache.get(&id).and_then(std::sync::Weak::upgrade) {
        // Another thread made one meanwhile: share that one.
        Some(other) => Some((other, size)),
        None => {
            cache.insert(id, Arc::downgrade(&fd));
            Some((fd, size))
        }
    }
}

#[cfg(test)]
mod sealed_tests {
    use super::*;

    #[test]
    fn sealed_copies_are_shared_per_identity_and_cannot_change() {
        let dir = std::env::temp_dir().join(format!("edgevm-sealed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, "first").unwrap();
        let a = sealed_copy(&File::open(&p).unwrap()).unwrap();
        let b = sealed_copy(&File::open(&p).unwrap()).unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0), "one copy per identity");
        assert_eq!(a.1, 5);
        // Rewritten (another size): a new copy; the old one keeps its bytes and size.
        std::fs::write(&p, "second!").unwrap();
        let c = sealed_copy(&File::open(&p).unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&a.0, &c.0));
        let old = File::from(a.0.try_clone().unwrap());
        let mut buf = [0u8; 8];
        assert_eq!(old.read_at(&mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], b"first");
        // Sealed: neither written, truncated nor grown.
        assert!(old.write_at(b"x", 0).is_err());
        assert!(old.set_len(1).is_err());
        assert!(old.set_len(1 << 20).is_err());
        // Empty files and directories are not shared.
        std::fs::write(&p, "").unwrap();
        assert!(sealed_copy(&File::open(&p).unwrap()).is_none());
        assert!(sealed_copy(&File::open(&dir).unwrap()).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
