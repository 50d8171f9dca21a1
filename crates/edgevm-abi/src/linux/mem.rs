//! Memory calls: `brk` grows up from the end of the ELF image, anonymous `mmap` allocates down
//! from the stack guard page, `munmap`ped ranges are reused (zeroed), all counted against
//! `max_memory` except address space reserved with `PROT_NONE` (glibc's malloc arenas, Go's
//! heap arena reservations): it counts once it is made accessible (`mprotect`, or a
//! `MAP_FIXED` mapping over it).

use std::collections::BTreeMap;

use edgevm_kvm::GuestMemory;

use super::{page_up, LinuxState, PAGE};
use crate::errno::*;
use crate::layout;
use crate::paging::{PROT_EXEC, PROT_READ, PROT_WRITE};

/// Anonymous memory handed out by mmap, below the stack guard page.
#[derive(Debug, Clone)]
pub(super) struct MmapArea {
    /// Lowest address of the area in use now (it grows down; munmap at the bottom raises it).
    pub(super) bottom: u64,
    /// Lowest address ever handed out: memory below it (down to the heap) was never used and
    /// is still zero; memory above it must be zeroed when handed out again.
    pub(super) low_water: u64,
    /// Top of the area (the stack guard page).
    pub(super) top: u64,
    /// Freed ranges inside [bottom, top): start -> length.
    pub(super) free: BTreeMap<u64, u64>,
    /// Mapped ranges with no access (PROT_NONE), not counted: start -> length.
    pub(super) reserved: BTreeMap<u64, u64>,
    /// `blackout_area` ranges [start, end): never free, never handed out, not counted as
    /// mapped.
    pub(super) blackout: Vec<(u64, u64)>,
}

/// The first of `ranges` overlapping [start, end), if any.
pub(super) fn overlapping(ranges: &[(u64, u64)], start: u64, end: u64) -> Option<(u64, u64)> {
    ranges.iter().copied().find(|&(s, e)| s < end && start < e)
}

/// Remove [start, start+len) from a set of ranges (start -> length): the bytes removed.
fn remove_range(set: &mut BTreeMap<u64, u64>, start: u64, len: u64) -> u64 {
    let end = start.saturating_add(len);
    let overlapping: Vec<(u64, u64)> = set
        .range(..end)
        .filter(|(s, l)| **s + **l > start)
        .map(|(s, l)| (*s, *l))
        .collect();
    let mut removed = 0;
    for (s, l) in overlapping {
        set.remove(&s);
        removed += (s + l).min(end) - s.max(start);
        if s < start {
            set.insert(s, start - s);
        }
        if s + l > end {
            set.insert(end, s + l - end);
        }
    }
    removed
}

/// Bytes of [start, start+len) inside a set of ranges.
fn overlap(set: &BTreeMap<u64, u64>, start: u64, len: u64) -> u64 {
    let end = start.saturating_add(len);
    set.range(..end)
        .filter(|(s, l)| **s + **l > start)
        .map(|(s, l)| (*s + *l).min(end) - (*s).max(start))
        .sum()
}

/// Add [start, start+len) to a set of ranges, merging with neighbours.
fn insert_range(set: &mut BTreeMap<u64, u64>, start: u64, len: u64) {
    remove_range(set, start, len);
    let (mut s, mut e) = (start, start + len);
    if let Some((&ps, &pl)) = set.range(..s).next_back() {
        if ps + pl == s {
            set.remove(&ps);
            s = ps;
        }
    }
    if let Some(&nl) = set.get(&e) {
        set.remove(&e);
        e += nl;
    }
    set.insert(s, e - s);
}

impl MmapArea {
    fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    /// Bytes mapped and counted (reservations with no access are not).
    pub(super) fn mapped_bytes(&self) -> u64 {
        let reserved: u64 = self.reserved.values().sum();
        let dark: u64 = self
            .blackout
            .iter()
            .map(|&(s, e)| e.min(self.top).saturating_sub(s.max(self.bottom)))
            .sum();
        (self.top - self.bottom)
            .saturating_sub(self.free_bytes())
            .saturating_sub(reserved)
            .saturating_sub(dark)
    }

    /// Blackout ranges are never in the free list (after the area grew over one).
    fn drop_blackout_from_free(&mut self) {
        for (s, e) in self.blackout.clone() {
            let (s, e) = (s.max(self.bottom), e.min(self.top));
            if s < e {
                self.take(s, e - s);
            }
        }
    }

    /// Remove [start, start+len) from the free list (it becomes mapped).
    fn take(&mut self, start: u64, len: u64) {
        remove_range(&mut self.free, start, len);
    }

    /// Return [start, start+len) to the free list, coalescing (blackout ranges in it stay
    /// out).
    fn give_back(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        if let Some((bs, be)) = overlapping(&self.blackout, start, end) {
            if start < bs {
                self.give_back(start, bs - start);
            }
            if be < end {
                self.give_back(be, end - be);
            }
            return;
        }
        self.give_back_plain(start, len);
    }

    fn give_back_plain(&mut self, start: u64, len: u64) {
        let start = start.max(self.bottom);
        let end = start.saturating_add(len).min(self.top);
        if end <= start {
            return;
        }
        remove_range(&mut self.reserved, start, end - start);
        self.take(start, end - start);
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pl)) = self.free.range(..s).next_back() {
            if ps + pl == s {
                self.free.remove(&ps);
                s = ps;
            }
        }
        if let Some(&nl) = self.free.get(&e) {
            self.free.remove(&e);
            e += nl;
        }
        if s == self.bottom {
            self.bottom = e;
        } else {
            self.free.insert(s, e - s);
        }
    }
}

impl LinuxState {
    /// The memory calls; None if `nr` is none of them.
    pub(super) fn mem_call(&mut self, nr: i64, a: [u64; 6], mem: &mut GuestMemory) -> Option<i64> {
        Some(match nr {
            libc::SYS_mmap => self.sys_mmap(a, mem),
            libc::SYS_mprotect => self.sys_mprotect(a[0], a[1], a[2], mem),
            libc::SYS_munmap => self.sys_munmap(a[0], a[1], mem),
            libc::SYS_brk => self.sys_brk(a[0], mem),
            libc::SYS_mremap => self.sys_mremap(a, mem),
            libc::SYS_madvise => self.sys_madvise(a, mem),
            _ => return None,
        })
    }

    fn sys_brk(&mut self, req: u64, mem: &mut GuestMemory) -> i64 {
        if req < self.brk_start {
            return self.brk as i64;
        }
        let new = page_up(req);
        // Keep one page free between the heap and the lowest mapping.
        if new.saturating_add(PAGE) > self.mmap.bottom {
            return self.brk as i64;
        }
        if new > self.brk && !self.can_grow(new - self.brk) {
            return self.brk as i64;
        }
        if new > self.brk && overlapping(&self.cfg.blackout, self.brk, new).is_some() {
            return self.brk as i64;
        }
        if new > self.brk {
            // Memory that was part of the heap before (then released) must read as zero again.
            let dirty_end = new.min(self.brk_high);
            if dirty_end > self.brk && mem.zero(self.brk, (dirty_end - self.brk) as usize).is_err()
            {
                return self.brk as i64;
            }
            self.brk_high = self.brk_high.max(new);
            let prot = self.heap_prot(PROT_READ | PROT_WRITE);
            if self
                .pt
                .set_range(mem, &self.layout, self.brk, new, prot)
                .is_err()
            {
                return self.brk as i64;
            }
        }
        self.brk = new;
        req as i64
    }

    /// Map `len` bytes of zeroed anonymous memory for the program, as its own `mmap` would
    /// (counted against max_memory and the request's limit, undone by the VM's reset): how the
    /// host hands a program a buffer it filled (e.g. a `sys_fetch` response). None: no room.
    pub fn map_anonymous(&mut self, len: u64, mem: &mut GuestMemory) -> Option<u64> {
        let len = page_up(len.max(1));
        if len == 0 || len > self.layout.mem_size {
            return None;
        }
        let at = self.alloc(len, mem, true)?;
        let prot = self.heap_prot(PROT_READ | PROT_WRITE);
        if self.protect(mem, at, len, prot) < 0 {
            self.mmap.give_back(at, len);
            return None;
        }
        Some(at)
    }

    /// [`LinuxState::map_anonymous`] in whole 2 MiB pages on a 2 MiB boundary: where the
    /// page tables already say what the program's new memory gets (every never-changed
    /// region), nothing is rewritten or queued for the vCPU to re-read. For the stacks of
    /// SMP workers, whose vCPUs cannot run the page-table routine (docs/DESIGN.md, "SMP").
    pub fn map_anonymous_huge(&mut self, len: u64, mem: &mut GuestMemory) -> Option<u64> {
        const MB2: u64 = 2 << 20;
        let len = len.max(1).div_ceil(MB2).checked_mul(MB2)?;
        if len > self.layout.mem_size {
            return None;
        }
        let at = self.alloc(len + MB2, mem, true)?;
        let start = at.next_multiple_of(MB2);
        let end = start + len;
        if start > at {
            self.mmap.give_back(at, start - at);
        }
        if at + len + MB2 > end {
            self.mmap.give_back(end, at + len + MB2 - end);
        }
        let prot = self.heap_prot(PROT_READ | PROT_WRITE);
        if self.protect(mem, start, len, prot) < 0 {
            self.mmap.give_back(start, len);
            return None;
        }
        Some(start)
    }

    /// Take `len` bytes of the mmap area; `counted`: checked against the memory limits (a
    /// reservation with no access is not).
    pub(super) fn alloc(&mut self, len: u64, mem: &mut GuestMemory, counted: bool) -> Option<u64> {
        if counted && !self.can_grow(len) {
            return None;
        }
        // Highest free range that fits (mimics Linux's top-down allocation).
        let fit = self
            .mmap
            .free
            .iter()
            .rev()
            .find(|(_, l)| **l >= len)
            .map(|(s, l)| (*s, *l));
        if let Some((s, l)) = fit {
            let at = s + l - len;
            self.mmap.take(at, len);
            mem.zero(at, len as usize).ok()?;
            return Some(at);
        }
        let mut at = self.mmap.bottom.checked_sub(len)?;
        // Below the area: step over blackout ranges (what lies between one and the bottom
        // becomes free).
        while let Some((bs, be)) = overlapping(&self.mmap.blackout, at, self.mmap.bottom) {
            if be < self.mmap.bottom {
                self.mmap.free.insert(be, self.mmap.bottom - be);
            }
            self.mmap.bottom = bs;
            self.mmap.low_water = self.mmap.low_water.min(bs);
            at = bs.checked_sub(len)?;
        }
        if at < self.brk + PAGE {
            return None;
        }
        let used_end = (at + len).min(self.mmap.bottom);
        let used_start = at.max(self.mmap.low_water);
        if used_end > used_start {
            mem.zero(used_start, (used_end - used_start) as usize)
                .ok()?;
        }
        self.mmap.bottom = at;
        self.mmap.low_water = self.mmap.low_water.min(at);
        Some(at)
    }

    /// Memory of the mmap area in `start..start+len` got the protection `prot`: a range with
    /// no access becomes a reservation (not counted), reserved memory made accessible counts
    /// again. Call [`Self::may_unreserve`] before making reserved memory accessible.
    fn account(&mut self, start: u64, len: u64, prot: u32) {
        let (lo, hi) = (
            start.max(self.mmap.bottom),
            start.saturating_add(len).min(self.mmap.top),
        );
        if hi <= lo {
            return;
        }
        if prot == 0 {
            // Only what is mapped: free ranges stay free.
            let mut at = lo;
            let free: Vec<(u64, u64)> = self
                .mmap
                .free
                .range(..hi)
                .filter(|(s, l)| **s + **l > lo)
                .map(|(s, l)| (*s, *s + *l))
                .collect();
            for (fs, fe) in free.into_iter().chain([(hi, hi)]) {
                if fs > at {
                    insert_range(&mut self.mmap.reserved, at, fs - at);
                }
                at = at.max(fe);
            }
        } else {
            remove_range(&mut self.mmap.reserved, lo, hi - lo);
        }
    }

    /// Whether reserved memory in `start..start+len` may be made accessible (it then counts
    /// against max_memory and the request's limit).
    fn may_unreserve(&self, start: u64, len: u64, prot: u32) -> bool {
        prot == 0 || self.can_grow(overlap(&self.mmap.reserved, start, len))
    }

    /// Protection of new brk/mmap memory: as asked, plus execute with `executable_heap`.
    fn heap_prot(&self, prot: u32) -> u32 {
        if self.cfg.executable_heap && prot != 0 {
            prot | PROT_EXEC
        } else {
            prot
        }
    }

    /// W^X: writable and executable at once only with `executable_heap`.
    fn wx_refused(&self, prot: u64) -> bool {
        prot & 6 == 6 && !self.cfg.executable_heap
    }

    /// Give `start..start+len` the protection `prot` (PROT_* bits); -ENOMEM when a page
    /// table cannot be found for it.
    pub(super) fn protect(
        &mut self,
        mem: &mut GuestMemory,
        start: u64,
        len: u64,
        prot: u32,
    ) -> i64 {
        if self.in_remap(start, start.saturating_add(len)) {
            // A remapped area's page tables are not the identity map's: it keeps the
            // protection its configuration gives it.
            return 0;
        }
        if prot & PROT_WRITE != 0 && mem.prepare_write(start, len).is_err() {
            return -ENOMEM;
        }
        match self
            .pt
            .set_range(mem, &self.layout, start, start + len, prot)
        {
            Ok(()) => 0,
            Err(_) => -ENOMEM,
        }
    }

    fn sys_mprotect(&mut self, addr: u64, len: u64, prot: u64, mem: &mut GuestMemory) -> i64 {
        if !addr.is_multiple_of(PAGE) || prot & !7 != 0 {
            return -EINVAL;
        }
        let len = page_up(len);
        if len == 0 {
            return 0;
        }
        let Some(end) = addr.checked_add(len) else {
            return -ENOMEM;
        };
        if self.in_remap(addr, end) {
            // A remapped area keeps the protection its configuration gives it.
            return 0;
        }
        let l = &self.layout;
        let heap = addr >= layout::USER_BASE && end <= self.mmap.top;
        let stack = addr >= l.stack_bottom && end <= l.stack_top;
        if !heap && !stack {
            return -ENOMEM;
        }
        if overlapping(&self.cfg.blackout, addr, end).is_some() {
            return -ENOMEM;
        }
        if self.wx_refused(prot) {
            return -EACCES;
        }
        if !self.may_unreserve(addr, len, prot as u32) {
            return -ENOMEM;
        }
        let r = self.protect(mem, addr, len, prot as u32);
        if r == 0 {
            self.account(addr, len, prot as u32);
        }
        r
    }

    fn sys_mmap(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const MAP_ANONYMOUS: u64 = 0x20;
        let prot = a[2] & 7;
        let exec_remap = self
            .cfg
            .remaps
            .iter()
            .any(|&(v, n, x)| x && a[0] >= v && a[0].saturating_add(page_up(a[1])) <= v + n);
        if self.wx_refused(prot) && !exec_remap {
            return -EACCES;
        }
        if a[3] & MAP_ANONYMOUS == 0 {
            return self.mmap_file(a, mem);
        }
        let at = self.mmap_anon(a, mem);
        if at < 0 {
            return at;
        }
        let prot = self.heap_prot(prot as u32);
        // MAP_FIXED over a reservation: the part made accessible counts from now on.
        if !self.may_unreserve(at as u64, page_up(a[1]), prot) {
            self.sys_munmap(at as u64, a[1], mem);
            return -ENOMEM;
        }
        let r = self.protect(mem, at as u64, page_up(a[1]), prot);
        if r < 0 {
            self.sys_munmap(at as u64, a[1], mem);
            return r;
        }
        self.account(at as u64, page_up(a[1]), prot);
        at
    }

    fn mmap_anon(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const MAP_FIXED: u64 = 0x10;
        const MAP_ANONYMOUS: u64 = 0x20;
        const MAP_FIXED_NOREPLACE: u64 = 0x100000;
        let (addr, len, flags) = (a[0], a[1], a[3]);
        // A mapping with no access only reserves address space (not counted).
        let counted = a[2] & 7 != 0;
        if len == 0 {
            return -EINVAL;
        }
        if flags & MAP_ANONYMOUS == 0 {
            return self.mmap_file(a, mem);
        }
        let len = page_up(len);
        if len == 0 || len > self.layout.mem_size {
            return -ENOMEM;
        }
        let fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0;
        if fixed && addr % PAGE != 0 {
            return -EINVAL;
        }
        let end = addr.saturating_add(len);
        if fixed && overlapping(&self.cfg.blackout, addr, end).is_some() {
            return -ENOMEM;
        }
        // Inside a remapped area (fixed, or a hint followed): that memory, zeroed.
        if (fixed || self.cfg.keep_mmap_addresses) && addr % PAGE == 0 && self.in_remap(addr, end) {
            return match mem.zero(addr, len as usize) {
                Ok(()) => addr as i64,
                Err(_) => -ENOMEM,
            };
        }
        // An address hint is honoured with relocate_fixed_mmap off, when that range is free.
        let hint = !fixed
            && addr != 0
            && self.cfg.keep_mmap_addresses
            && addr % PAGE == 0
            && self.range_unused(addr, end);
        if fixed || hint {
            if addr < layout::USER_BASE || end > self.mmap.top || self.heap_collision(addr, end) {
                // Where edgevm cannot place it: elsewhere (relocate_fixed_mmap), or refused.
                if self.cfg.keep_mmap_addresses {
                    return -ENOMEM;
                }
                return match self.alloc(len, mem, counted) {
                    Some(at) => at as i64,
                    None => -ENOMEM,
                };
            }
            if addr >= self.mmap.bottom.min(self.brk) {
                // Inside (or extending) the mmap area.
                if addr < self.brk + PAGE {
                    // Would collide with the heap; only allowed inside existing heap pages.
                    if end > self.brk {
                        return -ENOMEM;
                    }
                } else if addr < self.mmap.bottom {
                    let grow = self.mmap.bottom - addr;
                    if counted && !self.can_grow(grow) {
                        return -ENOMEM;
                    }
                    let old = self.mmap.bottom;
                    self.mmap.bottom = addr;
                    self.mmap.low_water = self.mmap.low_water.min(addr);
                    if end < old {
                        self.mmap.free.insert(end, old - end);
                    }
                    self.mmap.drop_blackout_from_free();
                }
                self.mmap.take(addr, len);
            }
            if mem.zero(addr, len as usize).is_err() {
                return -ENOMEM;
            }
            return addr as i64;
        }
        match self.alloc(len, mem, counted) {
            Some(at) => at as i64,
            None => -ENOMEM,
        }
    }

    /// Whether [addr, end) is neither mapped nor blacked out: free in the mmap area, or
    /// between the heap (one page above it) and the area's bottom.
    fn range_unused(&self, addr: u64, end: u64) -> bool {
        if end <= addr || overlapping(&self.cfg.blackout, addr, end).is_some() {
            return false;
        }
        if addr >= self.brk + PAGE && end <= self.mmap.bottom {
            return true;
        }
        if addr < self.mmap.bottom || end > self.mmap.top {
            return false;
        }
        self.mmap
            .free
            .range(..=addr)
            .next_back()
            .is_some_and(|(s, l)| *s <= addr && s + l >= end)
    }

    /// Whether a fixed mapping [addr, end) would overlap the heap beyond its current pages
    /// (it may lie inside them, or above the heap with one page between).
    fn heap_collision(&self, addr: u64, end: u64) -> bool {
        addr >= self.mmap.bottom.min(self.brk) && addr < self.brk + PAGE && end > self.brk
    }

    /// A file mapping: anonymous memory holding a copy of the file's bytes (the rest of the
    /// last page, and pages past the end of the file, read as zero). MAP_PRIVATE, and
    /// MAP_SHARED read-only (the copy does not follow later changes of the file); a shared
    /// writable mapping, whose writes would have to reach the file, is refused with ENODEV.
    fn mmap_file(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const MAP_SHARED: u64 = 1;
        const MAP_ANONYMOUS: u64 = 0x20;
        let (len, prot, flags, fd, off) = (a[1], a[2], a[3], a[4] as i64 as i32, a[5]);
        if off % PAGE != 0 {
            return -EINVAL;
        }
        let file = match self.fds.file(fd) {
            Some(f) => f.clone(),
            None if self.fd_kind(fd) == super::fds::FdKind::Closed => return -EBADF,
            None => return -ENODEV,
        };
        if !file.read {
            return -EACCES;
        }
        if flags & 3 == MAP_SHARED && prot & u64::from(PROT_WRITE) != 0 {
            return if file.write { -ENODEV } else { -EACCES };
        }
        let mut anon = a;
        anon[3] |= MAP_ANONYMOUS;
        let shared = if self.cfg.mmap_backed_files && prot & u64::from(PROT_WRITE) == 0 {
            self.shared_file(&file, off, mem)
        } else {
            None
        };
        let at = self.mmap_anon(anon, mem);
        if at < 0 {
            return at;
        }
        let at = at as u64;
        if let Some((fd, size)) = shared.filter(|_| !self.in_remap(at, at + page_up(len))) {
            // The pages the file covers (the rest of its last page reads as zero); pages past
            // its end stay zeroed memory, as in a copy.
            let n = page_up(size - off).min(page_up(len));
            if let Err(e) = mem.map_file(at, n, fd, off) {
                tracing::warn!("mmap_backed_files: cannot map {n:#x} bytes of a file: {e}");
                self.sys_munmap(at, len, mem);
                return -ENOMEM;
            }
            return self.file_map_done(at, len, prot, mem);
        }
        // Readable and writable while the host copies the file in; then as asked.
        let r = self.protect(mem, at, page_up(len), PROT_READ | PROT_WRITE);
        if r < 0 {
            self.sys_munmap(at, len, mem);
            return r;
        }
        let mut buf = vec![0u8; (len as usize).min(1 << 20)];
        let mut done = 0u64;
        while done < len {
            let want = ((len - done) as usize).min(buf.len());
            let n = match file.read_into(off + done, &mut buf[..want]) {
                Ok(n) => n,
                Err(e) => {
                    self.sys_munmap(at, len, mem);
                    return e;
                }
            };
            if n == 0 {
                break;
            }
            if mem.write(at + done, &buf[..n]).is_err() {
                return -EFAULT;
            }
            done += n as u64;
            if n < want {
                break;
            }
        }
        self.file_map_done(at, len, prot, mem)
    }

    /// The end of a file mapping at `at` (`len` bytes, shared or copied in): the protection
    /// asked for (`prot`), accounted; unmapped again if the protection cannot be applied.
    fn file_map_done(&mut self, at: u64, len: u64, prot: u64, mem: &mut GuestMemory) -> i64 {
        let prot = self.heap_prot((prot & 7) as u32);
        let r = self.protect(mem, at, page_up(len), prot);
        if r < 0 {
            self.sys_munmap(at, len, mem);
            return r;
        }
        self.account(at, page_up(len), prot);
        at as i64
    }

    /// The sealed copy of `file` to map from `off` (`mmap_backed_files`), None where a private
    /// copy is made instead: nothing of the file at `off`, the file not shareable
    /// ([`crate::files::sealed_copy`]), the sealed copies this VM maps would exceed its
    /// `max_memory` with this one, or it has [`GuestMemory::MAX_FILES`] files mapped (said
    /// once per VM in the log).
    fn shared_file(
        &mut self,
        file: &crate::files::OpenFile,
        off: u64,
        mem: &GuestMemory,
    ) -> Option<(std::sync::Arc<std::os::fd::OwnedFd>, u64)> {
        if mem.files().len() >= GuestMemory::MAX_FILES {
            if !self.said_files_full {
                self.said_files_full = true;
                tracing::warn!(
                    "mmap_backed_files: {} files mapped already; further file mappings of this VM are private copies",
                    GuestMemory::MAX_FILES
                );
            }
            return None;
        }
        // The copies one VM keeps alive stay within what private copies could take of its
        // memory (a one-page mapping pins the whole file's copy).
        let size = file.file.metadata().ok()?.len();
        let mut pinned = 0u64;
        let mut seen: Vec<*const std::os::fd::OwnedFd> = Vec::new();
        for f in mem.files() {
            if !seen.contains(&std::sync::Arc::as_ptr(&f.fd)) {
                seen.push(std::sync::Arc::as_ptr(&f.fd));
                pinned += rustix::fs::fstat(&*f.fd).map_or(0, |st| st.st_size as u64);
            }
        }
        if pinned.saturating_add(size) > self.cfg.max_memory {
            return None;
        }
        let (fd, size) = crate::files::sealed_copy(&file.file)?;
        (off < size).then_some((fd, size))
    }

    fn sys_munmap(&mut self, addr: u64, len: u64, mem: &mut GuestMemory) -> i64 {
        if !addr.is_multiple_of(PAGE) || len == 0 {
            return -EINVAL;
        }
        let len = page_up(len);
        if addr >= self.mmap.bottom && addr < self.mmap.top {
            self.unmap(addr, len, mem);
        }
        0
    }

    /// Give `start..start+len` of the mmap area back: free for reuse, and no longer
    /// accessible (a use after `munmap` faults, as on Linux, until the range is mapped again).
    fn unmap(&mut self, start: u64, len: u64, mem: &mut GuestMemory) {
        let lo = start.max(self.mmap.bottom);
        let hi = start.saturating_add(len).min(self.mmap.top);
        if hi <= lo {
            return;
        }
        self.mmap.give_back(lo, hi - lo);
        // Cannot fail inside the mmap area (its page tables exist); if it did, the range
        // would only stay accessible, as before.
        let _ = self.protect(mem, lo, hi - lo, 0);
        // Mapped files there are gone (a failure leaves them mapped but inaccessible, and
        // the range's next mapping zeroes it, which tries again).
        if let Err(e) = mem.unmap_files(lo, hi - lo) {
            tracing::warn!("munmap of a mapped file: {e}");
        }
    }

    fn sys_mremap(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const MREMAP_MAYMOVE: u64 = 1;
        let (old, old_len, new_len, flags) = (a[0], page_up(a[1]), page_up(a[2]), a[3]);
        if old % PAGE != 0 || new_len == 0 || flags & !3 != 0 {
            return -EINVAL;
        }
        if !(old >= self.mmap.bottom && old.saturating_add(old_len) <= self.mmap.top) {
            return -EFAULT;
        }
        if new_len <= old_len {
            self.unmap(old + new_len, old_len - new_len, mem);
            return old as i64;
        }
        let extra = new_len - old_len;
        // Grow in place when the following range is free.
        let next = old + old_len;
        if let Some(&l) = self.mmap.free.get(&next) {
            let prot = crate::paging::prot_at(mem, &self.layout, old);
            if l >= extra && (prot == 0 || self.can_grow(extra)) {
                self.mmap.take(next, extra);
                if mem.zero(next, extra as usize).is_err() {
                    return -ENOMEM;
                }
                let r = self.protect(mem, next, extra, prot);
                if r < 0 {
                    return r;
                }
                self.account(next, extra, prot);
                return old as i64;
            }
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return -ENOMEM;
        }
        let prot = crate::paging::prot_at(mem, &self.layout, old);
        let Some(new) = self.alloc(new_len, mem, prot != 0) else {
            return -ENOMEM;
        };
        let r = self.protect(mem, new, new_len, prot);
        if r < 0 {
            self.mmap.give_back(new, new_len);
            return r;
        }
        self.account(new, new_len, prot);
        let mut off = 0;
        while off < old_len {
            let n = (old_len - off).min(1 << 20) as usize;
            // The old mapping's contents whatever its protection (PROT_NONE moves too).
            let mut d = vec![0u8; n];
            if mem.read_any_protection(old + off, &mut d).is_err()
                || mem.write_any_protection(new + off, &d).is_err()
            {
                return -EFAULT;
            }
            off += n as u64;
        }
        self.unmap(old, old_len, mem);
        new as i64
    }

    fn sys_madvise(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const MADV_DONTNEED: u64 = 4;
        let (addr, len, advice) = (a[0], page_up(a[1]), a[2]);
        if addr % PAGE != 0 {
            return -EINVAL;
        }
        if advice == MADV_DONTNEED && len > 0 {
            if addr < layout::USER_BASE && !self.in_remap(addr, addr.saturating_add(len)) {
                return -ENOMEM;
            }
            // Anonymous private memory reads back as zero after MADV_DONTNEED, a private
            // file mapping as the file.
            let end = addr.saturating_add(len);
            let mut at = addr;
            for (a, b) in mem.file_parts(addr, len).into_iter().chain([(end, end)]) {
                if at < a && mem.zero(at, (a - at) as usize).is_err() {
                    return -ENOMEM;
                }
                if a < b && mem.revert_file_pages(a, b - a).is_err() {
                    return -ENOMEM;
                }
                at = b;
            }
        }
        0
    }
}
