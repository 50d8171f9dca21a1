//! The emulated process state in a snapshot file (see edgevm-runtime's snapshot.rs): what a
//! frozen program's [`LinuxState`] holds beyond its configuration, which the loader supplies
//! again from the current settings.

use std::collections::BTreeMap;

use super::fds::FdTable;
use super::threads::Threads;
use super::{LinuxConfig, LinuxState, MmapArea};
use crate::layout::Layout;
use crate::snapcodec::{DecodeError, Reader, Writer};

impl LinuxState {
    /// Encode the state of a frozen program. Refused (with the reason) when it holds
    /// something a file cannot carry: open host files (their descriptors and offsets belong
    /// to this process), a descriptor table other than stdin/stdout/stderr as at the start,
    /// or a working directory other than the configured one.
    pub fn save(&self, w: &mut Writer) -> Result<(), String> {
        if self.open_files() > 0 {
            return Err(format!(
                "the program has {} file(s) open at wait_for_requests(): open host files cannot be snapshotted",
                self.open_files()
            ));
        }
        if self.thread_count() > 1 {
            return Err(format!(
                "the program has {} threads at wait_for_requests(): only single-threaded programs can be snapshotted",
                self.thread_count()
            ));
        }
        if !self.fds.is_initial() {
            return Err("the program changed its standard descriptors (dup2/close of 0-2): they cannot be snapshotted".into());
        }
        if self.cwd != super::sandbox_of(&self.cfg).1 {
            return Err(
                "the program changed its working directory: it cannot be snapshotted".into(),
            );
        }
        w.u64(self.brk_start).u64(self.brk).u64(self.brk_high);
        let m = &self.mmap;
        w.u64(m.bottom).u64(m.low_water).u64(m.top);
        w.u64(m.free.len() as u64);
        for (&s, &l) in &m.free {
            w.u64(s).u64(l);
        }
        w.u64(m.reserved.len() as u64);
        for (&s, &l) in &m.reserved {
            w.u64(s).u64(l);
        }
        w.u64(self.image_bytes);
        w.u64(self.sigactions.len() as u64);
        for (&sig, act) in &self.sigactions {
            w.u64(sig).bytes(act);
        }
        let main = self.threads.current();
        w.u64(main.sigmask)
            .u64(main.clear_tid)
            .u64(self.robust_list)
            .u64(self.rseq);
        w.u64(match self.cpl0_syscalls {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        });
        Ok(())
    }

    /// Encode the page protections of the frozen image `mem` (after [`LinuxState::save`]).
    pub fn save_protections(&self, mem: &edgevm_kvm::GuestMemory, w: &mut Writer) {
        let runs = crate::paging::protection_runs(mem, &self.layout);
        w.u64(runs.len() as u64);
        for (s, e, p) in runs {
            w.u64(s).u64(e).u64(u64::from(p));
        }
    }

    /// Decode what [`LinuxState::save_protections`] wrote: (start, end, PROT_* bits) runs
    /// for [`LinuxState::protect_segments`] on the fresh page tables of the loaded image.
    /// Ranges outside user memory are refused.
    pub fn read_protections(&self, r: &mut Reader) -> Result<Vec<(u64, u64, u32)>, DecodeError> {
        let mut runs = Vec::new();
        for _ in 0..r.count(24)? {
            let (s, e, p) = (r.u64()?, r.u64()?, r.u64()?);
            let tables = self.layout.tables;
            if s < crate::layout::USER_BASE
                || e > self.layout.mem_size
                || (s < tables + crate::layout::TABLES_SIZE && e > tables)
                || s >= e
                || (s | e) % 4096 != 0
                || p > 7
            {
                return Err(DecodeError(format!("bad protection range {s:#x}..{e:#x}")));
            }
            runs.push((s, e, p as u32));
        }
        Ok(runs)
    }

    /// Decode what [`LinuxState::save`] wrote, for a program with this layout and
    /// configuration (its files read-only, as in a frozen program). Addresses outside the
    /// layout are refused.
    pub fn restore(layout: Layout, cfg: LinuxConfig, r: &mut Reader) -> Result<Self, DecodeError> {
        let top = layout.mem_size;
        let addr = |r: &mut Reader, what: &str| -> Result<u64, DecodeError> {
            let v = r.u64()?;
            if v > top {
                return Err(DecodeError(format!(
                    "{what} {v:#x} is outside the address space"
                )));
            }
            Ok(v)
        };
        let brk_start = addr(r, "brk start")?;
        let brk = addr(r, "brk")?;
        let brk_high = addr(r, "brk high")?;
        let bottom = addr(r, "mmap bottom")?;
        let low_water = addr(r, "mmap low water")?;
        let mtop = addr(r, "mmap top")?;
        if !(brk_start <= brk && brk <= brk_high && low_water <= bottom && bottom <= mtop) {
            return Err(DecodeError("inconsistent heap bounds".into()));
        }
        let mut free = BTreeMap::new();
        for _ in 0..r.count(16)? {
            let s = addr(r, "free range")?;
            let l = r.u64()?;
            if s.checked_add(l).is_none_or(|e| e > mtop) {
                return Err(DecodeError("free range outside the mmap area".into()));
            }
            free.insert(s, l);
        }
        let mut reserved = BTreeMap::new();
        for _ in 0..r.count(16)? {
            let s = addr(r, "reserved range")?;
            let l = r.u64()?;
            if s < bottom || s.checked_add(l).is_none_or(|e| e > mtop) {
                return Err(DecodeError("reserved range outside the mmap area".into()));
            }
            reserved.insert(s, l);
        }
        let image_bytes = r.u64()?;
        let mut sigactions = BTreeMap::new();
        for _ in 0..r.count(16)? {
            let sig = r.u64()?;
            let act: [u8; 32] = r
                .bytes()?
                .try_into()
                .map_err(|_| DecodeError("bad sigaction".into()))?;
            sigactions.insert(sig, act);
        }
        let (sigmask, clear_tid, robust_list, rseq) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let cpl0_syscalls = match r.u64()? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            v => return Err(DecodeError(format!("bad syscall mode {v}"))),
        };
        let (sandbox, cwd) = super::sandbox_of(&cfg);
        let blackout = cfg.blackout.clone();
        let mut threads = Threads::default();
        threads.current_mut().sigmask = sigmask;
        threads.current_mut().clear_tid = clear_tid;
        Ok(LinuxState {
            layout,
            cfg,
            brk_start,
            brk,
            brk_high,
            mmap: MmapArea {
                bottom,
                low_water,
                top: mtop,
                free,
                reserved,
                blackout,
            },
            image_bytes,
            sigactions,
            faults: Default::default(),
            threads,
            timers: Default::default(),
            switched: false,
            fatal: None,
            robust_list,
            rseq,
            cpl0_syscalls,
            deadline: None,
            request_limit: None,
            syscalls: 0,
            fds: FdTable::new(),
            sandbox,
            cwd,
            may_write: false,
            net_bytes: 0,
            net_base: 0,
            net_refusals: 0,
            pt: Default::default(),
            said_files_full: false,
        })
    }
}
