//! Guest physical memory.
//!
//! Design (see docs/DESIGN.md, "Copy-on-write and reset"): a program's main VM
//! owns a `memfd` mapped `MAP_SHARED`. When the program calls `wait_for_requests()` the main VM
//! stops for good and that memfd becomes the frozen image. Each request VM maps the same memfd
//! `MAP_PRIVATE`: the host kernel shares every untouched page with the image and copies a page
//! on the first write (host-side copy-on-write, no guest page-table changes, no exits). After a
//! request the pages the guest dirtied (KVM dirty log) and the pages the host wrote for it
//! (tracked here) are copied back from the image — measured as the cheapest reset here.
//! A full reset drops every private page with `madvise(MADV_DONTNEED)`, giving memory back.
//!
//! The optional shared-memory area at the top of the address space is mapped `MAP_SHARED` in
//! every request VM, so guest writes there are visible to all of them and are never reset.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::fcntl::FallocateFlags;
use nix::sys::memfd::{self, MFdFlags};
use nix::sys::mman::{self, MapFlags, MmapAdvise, ProtFlags};
use nix::unistd::{lseek, Whence};
use std::sync::Arc;

use crate::PageSet;

/// Guest page size (4 KiB).
pub const PAGE_SIZE: usize = 4096;

/// Errors from guest memory access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    #[error("guest address range {addr:#x}+{len:#x} is outside guest memory")]
    OutOfBounds { addr: u64, len: u64 },
    #[error("guest address range {addr:#x}+{len:#x} is not program memory (supervisor area)")]
    Protected { addr: u64, len: u64 },
    #[error("guest address range {addr:#x}+{len:#x} is not {access} by the program (its page protections: PROT_NONE, unmapped, read-only or code)")]
    NoAccess {
        addr: u64,
        len: u64,
        access: &'static str,
    },
    #[error("string at {addr:#x} is not terminated within {max} bytes")]
    Unterminated { addr: u64, max: usize },
    #[error("guest memory setup failed: {0}")]
    Os(String),
}

/// A page bitmap in KVM dirty-log layout: bit `n` of word `n / 64` is page `n`.
pub type PageBitmap = Vec<u64>;

/// A set of guest pages, one bit each.
fn bitmap_words(size: usize) -> usize {
    (size / PAGE_SIZE).div_ceil(64)
}

/// A file mapped over guest memory (`mmap_backed_files`, see [`GuestMemory::map_file`]): the
/// guest range `addr..addr+len` shows the bytes of `fd` (a sealed memfd: it can neither shrink
/// nor change) from `off`, through a `MAP_PRIVATE` host mapping shared with every other VM
/// that maps it until one writes a page (then that VM gets a private copy of that page).
#[derive(Debug, Clone)]
pub struct FileMap {
    /// Guest address (page aligned).
    pub addr: u64,
    /// Length (page aligned, inside the file).
    pub len: u64,
    /// The file.
    pub fd: Arc<OwnedFd>,
    /// Offset in the file (page aligned).
    pub off: u64,
}

impl FileMap {
    fn end(&self) -> u64 {
        self.addr + self.len
    }

    fn same(&self, o: &FileMap) -> bool {
        self.addr == o.addr
            && self.len == o.len
            && self.off == o.off
            && Arc::ptr_eq(&self.fd, &o.fd)
    }
}

/// Host mapping of one guest's physical memory, starting at guest-physical address 0.
pub struct GuestMemory {
    ptr: *mut u8,
    size: usize,
    memfd: Arc<OwnedFd>,
    private: bool,
    /// Start of the shared-memory area (== size when there is none).
    shared_from: usize,
    /// Pages written by the host on this guest's behalf since the last reset (syscall results,
    /// request data). KVM's dirty log does not see host writes.
    host_dirty: PageBitmap,
    /// The pages set in `host_dirty`, in the order written (so a reset visits only them).
    host_list: Vec<u32>,
    track_host_writes: bool,
    /// Ranges the guest program may not name in a pointer (its supervisor structures): the
    /// checked accessors refuse them like out-of-bounds addresses; `*_raw` bypass the check.
    protected: Vec<(u64, u64)>,
    /// Where the guest's page directories start (they identity-map the memory, one per GiB,
    /// contiguous): [`GuestMemory::write`] then writes only pages the guest could write
    /// itself at CPL3. None: no such check (before the tables exist).
    user_tables: Option<u64>,
    /// Page ranges [start, end) that are holes of the frozen image (never written by the main
    /// VM); views map anonymous memory there (see [`GuestMemory::find_holes`]).
    holes: Arc<Vec<(usize, usize)>>,
    /// Remapped areas (`remapping`): (guest-virtual start, guest-physical start, length). A
    /// guest address inside one is translated by the checked accessors; a range must lie
    /// inside one area entirely.
    remaps: Arc<Vec<(u64, u64, u64)>>,
    /// Files mapped over this memory now (sorted by address, disjoint).
    files: Vec<FileMap>,
    /// A view's files at its fork (the image's): what a reset restores.
    frozen_files: Arc<Vec<FileMap>>,
    /// Whether `files` changed since the fork or the last reset.
    files_changed: bool,
}

// SAFETY: GuestMemory owns its mapping exclusively (private) or shares it with other mappings of
// the same memfd, which only the guests and the host copy routines below touch with raw copies.
// Moving the owner to another thread is fine; &self methods only read.
unsafe impl Send for GuestMemory {}
// SAFETY: all &self methods only read guest memory with raw copies (a frozen image is read by
// many request-VM threads at once); every write needs &mut self.
unsafe impl Sync for GuestMemory {}

fn os_err(what: &'static str) -> impl FnOnce(nix::Error) -> MemError {
    move |e| MemError::Os(format!("{what}: {}", std::io::Error::from(e)))
}

/// `len` as a mapping length (mappings are never empty here).
fn length(len: usize) -> Result<NonZeroUsize, MemError> {
    NonZeroUsize::new(len).ok_or_else(|| MemError::Os("empty mapping".into()))
}

/// mmap a memfd range. Small wrapper so each unsafe block is one call.
fn map_fd(
    addr: *mut u8,
    len: usize,
    flags: libc::c_int,
    fd: &OwnedFd,
    off: usize,
) -> Result<*mut u8, MemError> {
    // SAFETY: mmap with a valid fd; when MAP_FIXED is in `flags`, `addr..addr+len` lies inside
    // a mapping this module owns (the caller's private mapping), so nothing else is clobbered.
    let p = unsafe {
        mman::mmap(
            NonZeroUsize::new(addr as usize),
            length(len)?,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::from_bits_retain(flags) | MapFlags::MAP_NORESERVE,
            fd,
            off as libc::off_t,
        )
    }
    .map_err(os_err("mmap"))?;
    Ok(p.as_ptr().cast())
}

/// mmap anonymous private memory over `addr..addr+len`, a range inside a mapping this module
/// owns (MAP_FIXED replaces that part of it).
fn map_anon_fixed(addr: *mut u8, len: usize) -> Result<(), MemError> {
    // SAFETY: MAP_FIXED over a range inside the caller's own private mapping: nothing else is
    // clobbered, and the range stays mapped (now anonymous, zero-filled).
    unsafe {
        mman::mmap_anonymous(
            NonZeroUsize::new(addr as usize),
            length(len)?,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED | MapFlags::MAP_NORESERVE,
        )
    }
    .map_err(os_err("mmap"))?;
    Ok(())
}

/// An address range reserved (mapped `PROT_NONE`, no memory) for a request VM's view, so that
/// a KVM memory slot can point at it before the view exists: making the slot is the slow part
/// of a fork (KVM waits for an SRCU grace period), and is done ahead, on another thread
/// ([`crate::VmShell::with_slot`]). Unmapped when dropped unless a view took it over.
pub struct Reservation {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the range is owned by this value alone (nothing reads or writes PROT_NONE memory);
// moving the owner to another thread is fine.
unsafe impl Send for Reservation {}

impl Reservation {
    /// Reserve `len` bytes of address space.
    pub fn new(len: usize) -> Result<Self, MemError> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice: nothing
        // else is touched.
        let p = unsafe {
            mman::mmap_anonymous(
                None,
                length(len)?,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(os_err("mmap"))?;
        Ok(Reservation {
            ptr: p.as_ptr().cast(),
            len,
        })
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty (never: mappings are not).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(p) = NonNull::new(self.ptr) {
            // SAFETY: unmapping exactly the range this value reserved (no view took it over).
            let _ = unsafe { mman::munmap(p.cast(), self.len) };
        }
    }
}

/// Holes shorter than this (pages) are left to the memfd mapping.
const MIN_HOLE_PAGES: usize = 16;
/// At most this many holes (the largest) get anonymous mappings in each view: each one costs
/// the view two more VMAs, and a process has at most `vm.max_map_count` (65530) of them.
const MAX_HOLES: usize = 16;

impl GuestMemory {
    /// A fresh, zeroed guest memory of `size` bytes (a multiple of 2 MiB) for a main VM.
    pub fn new_shared(size: usize) -> Result<Self, MemError> {
        if size == 0 || !size.is_multiple_of(2 << 20) {
            return Err(MemError::Os(format!(
                "guest memory size {size:#x} is not a multiple of 2 MiB"
            )));
        }
        let fd = memfd::memfd_create(c"edgevm-guest", MFdFlags::MFD_CLOEXEC)
            .map_err(os_err("memfd_create"))?;
        nix::unistd::ftruncate(&fd, size as libc::off_t).map_err(os_err("ftruncate"))?;
        let ptr = map_fd(std::ptr::null_mut(), size, libc::MAP_SHARED, &fd, 0)?;
        Ok(GuestMemory {
            ptr,
            size,
            memfd: Arc::new(fd),
            private: false,
            shared_from: size,
            host_dirty: vec![0; bitmap_words(size)],
            host_list: Vec::new(),
            track_host_writes: false,
            protected: Vec::new(),
            user_tables: None,
            holes: Arc::default(),
            remaps: Arc::default(),
            files: Vec::new(),
            frozen_files: Arc::default(),
            files_changed: false,
        })
    }

    /// A copy-on-write view of this memory for a request VM: pages below `shared_from` are
    /// private (first write copies), pages from `shared_from` up are shared with every view.
    /// With `at` (an address range reserved for it, of this memory's size: a KVM memory slot
    /// already points there, see [`Reservation`]) the view is mapped over that range and takes
    /// it over; else anywhere.
    pub(crate) fn fork_private(
        &self,
        shared_from: usize,
        at: Option<Reservation>,
    ) -> Result<Self, MemError> {
        let shared_from = shared_from.min(self.size) & !(PAGE_SIZE - 1);
        // The image's holes below the shared area get anonymous memory (page ranges).
        let holes = self
            .holes
            .iter()
            .map(|&(start, end)| (start, end.min(shared_from / PAGE_SIZE)))
            .filter(|&(start, end)| start < end);
        let ptr = match at {
            Some(r) if r.len == self.size => {
                // The reserved range is what a KVM memory slot already points at: every
                // mapping made over it makes KVM drop what it mapped there (an MMU notifier
                // invalidation; under shadow paging a walk over every page of the range, ~0.1 ms
                // for 256 MiB here). So only the image's data is mapped over it, once, and its
                // holes are made writable where they are (mprotect of a range never touched
                // calls no notifier): the same anonymous private memory a mapping would make.
                let mut at = 0;
                for (start, end) in holes.clone().chain([(shared_from / PAGE_SIZE, 0)]) {
                    let (from, to) = (at * PAGE_SIZE, (start * PAGE_SIZE).min(shared_from));
                    if from < to {
                        // SAFETY: from < to <= size: inside the reserved range.
                        let addr = unsafe { r.ptr.add(from) };
                        map_fd(
                            addr,
                            to - from,
                            libc::MAP_PRIVATE | libc::MAP_FIXED,
                            &self.memfd,
                            from,
                        )?;
                    }
                    if start < end {
                        // SAFETY: a hole below shared_from: inside the reserved range, which
                        // is anonymous private memory (PROT_NONE, MAP_NORESERVE) this value
                        // owns.
                        let addr = unsafe { r.ptr.add(start * PAGE_SIZE) };
                        let len = (end - start) * PAGE_SIZE;
                        // SAFETY: as above; only the protection of our own range changes.
                        unsafe {
                            mman::mprotect(
                                NonNull::new(addr.cast()).ok_or_else(|| {
                                    MemError::Os("reserved range at address 0".into())
                                })?,
                                len,
                                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                            )
                        }
                        .map_err(os_err("mprotect"))?;
                    }
                    at = end;
                }
                let p = r.ptr;
                // The range is the view's now: it unmaps it when dropped.
                std::mem::forget(r);
                p
            }
            Some(r) => {
                return Err(MemError::Os(format!(
                    "reserved range of {:#x} bytes for a memory of {:#x}",
                    r.len, self.size
                )))
            }
            None => {
                let p = map_fd(
                    std::ptr::null_mut(),
                    self.size,
                    libc::MAP_PRIVATE,
                    &self.memfd,
                    0,
                )?;
                for (start, end) in holes {
                    // SAFETY: start < end <= shared_from / PAGE_SIZE: inside the mapping just
                    // made.
                    let at = unsafe { p.add(start * PAGE_SIZE) };
                    map_anon_fixed(at, (end - start) * PAGE_SIZE)?;
                }
                p
            }
        };
        let mem = GuestMemory {
            ptr,
            size: self.size,
            memfd: self.memfd.clone(),
            private: true,
            shared_from,
            host_dirty: vec![0; bitmap_words(self.size)],
            host_list: Vec::new(),
            track_host_writes: true,
            protected: self.protected.clone(),
            user_tables: self.user_tables,
            holes: self.holes.clone(),
            remaps: self.remaps.clone(),
            files: Vec::new(),
            frozen_files: Arc::default(),
            files_changed: false,
        };
        let mut mem = mem;
        // The image's files, over its holes (a file's range is one: see `map_file`).
        for f in self.files.iter().filter(|f| f.end() <= shared_from as u64) {
            mem.map_file_host(f)?;
            mem.files.push(f.clone());
        }
        mem.frozen_files = Arc::new(mem.files.clone());
        if shared_from < self.size {
            // SAFETY: shared_from < size, so the address is inside the mapping just made.
            let at = unsafe { ptr.add(shared_from) };
            map_fd(
                at,
                self.size - shared_from,
                libc::MAP_SHARED | libc::MAP_FIXED,
                &self.memfd,
                shared_from,
            )?;
        }
        Ok(mem)
    }

    /// Most files one memory may have mapped at once ([`GuestMemory::map_file`] refuses
    /// more): each splits the host mapping (up to two more VMAs per VM, and a host process has
    /// at most `vm.max_map_count`, 65,530 by default, for all its VMs).
    pub const MAX_FILES: usize = 128;

    /// The files mapped over this memory now.
    pub fn files(&self) -> &[FileMap] {
        &self.files
    }

    /// Map `len` bytes of `fd` from `off` over guest `addr..addr+len` (all page aligned,
    /// below the shared-memory area, inside the file: a page past a memfd's end would fault
    /// the host): the guest reads the file's pages, shared with every VM mapping the same fd;
    /// a write (by the guest where its page tables allow it, or by the host) copies the page
    /// privately, as the rest of a view. The guest page tables are the caller's business. A
    /// file already mapped in the range is replaced. Undone by [`GuestMemory::unmap_files`]
    /// and [`GuestMemory::zero`]; a request VM's reset restores the files of its image.
    pub fn map_file(
        &mut self,
        addr: u64,
        len: u64,
        fd: Arc<OwnedFd>,
        off: u64,
    ) -> Result<(), MemError> {
        let page = PAGE_SIZE as u64;
        let end = addr.checked_add(len).filter(|&e| {
            len > 0 && e <= self.shared_from as u64 && (addr | len | off).is_multiple_of(page)
        });
        if end.is_none() || self.remap_of(addr).is_some() {
            return Err(MemError::OutOfBounds { addr, len });
        }
        self.unmap_files(addr, len)?;
        if self.files.len() >= Self::MAX_FILES {
            return Err(MemError::Os(format!(
                "more than {} files mapped",
                Self::MAX_FILES
            )));
        }
        if !self.private {
            // The memfd's pages under the file are not needed (and the range becomes a hole
            // of the image, which views map anonymously under the file).
            let _ = nix::fcntl::fallocate(
                &*self.memfd,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                addr as libc::off_t,
                len as libc::off_t,
            );
        }
        let f = FileMap { addr, len, fd, off };
        self.map_file_host(&f)?;
        let at = self.files.partition_point(|m| m.addr < addr);
        self.files.insert(at, f);
        self.files_changed = true;
        Ok(())
    }

    /// The host mapping of one file (bounds checked by the caller).
    fn map_file_host(&self, f: &FileMap) -> Result<(), MemError> {
        assert!(f.end() <= self.size as u64, "file mapping out of bounds");
        // SAFETY: inside our own mapping (checked above).
        let at = unsafe { self.ptr.add(f.addr as usize) };
        map_fd(
            at,
            f.len as usize,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            &f.fd,
            f.off as usize,
        )
        .map(|_| ())
    }

    /// Put back the memory's own backing (the memfd, or anonymous memory over a hole of the
    /// image) over `off..off+len` (page aligned, below the shared area).
    fn restore_base(&self, off: usize, len: usize) -> Result<(), MemError> {
        assert!(
            off + len <= self.shared_from,
            "restore outside the private area"
        );
        if !self.private {
            // SAFETY: inside our own mapping (checked above).
            let at = unsafe { self.ptr.add(off) };
            return map_fd(
                at,
                len,
                libc::MAP_SHARED | libc::MAP_FIXED,
                &self.memfd,
                off,
            )
            .map(|_| ());
        }
        let mut page = off / PAGE_SIZE;
        let end = (off + len) / PAGE_SIZE;
        while page < end {
            let hole = self.in_hole(page);
            let mut next = page + 1;
            while next < end && self.in_hole(next) == hole {
                next += 1;
            }
            // SAFETY: page < next <= end: inside our own mapping (checked above).
            let at = unsafe { self.ptr.add(page * PAGE_SIZE) };
            let n = (next - page) * PAGE_SIZE;
            if hole {
                map_anon_fixed(at, n)?;
            } else {
                map_fd(
                    at,
                    n,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    &self.memfd,
                    page * PAGE_SIZE,
                )?;
            }
            page = next;
        }
        Ok(())
    }

    /// Undo the file mappings over `addr..addr+len` (page aligned): the memory's own backing
    /// is there again (what it held before the file was mapped, or zeros).
    pub fn unmap_files(&mut self, addr: u64, len: u64) -> Result<(), MemError> {
        let end = addr.saturating_add(len);
        if !self.files.iter().any(|f| f.addr < end && addr < f.end()) {
            return Ok(());
        }
        let mut kept = Vec::with_capacity(self.files.len() + 1);
        for f in std::mem::take(&mut self.files) {
            if f.end() <= addr || end <= f.addr {
                kept.push(f);
                continue;
            }
            let (lo, hi) = (f.addr.max(addr), f.end().min(end));
            if f.addr < lo {
                kept.push(FileMap {
                    len: lo - f.addr,
                    ..f.clone()
                });
            }
            if hi < f.end() {
                kept.push(FileMap {
                    addr: hi,
                    len: f.end() - hi,
                    off: f.off + (hi - f.addr),
                    fd: f.fd.clone(),
                });
            }
            if let Err(e) = self.restore_base(lo as usize, (hi - lo) as usize) {
                self.files = kept;
                self.files_changed = true;
                return Err(e);
            }
        }
        self.files = kept;
        self.files_changed = true;
        Ok(())
    }

    /// In a main VM's memory, turn the mapped files' pages in `addr..addr+len` into the
    /// memory's own (memfd) pages holding the same bytes, before they are written: a write
    /// through the file mapping would make a page private to this host mapping, which the
    /// views forked from the image would not see (they map the memfd and the file). A view
    /// needs nothing: its writes are copy-on-write like all its memory, undone by its reset.
    pub fn prepare_write(&mut self, addr: u64, len: u64) -> Result<(), MemError> {
        if self.private || self.files.is_empty() {
            return Ok(());
        }
        let lo = addr & !(PAGE_SIZE as u64 - 1);
        let end = addr.saturating_add(len);
        let parts: Vec<(u64, u64)> = self
            .files
            .iter()
            .filter(|f| f.addr < end && lo < f.end())
            .map(|f| {
                (
                    f.addr.max(lo),
                    f.end().min(end.next_multiple_of(PAGE_SIZE as u64)),
                )
            })
            .collect();
        for (a, b) in parts {
            let mut bytes = vec![0u8; (b - a) as usize];
            self.copy_out(a as usize, &mut bytes);
            self.unmap_files(a, b - a)?;
            // SAFETY: a..b lies inside a file mapping that was inside our mapping; now it is
            // the memfd's shared mapping again.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(a as usize), bytes.len())
            };
        }
        Ok(())
    }

    /// The parts `[start, end)` of `addr..addr+len` that show mapped files, in order.
    pub fn file_parts(&self, addr: u64, len: u64) -> Vec<(u64, u64)> {
        let end = addr.saturating_add(len);
        self.files
            .iter()
            .filter(|f| f.addr < end && addr < f.end())
            .map(|f| (f.addr.max(addr), f.end().min(end)))
            .collect()
    }

    /// `MADV_DONTNEED` over mapped files' pages in `addr..addr+len` (page aligned): a view's
    /// private copies of them go, the file shows again (as Linux does for a private file
    /// mapping). A main VM's memory has none (see [`GuestMemory::prepare_write`]).
    pub fn revert_file_pages(&mut self, addr: u64, len: u64) -> Result<(), MemError> {
        if !self.private {
            return Ok(());
        }
        for (a, b) in self.file_parts(addr, len) {
            // SAFETY: a..b lies inside a file mapping inside our own mapping.
            unsafe { self.dont_need(a as usize, (b - a) as usize) }?;
        }
        Ok(())
    }

    /// A view's files as at its fork again (before its pages are reset).
    fn restore_files(&mut self) -> Result<(), MemError> {
        if !self.files_changed {
            return Ok(());
        }
        let frozen = self.frozen_files.clone();
        for f in std::mem::take(&mut self.files) {
            if !frozen.iter().any(|g| g.same(&f)) {
                self.restore_base(f.addr as usize, f.len as usize)?;
            }
        }
        for f in frozen.iter() {
            self.map_file_host(f)?;
        }
        self.files = frozen.to_vec();
        self.files_changed = false;
        Ok(())
    }

    /// Whether guest page `page` shows a mapped file.
    fn in_file(&self, page: usize) -> bool {
        let a = (page * PAGE_SIZE) as u64;
        let i = self.files.partition_point(|f| f.addr <= a);
        i > 0 && a < self.files[i - 1].end()
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Host address of guest-physical 0 (for the KVM memory slot).
    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Start of the shared (never reset) area.
    pub fn shared_from(&self) -> usize {
        self.shared_from
    }

    /// Start recording host writes (for memories that are reset).
    pub fn set_track_host_writes(&mut self, on: bool) {
        self.track_host_writes = on;
    }

    /// Refuse guest pointers into these ranges from now on (and in views forked later).
    pub fn set_protected(&mut self, ranges: Vec<(u64, u64)>) {
        self.protected = ranges;
    }

    /// Guest-virtual areas mapped elsewhere (`remapping`): (virtual start, physical start,
    /// length), from now on and in views forked later. The checked accessors translate
    /// addresses inside them; such memory is always writable by the host on the guest's behalf
    /// (the program's page tables map it read-write).
    pub fn set_remaps(&mut self, remaps: Vec<(u64, u64, u64)>) {
        self.remaps = Arc::new(remaps);
    }

    /// The remapped area holding `addr`: (virtual start, physical start, length).
    pub fn remap_of(&self, addr: u64) -> Option<(u64, u64, u64)> {
        self.remaps
            .iter()
            .copied()
            .find(|&(v, _, n)| addr >= v && addr - v < n)
    }

    /// Bytes from guest address `addr` to the end of the memory (or remapped area) it is in.
    fn span(&self, addr: u64) -> u64 {
        match self.remap_of(addr) {
            Some((v, _, n)) => v + n - addr,
            None => (self.size as u64).saturating_sub(addr),
        }
    }

    /// From now on (and in views forked later), the checked accessors go only where the
    /// x86-64 page tables whose page directories start at `pd_base` (identity map, one
    /// directory per GiB) let the guest itself go at CPL3: [`GuestMemory::read`] reads pages
    /// that are present and user-accessible (not `PROT_NONE`, not unmapped), and
    /// [`GuestMemory::write`] writes pages that are also writable (not its code). A host
    /// access on the guest's behalf is refused where the guest's own would fault, as Linux's
    /// `copy_from_user`/`copy_to_user` do.
    pub fn set_user_write_check(&mut self, pd_base: u64) {
        self.user_tables = Some(pd_base);
    }

    /// Whether the page tables give CPL3 the entry bits `need` (present and user, plus
    /// writable for a write) on every page of `addr..addr+len` (in bounds): one page-directory
    /// entry read per 2 MiB page, one more per 4 KiB page of a split region.
    fn user_access(&self, addr: u64, len: usize, need: u64) -> bool {
        const PS: u64 = 0x80;
        const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
        let Some(pd) = self.user_tables else {
            return true;
        };
        let end = addr + len as u64;
        let mut a = addr & !(PAGE_SIZE as u64 - 1);
        while a < end {
            let pde = self.read_raw_u64(pd + 8 * (a >> 21));
            if pde & need != need {
                return false;
            }
            if pde & PS != 0 {
                a = (a | 0x1F_FFFF) + 1;
                continue;
            }
            let pte = self.read_raw_u64((pde & ADDR) + 8 * ((a >> 12) & 511));
            if pte & need != need {
                return false;
            }
            a += PAGE_SIZE as u64;
        }
        true
    }

    /// Present | user.
    const USER_READ: u64 = 5;
    /// Present | writable | user.
    const USER_WRITE: u64 = 7;

    fn raw_range(&self, addr: u64, len: usize) -> Result<usize, MemError> {
        let end = addr.checked_add(len as u64);
        match end {
            Some(end) if end <= self.size as u64 => Ok(addr as usize),
            _ => Err(MemError::OutOfBounds {
                addr,
                len: len as u64,
            }),
        }
    }

    fn range(&self, addr: u64, len: usize) -> Result<usize, MemError> {
        if let Some((v, p, n)) = self.remap_of(addr) {
            // Inside a remapped area: the whole range must be (no straddling its end).
            return match addr.checked_add(len as u64) {
                Some(end) if end <= v + n => Ok((p + (addr - v)) as usize),
                _ => Err(MemError::OutOfBounds {
                    addr,
                    len: len as u64,
                }),
            };
        }
        let off = self.raw_range(addr, len)?;
        let end = addr + len as u64;
        if self
            .protected
            .iter()
            .any(|&(lo, hi)| addr < hi && end > lo && (len > 0 || addr >= lo))
        {
            return Err(MemError::Protected {
                addr,
                len: len as u64,
            });
        }
        Ok(off)
    }

    /// Read without the protected-range check (host-internal structures).
    pub fn read_raw(&self, addr: u64, out: &mut [u8]) -> Result<(), MemError> {
        let off = self.raw_range(addr, out.len())?;
        self.copy_out(off, out);
        Ok(())
    }

    /// Read a u64 without the protected-range check (0 when out of bounds).
    pub fn read_raw_u64(&self, addr: u64) -> u64 {
        let mut b = [0u8; 8];
        let _ = self.read_raw(addr, &mut b);
        u64::from_le_bytes(b)
    }

    /// Write without the protected-range check (host-internal structures).
    pub fn write_raw(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let off = self.raw_range(addr, data.len())?;
        self.copy_in(off, data);
        Ok(())
    }

    /// Fill `addr..addr+len` with the bytes of `file` at `file_off` (a snapshot's image),
    /// through `buf` with `pread`/`pwrite` on the memfd: no page faults of this mapping (a
    /// fresh shared memory's pages would each fault on a copy). `each` sees every chunk before
    /// it is written, so what it checks (a checksum) is exactly what the memory holds after:
    /// nobody else can write the memfd. Fails if the file ends early. Main memory only.
    pub fn fill_from_file(
        &mut self,
        file: &std::fs::File,
        file_off: u64,
        addr: u64,
        len: usize,
        buf: &mut [u8],
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), MemError> {
        use std::os::unix::fs::FileExt;
        if self.private {
            return Err(MemError::Os("fill_from_file on a private view".into()));
        }
        self.raw_range(addr, len)?;
        if buf.is_empty() {
            return Err(MemError::Os("fill_from_file without a buffer".into()));
        }
        let memfd = std::fs::File::from(
            self.memfd
                .try_clone()
                .map_err(|e| MemError::Os(format!("memfd: {e}")))?,
        );
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(buf.len());
            file.read_exact_at(&mut buf[..n], file_off + done as u64)
                .map_err(|e| MemError::Os(format!("the file ends early or cannot be read: {e}")))?;
            each(&buf[..n]);
            memfd
                .write_all_at(&buf[..n], addr + done as u64)
                .map_err(|e| MemError::Os(format!("write to the memfd: {e}")))?;
            done += n;
        }
        Ok(())
    }

    /// Is `addr..addr+len` inside guest memory?
    pub fn contains(&self, addr: u64, len: usize) -> bool {
        self.range(addr, len).is_ok()
    }

    fn mark_host_dirty(&mut self, off: usize, len: usize) {
        if !self.track_host_writes || len == 0 {
            return;
        }
        let first = off / PAGE_SIZE;
        let last = (off + len - 1) / PAGE_SIZE;
        for p in first..=last {
            let (w, bit) = (p / 64, 1u64 << (p % 64));
            if self.host_dirty[w] & bit == 0 {
                self.host_dirty[w] |= bit;
                self.host_list.push(p as u32);
            }
        }
    }

    /// How much of `off..off+len` lies below the shared area (the rest is in it).
    fn private_part(&self, off: usize, len: usize) -> usize {
        self.shared_from.clamp(off, off + len) - off
    }

    /// Copy `out.len()` bytes out from offset `off` (already bounds-checked by the caller).
    /// The shared area, which other VMs write while this one is stopped, is read with
    /// volatile accesses.
    fn copy_out(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.size, "guest copy out of bounds");
        let n = self.private_part(off, out.len());
        // SAFETY: callers check off..off+len against the mapping; this VM's guest is not
        // running, and nothing else writes its private pages.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), n) };
        for (i, b) in out[n..].iter_mut().enumerate() {
            // SAFETY: inside the mapping (checked above); other VMs may write these bytes at
            // any time, so each is read once, volatile.
            *b = unsafe { self.ptr.add(off + n + i).read_volatile() };
        }
    }

    /// Copy `data` in at offset `off` (already bounds-checked by the caller); volatile in the
    /// shared area, as in `copy_out`.
    fn copy_in(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.size, "guest copy out of bounds");
        if !self.private && !self.files.is_empty() {
            // Best effort: if it fails, the bytes still land (in this mapping only).
            let _ = self.prepare_write(off as u64, data.len() as u64);
        }
        let n = self.private_part(off, data.len());
        // SAFETY: as in `copy_out`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), n) };
        for (i, &b) in data[n..].iter().enumerate() {
            // SAFETY: as in `copy_out`.
            unsafe { self.ptr.add(off + n + i).write_volatile(b) };
        }
        self.mark_host_dirty(off, data.len());
    }

    /// Copy guest bytes out, where the guest could read them itself (see
    /// [`GuestMemory::set_user_write_check`]).
    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), MemError> {
        let off = self.range(addr, out.len())?;
        if self.remap_of(addr).is_none() && !self.user_access(addr, out.len(), Self::USER_READ) {
            return Err(MemError::NoAccess {
                addr,
                len: out.len() as u64,
                access: "readable",
            });
        }
        self.copy_out(off, out);
        Ok(())
    }

    /// Copy guest bytes out whatever its page protections say (outside the supervisor
    /// structures): `mremap` moving a `PROT_NONE` mapping's contents.
    pub fn read_any_protection(&self, addr: u64, out: &mut [u8]) -> Result<(), MemError> {
        let off = self.range(addr, out.len())?;
        self.copy_out(off, out);
        Ok(())
    }

    /// Copy bytes into the guest, where the guest could write them itself (see
    /// [`GuestMemory::set_user_write_check`]).
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let off = self.range(addr, data.len())?;
        if self.remap_of(addr).is_none() && !self.user_access(addr, data.len(), Self::USER_WRITE) {
            return Err(MemError::NoAccess {
                addr,
                len: data.len() as u64,
                access: "writable",
            });
        }
        self.copy_in(off, data);
        Ok(())
    }

    /// Copy bytes into the guest whatever its page protections say (outside the supervisor
    /// structures): the debugger's breakpoints, a loader filling a mapping it protects next.
    pub fn write_any_protection(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let off = self.range(addr, data.len())?;
        self.copy_in(off, data);
        Ok(())
    }

    /// Fill a guest range with zeroes.
    pub fn zero(&mut self, addr: u64, len: usize) -> Result<(), MemError> {
        let off = self.range(addr, len)?;
        if !self.files.is_empty() && self.remap_of(addr).is_none() {
            // Whole pages of a mapped file become ordinary memory again (the caller maps
            // something new there); a partial page is only written.
            let lo = (off as u64).next_multiple_of(PAGE_SIZE as u64);
            let hi = (off + len) as u64 & !(PAGE_SIZE as u64 - 1);
            if lo < hi {
                self.unmap_files(lo, hi - lo)?;
            }
            // A partial page left in a main VM's file: the image's own page first.
            self.prepare_write(addr, len as u64)?;
        }
        if !self.private
            && len >= (64 << 10)
            && off % PAGE_SIZE == 0
            && len.is_multiple_of(PAGE_SIZE)
        {
            // Shared memfd: punching a hole frees the pages and reads back as zero.
            let punched = nix::fcntl::fallocate(
                &*self.memfd,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                len as libc::off_t,
            );
            if punched.is_ok() {
                return Ok(());
            }
        }
        // SAFETY: bounds checked above.
        unsafe { std::ptr::write_bytes(self.ptr.add(off), 0, len) };
        self.mark_host_dirty(off, len);
        Ok(())
    }

    /// Read a little-endian u64.
    pub fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write a little-endian u64.
    pub fn write_u64(&mut self, addr: u64, v: u64) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Read a guest byte range into a new vector.
    pub fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemError> {
        self.range(addr, len)?;
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// Read a NUL-terminated string of at most `max` bytes (without the NUL).
    pub fn read_cstr(&self, addr: u64, max: usize) -> Result<Vec<u8>, MemError> {
        let mut out = Vec::new();
        let mut a = addr;
        let mut chunk = [0u8; 256];
        loop {
            // Never past the page the string is on: the next page may be protected
            // (the page tables above the stack) while the string ends before it.
            let to_page = PAGE_SIZE as u64 - (a % PAGE_SIZE as u64);
            let room = self.span(a).min(chunk.len() as u64).min(to_page) as usize;
            if room == 0 {
                return Err(MemError::OutOfBounds { addr, len: 1 });
            }
            self.read(a, &mut chunk[..room])?;
            if let Some(n) = chunk[..room].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..n]);
                if out.len() > max {
                    return Err(MemError::Unterminated { addr, max });
                }
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..room]);
            if out.len() > max {
                return Err(MemError::Unterminated { addr, max });
            }
            a += room as u64;
        }
    }

    /// Bytes of host memory the backing memfd currently holds (all views together).
    pub fn backing_bytes(&self) -> u64 {
        nix::sys::stat::fstat(&*self.memfd).map_or(0, |st| st.st_blocks as u64 * 512)
    }

    /// Byte ranges `[start, end)` of the backing memfd that hold data (page aligned, in
    /// order); everything else reads as zeros (for a snapshot file of a frozen image).
    pub fn data_extents(&self) -> Vec<(usize, usize)> {
        let fd = &*self.memfd;
        let limit = self.size as libc::off_t;
        let mut out = Vec::new();
        let mut pos: libc::off_t = 0;
        while pos < limit {
            let Ok(data) = lseek(fd, pos, Whence::SeekData) else {
                break;
            };
            if data >= limit {
                break;
            }
            let hole = lseek(fd, data, Whence::SeekHole).map_or(limit, |h| h.min(limit));
            if hole <= data {
                break;
            }
            out.push((data as usize, hole as usize));
            pos = hole;
        }
        if self.files.is_empty() {
            return out;
        }
        // Mapped files hold data too (read through the mapping: a snapshot carries a copy).
        out.extend(
            self.files
                .iter()
                .map(|f| (f.addr as usize, f.end() as usize)),
        );
        out.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(out.len());
        for (a, b) in out {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// Number of pages in the bitmap layout.
    pub fn pages(&self) -> usize {
        self.size / PAGE_SIZE
    }

    /// Record the holes of this (frozen) memory below `below`: the pages the main VM never
    /// wrote, which the memfd does not back yet. Views forked afterwards map anonymous memory
    /// over them, because a read through a `MAP_PRIVATE` view of a memfd hole makes the kernel
    /// allocate that page *in the memfd* (shared by every view, never given back): a request
    /// reading never-written memory grew the frozen image by as much as it read. Anonymous
    /// memory reads as the shared zero page instead, and resets to zeros like the hole.
    /// Returns the number of hole pages covered.
    pub fn find_holes(&mut self, below: usize) -> usize {
        let fd = &*self.memfd;
        let limit = below.min(self.size) as libc::off_t;
        let mut holes = Vec::new();
        let mut pos: libc::off_t = 0;
        while pos < limit {
            let data = lseek(fd, pos, Whence::SeekData).map_or(limit, |d| d.min(limit));
            if data > pos {
                holes.push((pos as usize / PAGE_SIZE, data as usize / PAGE_SIZE));
            }
            if data >= limit {
                break;
            }
            let hole = lseek(fd, data, Whence::SeekHole).unwrap_or(-1);
            if hole <= data {
                break;
            }
            pos = hole;
        }
        holes.retain(|&(a, b)| b - a >= MIN_HOLE_PAGES);
        holes.sort_by_key(|&(a, b)| std::cmp::Reverse(b - a));
        holes.truncate(MAX_HOLES);
        holes.sort_unstable();
        let pages = holes.iter().map(|&(a, b)| b - a).sum();
        self.holes = Arc::new(holes);
        pages
    }

    /// Whether `page` lies in a hole of the frozen image mapped anonymously (see
    /// [`GuestMemory::find_holes`]).
    fn in_hole(&self, page: usize) -> bool {
        let i = self.holes.partition_point(|&(start, _)| start <= page);
        i > 0 && page < self.holes[i - 1].1
    }

    /// Bytes the memfd behind this memory really holds (its allocated blocks).
    pub fn allocated_bytes(&self) -> u64 {
        nix::sys::stat::fstat(&*self.memfd).map_or(0, |st| st.st_blocks as u64 * 512)
    }

    /// Whether guest page `page` holds the same bytes here as in `image` (false outside
    /// either mapping).
    pub(crate) fn page_same_as(&self, image: &GuestMemory, page: usize) -> bool {
        if page >= self.pages() || page >= image.pages() {
            return false;
        }
        let off = page * PAGE_SIZE;
        // SAFETY: `page` is inside both mappings (checked above); plain reads of mapped memory
        // (the guest is stopped while the host resets it).
        let mine = unsafe { std::slice::from_raw_parts(self.ptr.add(off), PAGE_SIZE) };
        if self.in_hole(page) && !self.in_file(page) {
            // Not read from the image: that would allocate the hole in the memfd.
            return mine.iter().all(|&b| b == 0);
        }
        // SAFETY: as above.
        mine == unsafe { std::slice::from_raw_parts(image.ptr.add(off), PAGE_SIZE) }
    }

    /// Reset the pages set in `dirty` (KVM's dirty log) or written by the host: copy back
    /// from `image` the ones that will almost certainly be written again by the next request —
    /// pages the host wrote (request data) and pages inside `hot` (guest addresses, e.g. the
    /// handler stack) — and drop the private copies of all others with MADV_DONTNEED, which
    /// gives their memory back (they read the image again). Dropping a page that is written on
    /// every request costs a re-fault each time (~5 µs under kvm_pvm), copying it 0.2 µs.
    /// Pages set in `copy` (kept writable, so reported dirty whether written or not) are
    /// compared with the image first and copied only when they differ; the ones that did not
    /// are pushed to `unchanged`.
    /// Returns (pages copied, pages dropped).
    pub(crate) fn discard_pages(
        &mut self,
        image: &GuestMemory,
        dirty: &PageSet,
        hot: std::ops::Range<u64>,
        copy: &PageSet,
        unchanged: &mut Vec<usize>,
    ) -> Result<(usize, usize), MemError> {
        if !self.private {
            return Err(MemError::Os("discard_pages on the main VM memory".into()));
        }
        self.restore_files()?;
        let limit_page = self.shared_from / PAGE_SIZE;
        let hot_pages =
            (hot.start / PAGE_SIZE as u64) as usize..hot.end.div_ceil(PAGE_SIZE as u64) as usize;
        let (mut copied, mut dropped) = (0, 0);
        let mut run: Option<(usize, usize)> = None;
        let mut copy_words = copy.words().iter().peekable();
        for &(w, bits) in dirty.words() {
            let w = w as usize;
            let host = self.host_dirty.get(w).copied().unwrap_or(0);
            while copy_words.peek().is_some_and(|&&(c, _)| (c as usize) < w) {
                copy_words.next();
            }
            let keep = match copy_words.peek() {
                Some(&&(c, k)) if c as usize == w => k,
                _ => 0,
            };
            let mut left = bits;
            while left != 0 {
                let b = left.trailing_zeros() as usize;
                left &= left - 1;
                let page = w * 64 + b;
                if page >= limit_page {
                    break;
                }
                if keep & (1 << b) != 0 && host & (1 << b) == 0 {
                    if self.page_same_as(image, page) {
                        unchanged.push(page);
                    } else {
                        self.copy_page_from(image, page);
                        copied += 1;
                    }
                    continue;
                }
                if host & (1 << b) != 0 || hot_pages.contains(&page) {
                    self.copy_page_from(image, page);
                    copied += 1;
                    if let Some(h) = self.host_dirty.get_mut(w) {
                        *h &= !(1 << b);
                    }
                    continue;
                }
                dropped += 1;
                match run {
                    Some((s, n)) if s + n == page => run = Some((s, n + 1)),
                    _ => {
                        self.drop_pages(run.take())?;
                        run = Some((page, 1));
                    }
                }
            }
        }
        self.drop_pages(run)?;
        // Pages only the host wrote (the guest did not, or they are above the dirty log).
        let list = std::mem::take(&mut self.host_list);
        for &p in &list {
            let (p, w, bit) = (p as usize, p as usize / 64, 1u64 << (p % 64));
            if self.host_dirty[w] & bit != 0 {
                self.host_dirty[w] &= !bit;
                if p < limit_page {
                    self.copy_page_from(image, p);
                    copied += 1;
                }
            }
        }
        self.host_list = list;
        self.host_list.clear();
        Ok((copied, dropped))
    }

    /// Copy one page back from `image` (same layout).
    fn copy_page_from(&mut self, image: &GuestMemory, page: usize) {
        let off = page * PAGE_SIZE;
        assert!(
            off + PAGE_SIZE <= self.size.min(image.size),
            "page out of bounds"
        );
        if self.in_file(page) {
            // A file's page: dropping the private copy shows the file again.
            // SAFETY: the page is inside our mapping (checked above), below the shared area
            // (files never are there).
            let _ = unsafe { self.dont_need(off, PAGE_SIZE) };
            return;
        }
        if self.in_hole(page) {
            // The image holds zeros there; reading it would allocate the hole in the memfd.
            // SAFETY: the page is inside our mapping (checked above); the guest is stopped.
            unsafe { std::ptr::write_bytes(self.ptr.add(off), 0, PAGE_SIZE) };
            return;
        }
        // SAFETY: the page is inside both same-size mappings (checked above); the guest is
        // stopped; the image is frozen.
        unsafe { std::ptr::copy_nonoverlapping(image.ptr.add(off), self.ptr.add(off), PAGE_SIZE) };
    }

    /// Drop the private copies of a run of pages (start, count): they read the image again.
    fn drop_pages(&self, run: Option<(usize, usize)>) -> Result<(), MemError> {
        let Some((start, n)) = run else {
            return Ok(());
        };
        assert!(
            (start + n) * PAGE_SIZE <= self.shared_from,
            "drop outside the private area"
        );
        // SAFETY: the pages are inside our private mapping (below shared_from, checked above).
        unsafe { self.dont_need(start * PAGE_SIZE, n * PAGE_SIZE) }
    }

    /// Drop every private page (below the shared area): the view reads the image again and the
    /// host memory is given back. Only for private views.
    pub(crate) fn discard_private(&mut self) -> Result<(), MemError> {
        if !self.private {
            return Err(MemError::Os("discard_private on the main VM memory".into()));
        }
        self.restore_files()?;
        self.host_dirty.iter_mut().for_each(|w| *w = 0);
        self.host_list.clear();
        // SAFETY: the range is inside our private mapping; MADV_DONTNEED on a MAP_PRIVATE file
        // mapping makes the pages read the file (the frozen image) again.
        unsafe { self.dont_need(0, self.shared_from) }
    }

    /// Ask the host for transparent huge pages (`madvise(MADV_HUGEPAGE)`) over the first
    /// `len` bytes of this memory (rounded down to 2 MiB; for a request VM's view, never the
    /// shared-memory area). Whether the host then uses them: [`host_huge_pages`].
    pub fn advise_huge_pages(&self, len: u64) -> Result<(), MemError> {
        const MB2: usize = 2 << 20;
        let limit = if self.private {
            self.shared_from
        } else {
            self.size
        };
        let len = (len.min(limit as u64) as usize) & !(MB2 - 1);
        let Some(p) = NonNull::new(self.ptr) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        // SAFETY: 0..len lies inside this memory's own mapping; MADV_HUGEPAGE changes only
        // how the kernel backs it, never its contents.
        unsafe { mman::madvise(p.cast(), len, MmapAdvise::MADV_HUGEPAGE) }
            .map_err(os_err("madvise(MADV_HUGEPAGE)"))
    }

    /// MADV_DONTNEED over `off..off+len` of the mapping.
    ///
    /// # Safety
    /// The range must lie inside the mapping; its pages read as the file (or zero) again.
    unsafe fn dont_need(&self, off: usize, len: usize) -> Result<(), MemError> {
        let Some(p) = NonNull::new(self.ptr.wrapping_add(off)) else {
            return Ok(());
        };
        // SAFETY: the caller's contract: the range is ours.
        unsafe { mman::madvise(p.cast(), len, MmapAdvise::MADV_DONTNEED) }
            .map_err(os_err("madvise"))
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        if let Some(p) = NonNull::new(self.ptr) {
            // SAFETY: unmapping exactly the mapping created in the constructor (the MAP_FIXED
            // sub-mapping is inside it and goes with it).
            let _ = unsafe { mman::munmap(p.cast(), self.size) };
        }
    }
}

/// What the host's transparent huge pages give guest memory: the kernel's modes
/// (`/sys/kernel/mm/transparent_hugepage/enabled` for anonymous memory, `shmem_enabled` for the
/// memfd images), "" where the kernel has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHugePages {
    /// Mode for anonymous memory (a request VM's fresh pages): `always`, `madvise`, `never`.
    pub anon: String,
    /// Mode for shared memory (a program's image): `always`, `within_size`, `advise`,
    /// `never`, `deny`, `force`.
    pub shmem: String,
}

impl HostHugePages {
    /// Whether advised anonymous memory gets huge pages.
    pub fn anon_ok(&self) -> bool {
        matches!(self.anon.as_str(), "always" | "madvise")
    }

    /// Whether advised shared memory (the image) gets huge pages.
    pub fn shmem_ok(&self) -> bool {
        matches!(
            self.shmem.as_str(),
            "always" | "within_size" | "advise" | "force"
        )
    }
}

/// The host's transparent-huge-page modes (the bracketed word of each file).
pub fn host_huge_pages() -> HostHugePages {
    let mode = |f: &str| {
        std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{f}"))
            .ok()
            .and_then(|t| {
                let a = t.find('[')?;
                let b = t[a..].find(']')?;
                Some(t[a + 1..a + b].to_string())
            })
            .unwrap_or_default()
    };
    HostHugePages {
        anon: mode("enabled"),
        shmem: mode("shmem_enabled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remapped_addresses_are_translated_and_bounded_by_their_area() {
        const V: u64 = 0xC0_0000_0000;
        let mut m = GuestMemory::new_shared(8 << 20).unwrap();
        m.set_remaps(vec![(V, 4 << 20, 2 << 20)]);
        m.write(V, b"first").unwrap();
        m.write(V + (2 << 20) - 4, b"last").unwrap();
        // The bytes are at the physical address.
        let mut b = [0u8; 5];
        m.read_raw(4 << 20, &mut b).unwrap();
        assert_eq!(&b, b"first");
        assert_eq!(m.read_vec(V + (2 << 20) - 4, 4).unwrap(), b"last");
        assert_eq!(m.read_cstr(V, 64).unwrap(), b"first");
        // Straddling the end, just outside either side, sizes that overflow: refused.
        let oob = |r: Result<(), MemError>| {
            assert!(matches!(r, Err(MemError::OutOfBounds { .. })), "{r:?}")
        };
        oob(m.read(V + (2 << 20) - 4, &mut [0u8; 5]));
        oob(m.write(V + (2 << 20) - 4, b"xxxxx"));
        oob(m.read(V + (2 << 20), &mut [0u8; 1]));
        oob(m.read(V - 1, &mut [0u8; 2]));
        oob(m.zero(V, (2 << 20) + 1));
        oob(m.zero(u64::MAX - 1, 4));
        assert!(m.read_vec(V + 8, usize::MAX).is_err());
        assert!(!m.contains(V, (2 << 20) + 1));
        assert!(m.contains(V, 2 << 20));
        // An unterminated string at the end of the area stops there.
        m.write(V + (2 << 20) - 4, b"abcd").unwrap();
        assert!(m.read_cstr(V + (2 << 20) - 4, 64).is_err());
        // Views keep the translation.
        let view = m.fork_private(8 << 20, None).unwrap();
        assert_eq!(view.read_vec(V, 5).unwrap(), b"first");
    }

    #[test]
    fn bounds_and_strings() {
        let mut m = GuestMemory::new_shared(2 << 20).unwrap();
        m.write(100, b"hello\0").unwrap();
        assert_eq!(m.read_cstr(100, 64).unwrap(), b"hello");
        assert!(m.read_cstr(100, 3).is_err());
        assert!(m.write((2 << 20) - 2, b"abc").is_err());
        assert!(m.read_u64(u64::MAX - 3).is_err());
        m.write((2 << 20) - 3, b"ab\0").unwrap();
        assert_eq!(m.read_cstr((2 << 20) - 3, 10).unwrap(), b"ab");
        m.write((2 << 20) - 2, b"ab").unwrap();
        assert!(m.read_cstr((2 << 20) - 2, 10).is_err());
    }

    #[test]
    fn protected_ranges_refuse_guest_pointers() {
        let mut m = GuestMemory::new_shared(2 << 20).unwrap();
        m.set_protected(vec![(0, 0x2000)]);
        assert!(m.write(0x1ff0, &[0; 32]).is_err());
        assert!(m.read_u64(0x100).is_err());
        assert!(m.write(0x2000, b"ok").is_ok());
        m.write_raw(0x100, b"sys").unwrap();
        let mut b = [0u8; 3];
        m.read_raw(0x100, &mut b).unwrap();
        assert_eq!(&b, b"sys");
        assert!(m.read_cstr(0x100, 10).is_err());
        // A string ending just below a protected page reads (as a path at the top of the
        // stack, below the page tables); one running into it does not.
        m.set_protected(vec![(0, 0x2000), (0x10000, 0x11000)]);
        m.write(0xFFFA, b"state\0").unwrap();
        assert_eq!(m.read_cstr(0xFFFA, 4096).unwrap(), b"state");
        m.write(0xFFFA, b"stated").unwrap();
        assert!(m.read_cstr(0xFFFA, 4096).is_err());
    }
}
