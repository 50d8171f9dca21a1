//! Page protections (W^X): the host's side of the guest page tables after boot.
//!
//! The page tables identity-map the address space (docs/DESIGN.md, "Guest CPU state"). User
//! memory is mapped with 2 MiB pages; a 2 MiB region whose 4 KiB pages need different
//! protections (ELF segments, `mprotect` of part of it) is split into a page table taken from
//! a pool of supervisor pages ([`pool_page`]). Protections: present (readable), writable,
//! executable (no NX bit). Code segments are read+execute, everything else non-executable
//! unless `executable_heap`.
//!
//! **How a change reaches the vCPU.** Before the vCPU first runs, the host writes the tables
//! directly. After that, the host still writes the new entries itself (so its own view is
//! always current), but the vCPU may cache the old ones: on hardware KVM in its TLB, under a
//! shadow-paging hypervisor (kvm_pvm, or KVM without EPT/NPT) in shadow page tables that only
//! follow writes the *guest* makes. So every entry the host changed is queued ([`PageTables`]
//! `pending`), and before the guest runs again it passes through a tiny CPL0 routine
//! (`cpu::pt_apply_handler`, reached by the #UD of a `ud2` at [`layout::PT_TRIGGER`]) that
//! stores each queued entry again onto itself — a guest write the hypervisor sees and
//! follows — then reloads CR3 (a TLB flush) and returns where the guest was going. No exit to
//! the host: a few emulated instructions under kvm_pvm, native on hardware. Only a run that
//! changed protections pays for it: the ordinary request path never does.
//!
//! **Reset.** A request's changes are in page-table pages of its copy-on-write view: the
//! reset restores their bytes like any other page, and the entries it touched are queued
//! again so the next entry makes the vCPU re-read them (the request's permissions must not
//! survive in a TLB or a shadow table).

use edgevm_kvm::GuestMemory;

use crate::layout::{self, Layout};

/// Present.
pub const P: u64 = 1;
/// Writable.
pub const RW: u64 = 2;
/// User-accessible.
pub const US: u64 = 4;
/// Accessed (preset: the CPU never writes page tables).
pub const A: u64 = 0x20;
/// Dirty (preset).
pub const D: u64 = 0x40;
/// 2 MiB leaf in a page directory.
pub const PS: u64 = 0x80;
/// No-execute (EFER.NXE is set).
pub const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
const MB2: u64 = 2 << 20;

/// `PROT_READ`.
pub const PROT_READ: u32 = 1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u32 = 2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u32 = 4;

/// Leaf flags (without PS and address) for `prot` (PROT_* bits).
pub fn leaf_flags(prot: u32) -> u64 {
    if prot & 7 == 0 {
        return US | A | D; // not present
    }
    let mut f = P | US | A | D;
    if prot & PROT_WRITE != 0 {
        f |= RW;
    }
    if prot & PROT_EXEC == 0 {
        f |= NX;
    }
    f
}

/// PROT_* bits of a leaf entry.
pub fn prot_of(e: u64) -> u32 {
    if e & P == 0 {
        return 0;
    }
    PROT_READ | if e & RW != 0 { PROT_WRITE } else { 0 } | if e & NX == 0 { PROT_EXEC } else { 0 }
}

/// The `i`th page of the pool split page tables come from: the page-table area left over
/// by the page directories, then the free supervisor pages below the I/O area.
pub fn pool_page(l: &Layout, i: usize) -> Option<u64> {
    let gibs = l.mem_size.div_ceil(1 << 30);
    let pd_free = (layout::TABLES_SIZE / 0x1000).saturating_sub(gibs);
    let i = i as u64;
    if i < pd_free {
        return Some(l.tables + (gibs + i) * 0x1000);
    }
    let low = layout::PT_POOL_LOW + (i - pd_free) * 0x1000;
    (low < layout::VDSO_PD).then_some(low)
}

/// Whether `rip` is in the page-table routine or its trigger (a green-thread switch waits
/// until the routine returned).
pub fn in_routine(rip: u64) -> bool {
    (layout::PT_TRIGGER..layout::PT_TRIGGER + 2).contains(&rip)
        || (layout::PT_HANDLER..layout::PT_HANDLER + 0x80).contains(&rip)
}

/// The 2 MiB region that holds the stack guard page (always split, never changed).
fn guard_region(l: &Layout) -> u64 {
    l.guard_page & !(MB2 - 1)
}

/// The protection of the page holding `addr` (PROT_* bits; 0 when not mapped).
pub fn prot_at(mem: &GuestMemory, l: &Layout, addr: u64) -> u32 {
    let pde = mem.read_raw_u64(l.tables + 8 * (addr >> 21));
    if pde & P == 0 {
        return 0;
    }
    if pde & PS != 0 {
        return prot_of(pde);
    }
    prot_of(mem.read_raw_u64((pde & ADDR) + 8 * ((addr >> 12) & 511)))
}

/// Every leaf of user memory in order, as `f(start, end, entry, huge)`: 2 MiB leaves (and
/// absent regions) whole, 4 KiB pages one by one; from [`layout::USER_BASE`] to the end of
/// the address space, without the page-table area.
fn each_user_leaf(mem: &GuestMemory, l: &Layout, mut f: impl FnMut(u64, u64, u64, bool)) {
    let mut a = layout::USER_BASE;
    while a < l.mem_size {
        if a == l.tables {
            a += layout::TABLES_SIZE;
            continue;
        }
        let region = a & !(MB2 - 1);
        let pde = mem.read_raw_u64(l.tables + 8 * (a >> 21));
        if pde & P == 0 || pde & PS != 0 {
            f(a, region + MB2, pde, true);
        } else {
            for i in (a - region) / 4096..512 {
                let e = mem.read_raw_u64((pde & ADDR) + 8 * i);
                f(region + i * 4096, region + (i + 1) * 4096, e, false);
            }
        }
        a = region + MB2;
    }
}

/// The protections of user memory as runs (start, end, PROT_* bits) of equal protection,
/// from the page tables in `mem` (what a snapshot carries).
pub fn protection_runs(mem: &GuestMemory, l: &Layout) -> Vec<(u64, u64, u32)> {
    let mut runs: Vec<(u64, u64, u32)> = Vec::new();
    each_user_leaf(mem, l, |s, e, entry, _| {
        let p = prot_of(entry);
        match runs.last_mut() {
            Some(last) if last.1 == s && last.2 == p => last.1 = e,
            _ => runs.push((s, e, p)),
        }
    });
    runs
}

/// `verbose_pagetables`: the user part of the page tables in `mem`, one line per run of equal
/// protection and page size: `0x401000-0x47b000 r-x 4K (482 pages)`.
pub fn describe(mem: &GuestMemory, l: &Layout) -> Vec<String> {
    let mut runs: Vec<(u64, u64, u32, bool)> = Vec::new();
    each_user_leaf(mem, l, |s, e, entry, huge| {
        let p = prot_of(entry);
        match runs.last_mut() {
            Some(last) if last.1 == s && last.2 == p && last.3 == huge => last.1 = e,
            _ => runs.push((s, e, p, huge)),
        }
    });
    runs.iter()
        .map(|&(s, e, p, huge)| {
            let rwx: String = [(PROT_READ, 'r'), (PROT_WRITE, 'w'), (PROT_EXEC, 'x')]
                .iter()
                .map(|&(b, c)| if p & b != 0 { c } else { '-' })
                .collect();
            let (size, n) = if huge {
                ("2M", (e - s) / MB2)
            } else {
                ("4K", (e - s) / 4096)
            };
            format!("pagetables: {s:#x}-{e:#x} {rwx} {size} ({n} pages)")
        })
        .collect()
}

/// Why a protection change failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtError {
    /// No pool page left to split a 2 MiB region (ENOMEM).
    NoPool,
    /// Guest memory could not be written.
    Memory,
}

/// The page-table state of one process: pool use and the entries its vCPU must re-read.
#[derive(Debug, Clone, Default)]
pub struct PageTables {
    /// Pool pages in use.
    used: usize,
    /// Entries changed since the freeze (boot for a main VM): (address, qwords).
    touched: Vec<(u64, u64)>,
    /// Entries changed that the vCPU has not re-read yet.
    pending: Vec<(u64, u64)>,
}

fn push_range(v: &mut Vec<(u64, u64)>, addr: u64, n: u64) {
    if let Some(last) = v.last_mut() {
        if last.0 + 8 * last.1 == addr {
            last.1 += n;
            return;
        }
    }
    v.push((addr, n));
}

impl PageTables {
    /// Pool pages in use (saved in snapshots).
    pub fn pool_used(&self) -> usize {
        self.used
    }

    /// State of a process whose tables use `used` pool pages, nothing pending.
    pub fn with_pool_used(used: usize) -> Self {
        PageTables {
            used,
            ..Default::default()
        }
    }

    /// The program is frozen: its tables are the image's, nothing to undo from here.
    pub fn freeze(&mut self) {
        self.touched.clear();
        self.pending.clear();
    }

    /// This state replaces `prev` at a reset: what `prev` changed is queued so the vCPU
    /// re-reads the restored entries.
    pub fn after_reset(&mut self, prev: &PageTables) {
        for &(a, n) in prev.touched.iter().chain(&prev.pending) {
            push_range(&mut self.pending, a, n);
        }
    }

    /// Entries the vCPU must re-read before it runs again.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn write(&mut self, mem: &mut GuestMemory, addr: u64, v: u64) -> Result<(), PtError> {
        mem.write_raw(addr, &v.to_le_bytes())
            .map_err(|_| PtError::Memory)?;
        push_range(&mut self.touched, addr, 1);
        push_range(&mut self.pending, addr, 1);
        Ok(())
    }

    /// Split the 2 MiB leaf `pde` of `region` into a page table with the same protections.
    fn split(
        &mut self,
        mem: &mut GuestMemory,
        l: &Layout,
        region: u64,
        pde: u64,
    ) -> Result<u64, PtError> {
        let page = pool_page(l, self.used).ok_or(PtError::NoPool)?;
        self.used += 1;
        let flags = pde & (P | RW | US | A | D | NX);
        let mut bytes = vec![0u8; 4096];
        for (i, e) in bytes.chunks_exact_mut(8).enumerate() {
            e.copy_from_slice(&((region + i as u64 * 4096) | flags).to_le_bytes());
        }
        mem.write_raw(page, &bytes).map_err(|_| PtError::Memory)?;
        push_range(&mut self.touched, page, 512);
        push_range(&mut self.pending, page, 512);
        let pde_addr = l.tables + 8 * (region >> 21);
        self.write(mem, pde_addr, page | P | RW | US | A)?;
        Ok(page)
    }

    /// Map the guest-virtual range `virt..virt+len` onto guest-physical `phys..` with 2 MiB
    /// pages, read-write, executable only with `exec` (`remapping`, `executable_remapping`).
    /// All three must be 2 MiB aligned and `virt` above the identity-mapped memory, below
    /// 128 TiB. The page-directory-pointer tables and page directories come from the pool.
    /// Before the vCPU first runs only (nothing is queued for it).
    pub fn map_alias(
        &mut self,
        mem: &mut GuestMemory,
        l: &Layout,
        virt: u64,
        phys: u64,
        len: u64,
        exec: bool,
    ) -> Result<(), PtError> {
        let table = |pt: &mut Self, mem: &mut GuestMemory, entry: u64| -> Result<u64, PtError> {
            let e = mem.read_raw_u64(entry);
            if e & P != 0 {
                return Ok(e & ADDR);
            }
            let page = pool_page(l, pt.used).ok_or(PtError::NoPool)?;
            pt.used += 1;
            mem.write_raw(page, &[0u8; 4096])
                .map_err(|_| PtError::Memory)?;
            mem.write_raw(entry, &(page | P | RW | US | A).to_le_bytes())
                .map_err(|_| PtError::Memory)?;
            Ok(page)
        };
        let flags = P | RW | US | A | D | PS | if exec { 0 } else { NX };
        let mut off = 0;
        while off < len {
            let v = virt + off;
            let pdpt = table(self, mem, layout::PML4 + 8 * ((v >> 39) & 511))?;
            let pd = table(self, mem, pdpt + 8 * ((v >> 30) & 511))?;
            mem.write_raw(
                pd + 8 * ((v >> 21) & 511),
                &((phys + off) | flags).to_le_bytes(),
            )
            .map_err(|_| PtError::Memory)?;
            off += MB2;
        }
        Ok(())
    }

    /// Give `start..end` (page aligned, user memory) the protection `prot`. Entries already
    /// right are left alone (nothing queued).
    pub fn set_range(
        &mut self,
        mem: &mut GuestMemory,
        l: &Layout,
        start: u64,
        end: u64,
        prot: u32,
    ) -> Result<(), PtError> {
        let flags = leaf_flags(prot);
        let mut a = start;
        while a < end {
            let region = a & !(MB2 - 1);
            let rend = (region + MB2).min(end);
            let pde_addr = l.tables + 8 * (region >> 21);
            let pde = mem.read_raw_u64(pde_addr);
            let special = region == 0 || region == guard_region(l);
            if a == region && rend == region + MB2 && !special {
                let new = region | flags | PS;
                if pde != new {
                    self.write(mem, pde_addr, new)?;
                }
            } else {
                let pt = if pde & PS != 0 {
                    self.split(mem, l, region, pde)?
                } else {
                    pde & ADDR
                };
                let mut p = a;
                while p < rend {
                    let ea = pt + 8 * ((p >> 12) & 511);
                    let new = if p == l.guard_page { 0 } else { p | flags };
                    if mem.read_raw_u64(ea) != new {
                        self.write(mem, ea, new)?;
                    }
                    p += 4096;
                }
            }
            a = rend;
        }
        Ok(())
    }

    /// Before the guest runs on at `rip`: when entries are pending, write the batch the CPL0
    /// routine applies and return where the guest must go instead ([`layout::PT_TRIGGER`]);
    /// None when nothing is pending.
    pub fn redirect(&mut self, mem: &mut GuestMemory, rip: u64) -> Option<u64> {
        if self.pending.is_empty() {
            return None;
        }
        let mut list = std::mem::take(&mut self.pending);
        list.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, n) in list {
            if let Some(last) = merged.last_mut() {
                if a <= last.0 + 8 * last.1 {
                    let end = (a + 8 * n).max(last.0 + 8 * last.1);
                    last.1 = (end - last.0) / 8;
                    continue;
                }
            }
            merged.push((a, n));
        }
        if merged.len() > layout::PT_BATCH_MAX {
            // Whole pages instead: at most one entry per page-table page.
            let mut pages: Vec<(u64, u64)> = merged
                .iter()
                .flat_map(|&(a, n)| {
                    let first = a & !0xFFF;
                    let last = (a + 8 * n - 1) & !0xFFF;
                    (first..=last).step_by(4096).map(|p| (p, 512))
                })
                .collect();
            pages.dedup();
            merged = pages;
        }
        let mut b = Vec::with_capacity(16 + 16 * merged.len());
        b.extend_from_slice(&(merged.len() as u64).to_le_bytes());
        b.extend_from_slice(&rip.to_le_bytes());
        for (a, n) in merged {
            b.extend_from_slice(&a.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
        }
        mem.write_raw(layout::PT_BATCH, &b).ok()?;
        Some(layout::PT_TRIGGER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::write_system_tables;

    fn setup() -> (GuestMemory, Layout) {
        let l = Layout::new(64 << 20, 2 << 20).unwrap();
        let mut m = GuestMemory::new_shared(64 << 20).unwrap();
        write_system_tables(&mut m, &l, false).unwrap();
        (m, l)
    }

    #[test]
    fn defaults_are_rw_nx_and_stubs_rx() {
        let (m, l) = setup();
        assert_eq!(prot_at(&m, &l, 0x400000), PROT_READ | PROT_WRITE);
        assert_eq!(prot_at(&m, &l, l.stack_top - 8), PROT_READ | PROT_WRITE);
        assert_eq!(prot_at(&m, &l, l.guard_page), 0);
        assert_eq!(prot_at(&m, &l, layout::USER_STUBS), PROT_READ | PROT_EXEC);
        assert_eq!(prot_at(&m, &l, layout::IO_AREA), PROT_READ | PROT_WRITE);
        assert_eq!(prot_at(&m, &l, 0), 0);
        // User memory from USER_BASE, in the low page table.
        assert_eq!(prot_at(&m, &l, layout::USER_BASE), PROT_READ | PROT_WRITE);
        assert_eq!(
            prot_at(&m, &l, layout::USER_BASE - 1),
            PROT_READ | PROT_WRITE
        );
    }

    #[test]
    fn low_segments_use_the_low_table_and_tables_stay_supervisor() {
        let (mut m, l) = setup();
        let mut pt = PageTables::default();
        pt.set_range(&mut m, &l, 0x100000, 0x102000, PROT_READ | PROT_EXEC)
            .unwrap();
        // Region 0 is never split from the pool: its table is the low one.
        assert_eq!(pt.pool_used(), 0);
        assert_eq!(prot_at(&m, &l, 0x100000), PROT_READ | PROT_EXEC);
        assert_eq!(prot_at(&m, &l, 0x102000), PROT_READ | PROT_WRITE);
        // The system pages below keep their supervisor entries.
        let e = m.read_raw_u64(layout::PT_LOW + 8 * (layout::USER_BASE / 4096 - 1));
        assert_eq!(e & US, US, "the I/O area's last page is user memory");
        assert_eq!(
            m.read_raw_u64(layout::PT_LOW + 8 * (layout::GDT / 4096)) & US,
            0
        );
        // The page-table area: one supervisor, non-executable 2 MiB leaf.
        let pde = m.read_raw_u64(l.tables + 8 * (l.tables >> 21));
        assert_eq!(pde & (P | RW | US | PS | NX), P | RW | PS | NX);
        assert_eq!(pde & ADDR, l.tables);
        // Split tables come from it first.
        pt.set_range(&mut m, &l, 0x401000, 0x402000, PROT_READ)
            .unwrap();
        let gibs = l.mem_size.div_ceil(1 << 30);
        assert_eq!(pool_page(&l, 0), Some(l.tables + gibs * 4096));
        let pde = m.read_raw_u64(l.tables + 8 * 2);
        assert_eq!(pde & ADDR, l.tables + gibs * 4096);
    }

    #[test]
    fn split_and_whole_regions() {
        let (mut m, l) = setup();
        let mut pt = PageTables::default();
        pt.set_range(&mut m, &l, 0x401000, 0x403000, PROT_READ | PROT_EXEC)
            .unwrap();
        assert_eq!(pt.pool_used(), 1);
        assert_eq!(prot_at(&m, &l, 0x400000), PROT_READ | PROT_WRITE);
        assert_eq!(prot_at(&m, &l, 0x401000), PROT_READ | PROT_EXEC);
        assert_eq!(prot_at(&m, &l, 0x402fff), PROT_READ | PROT_EXEC);
        assert_eq!(prot_at(&m, &l, 0x403000), PROT_READ | PROT_WRITE);
        pt.set_range(&mut m, &l, 0x600000, 0x800000, 0).unwrap();
        assert_eq!(prot_at(&m, &l, 0x600000), 0);
        assert_eq!(pt.pool_used(), 1);
        // Nothing changes: nothing queued.
        let mut again = PageTables::default();
        again.set_range(&mut m, &l, 0x600000, 0x800000, 0).unwrap();
        assert!(!again.has_pending());
        let to = pt.redirect(&mut m, 0x1234).unwrap();
        assert_eq!(to, layout::PT_TRIGGER);
        assert_eq!(m.read_raw_u64(layout::PT_BATCH + 8), 0x1234);
        assert!(m.read_raw_u64(layout::PT_BATCH) >= 2);
        assert!(!pt.has_pending());
        assert_eq!(pt.redirect(&mut m, 0x1234), None);
        // A reset queues everything touched since the freeze again.
        let mut fresh = PageTables::with_pool_used(0);
        fresh.after_reset(&pt);
        assert!(fresh.has_pending());
    }

    #[test]
    fn describe_lists_runs() {
        let (mut m, l) = setup();
        let mut pt = PageTables::default();
        pt.set_range(&mut m, &l, 0x401000, 0x403000, PROT_READ | PROT_EXEC)
            .unwrap();
        let d = describe(&m, &l);
        assert_eq!(d[0], "pagetables: 0x100000-0x200000 rw- 4K (256 pages)");
        assert_eq!(d[1], "pagetables: 0x200000-0x400000 rw- 2M (1 pages)");
        assert_eq!(d[2], "pagetables: 0x400000-0x401000 rw- 4K (1 pages)");
        assert_eq!(d[3], "pagetables: 0x401000-0x403000 r-x 4K (2 pages)");
        // The page-table area is not user memory: never listed.
        assert!(!d.iter().any(|s| s.contains(&format!("{:#x}-", l.tables))));
        assert!(d
            .iter()
            .any(|s| s.contains(&format!("{:#x}-", l.guard_page)) && s.contains(" --- ")));
    }

    #[test]
    fn pool_runs_out_cleanly() {
        let (mut m, l) = setup();
        let mut pt = PageTables::default();
        let mut r = Ok(());
        let mut region = 0x400000;
        while r.is_ok() && region + MB2 < l.input_area {
            r = pt.set_range(&mut m, &l, region, region + 0x1000, 0);
            region += MB2;
        }
        // 64 MiB: fewer regions than pool pages, so every split worked.
        assert!(r.is_ok());
        assert!(pool_page(&l, 10_000).is_none());
    }
}
