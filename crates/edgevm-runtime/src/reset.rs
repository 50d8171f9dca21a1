//! Resetting a request VM after a request: the hot-page policy ([`HotPages`]), the reset by
//! dirty log, and the full reset after a failure. See docs/DESIGN.md, "Copy-on-write and
//! reset".

use std::collections::HashMap;

use edgevm_abi::linux::Output;
use edgevm_kvm::{PageSet, PAGE_SIZE};

use crate::request_vm::{FailureKind, RequestFailure, RequestVm};
use crate::vm::ForkedVm;

/// Stack below the frozen RSP that request handlers are expected to use on every request;
/// reset by copying back even when other pages are dropped.
const HOT_STACK: u64 = 64 << 10;

/// At most this many hot pages (dirtied by two requests in a row: 2 MiB) are left writable and
/// copied back after every request; beyond it every page is write-protected again.
pub(crate) const MAX_KEPT_PAGES: usize = 512;

/// A hot page that came back unchanged this many requests in a row is protected again.
pub(crate) const IDLE_HOT_LIMIT: u8 = 3;

/// Which pages stay writable between requests. Pages dirtied by this request and the previous
/// one are "hot": they stay writable (no write-protection fault next time) and are copied back
/// after every request. A hot page is reported dirty whether or not it was written, so one that
/// came back unchanged (found by the resets' comparison with the image) for [`IDLE_HOT_LIMIT`]
/// requests in a row is write-protected again. At most [`MAX_KEPT_PAGES`] are kept.
#[derive(Debug, Default)]
pub(crate) struct HotPages {
    /// The dirty log of the previous request.
    prev_dirty: PageSet,
    /// Hot pages that came back unchanged, and for how many requests in a row.
    idle: HashMap<usize, u8>,
}

impl HotPages {
    /// Of the pages `dirty` (this request's log), the ones to keep writable.
    pub(crate) fn choose(&mut self, dirty: &PageSet) -> PageSet {
        let idle = &mut self.idle;
        let mut k = dirty.intersection(&self.prev_dirty);
        k.retain(|page| idle.get(&page).is_none_or(|&c| c < IDLE_HOT_LIMIT));
        idle.retain(|&p, _| k.contains(p));
        if k.len() <= MAX_KEPT_PAGES {
            k
        } else {
            idle.clear();
            PageSet::new()
        }
    }

    /// This request's dirty log becomes the next request's "previous" one.
    pub(crate) fn set_dirty(&mut self, dirty: PageSet) {
        self.prev_dirty = dirty;
    }

    /// The last request's dirty log.
    pub(crate) fn dirty(&self) -> &PageSet {
        &self.prev_dirty
    }

    /// After the reset: of the `kept` pages, `unchanged` (in page order) came back as in the
    /// image; count how long each has been idle.
    pub(crate) fn record(&mut self, kept: &PageSet, unchanged: &[usize]) {
        for page in kept.pages() {
            let c = self.idle.entry(page).or_insert(0);
            *c = if unchanged.binary_search(&page).is_ok() {
                c.saturating_add(1)
            } else {
                0
            };
        }
    }

    /// Forget everything (after a full reset).
    pub(crate) fn clear(&mut self) {
        self.prev_dirty.clear();
        self.idle.clear();
    }

    /// Hot pages now.
    pub(crate) fn len(&self) -> usize {
        self.idle.len()
    }
}

impl RequestVm {
    /// After a successful request: reset (ephemeral) and enforce memory limits.
    /// Returns (pages reset, whether the reset was full).
    pub(crate) fn after_request(&mut self) -> Result<(usize, bool), RequestFailure> {
        self.inv.vm.linux.set_request_limit(None);
        // Hot pages (see HotPages) stay writable.
        let hot = &mut self.hot;
        let log = self
            .inv
            .vm
            .machine
            .cpu
            .take_dirty_log_keeping(|d| hot.choose(d));
        let (dirty, kept) = match log {
            Ok(x) => x,
            Err(e) => {
                return Err(RequestFailure {
                    message: e.to_string(),
                    kind: FailureKind::Other,
                })
            }
        };
        // What this request dirtied is the next request's "previous" log.
        self.hot.set_dirty(dirty);
        let dirty = self.hot.dirty();
        let dirtied = dirty.len() as u64 * PAGE_SIZE as u64;
        if dirtied > self.inv.settings.max_request_memory {
            return Err(RequestFailure {
                message: format!(
                    "Backend VM memory exception: the request wrote {} MiB, over max_request_memory ({} MiB)",
                    dirtied >> 20,
                    self.inv.settings.max_request_memory >> 20
                ),
                kind: FailureKind::Memory,
            });
        }
        if !self.ephemeral {
            return Ok((0, false));
        }
        let hot = if self.inv.settings.keep_working_memory {
            for &(w, d) in dirty.words() {
                if let Some(x) = self.working.get_mut(w as usize) {
                    *x |= d;
                }
            }
            // Every page is copied back, none dropped.
            0..u64::MAX
        } else {
            // The handler's stack frames (below the frozen RSP) are written by every request:
            // copy those back, drop everything else.
            let rsp = self.frozen.regs.rsp;
            rsp.saturating_sub(HOT_STACK)..rsp.saturating_add(4096)
        };
        let reset = self.inv.vm.machine.mem.reset_pages(
            &self.frozen.image,
            dirty,
            hot,
            &kept,
            &mut self.unchanged,
        );
        let pages = match reset {
            Ok((copied, dropped)) => copied + dropped,
            Err(e) => {
                self.unchanged.clear();
                return Err(RequestFailure {
                    message: e.to_string(),
                    kind: FailureKind::Other,
                });
            }
        };
        // Idle counts for the next request's choice of hot pages (`unchanged` is in page
        // order, a subset of `kept`).
        self.hot.record(&kept, &self.unchanged);
        self.unchanged.clear();
        let prev = std::mem::replace(&mut self.inv.vm.linux, self.frozen.linux.clone());
        self.inv.vm.linux.reset_from(&prev);
        self.inv.vm.regex.restore(&self.frozen.regex);
        self.back_to_frozen_pause();
        let limit = self.inv.settings.limit_workmem_after_req;
        if self.inv.settings.keep_working_memory && limit > 0 {
            let working: u64 = self
                .working
                .iter()
                .map(|w| u64::from(w.count_ones()))
                .sum::<u64>()
                * PAGE_SIZE as u64;
            if working > limit {
                self.full_reset();
                return Ok((pages, true));
            }
        }
        Ok((pages, false))
    }

    /// Drop every private page and restore the frozen process state. A VM whose vCPU still
    /// holds a failed request's half-done instruction is replaced by a fresh one.
    pub fn full_reset(&mut self) {
        self.full_resets += 1;
        if self.inv.vm.stale {
            match ForkedVm::from_frozen(&self.frozen) {
                Ok(mut vm) => {
                    vm.printer
                        .log("the failed request left an unfinished I/O instruction; VM replaced");
                    self.inv.entry = vm.entry_state(self.frozen.use_xsave);
                    self.inv.vm = vm;
                }
                Err(e) => self
                    .inv
                    .vm
                    .printer
                    .log(&format!("cannot replace the VM after a failure: {e}")),
            }
        }
        let _ = self.inv.vm.machine.cpu.take_dirty_log();
        self.hot.clear();
        if let Err(e) = self.inv.vm.machine.mem.discard_private() {
            self.inv.vm.printer.log(&format!("full reset failed: {e}"));
        }
        self.working.iter_mut().for_each(|w| *w = 0);
        let prev = std::mem::replace(&mut self.inv.vm.linux, self.frozen.linux.clone());
        self.inv.vm.linux.reset_from(&prev);
        self.inv.vm.regex.restore(&self.frozen.regex);
        self.back_to_frozen_pause();
    }

    /// An event loop's memory is the frozen image again: the next request resumes it from
    /// the frozen paused point.
    fn back_to_frozen_pause(&mut self) {
        // The process state is the frozen one again: the workers' stacks are unmapped.
        if let Some(s) = self.inv.vm.smp.as_mut() {
            s.stacks = None;
        }
        self.inv.live_paused = false;
        self.inv.broken = false;
        self.inv.vm.paused = self.frozen.paused;
    }
}
