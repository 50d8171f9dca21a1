//! Idle programs give their request VMs back (`free_idle_vms_after`).
//!
//! A node hosts many programs, most of them idle most of the time; each idle request VM holds
//! a KVM VM and its vCPU (kernel memory, two file descriptors, a few mappings: see
//! docs/BENCHMARKS.md, "Many programs"). When a program with `free_idle_vms_after` has not
//! taken a VM for that long, one watcher thread (`edgevm-idle`, shared by all programs) frees
//! its idle request VMs, down to zero. The frozen image stays (forking from it is what makes
//! the next request cheap) and so does the storage VM (its memory is the program's state).
//! The next request that finds no free VM while fewer than `concurrency` exist forks one from
//! the image on its own thread (a fork: ~0.4 ms here, against a boot's ~4 ms for hello) and
//! then waits in line like any request.
//!
//! Each VM keeps its index (`vcpureqid()`): a freed VM's index goes back to a free list and
//! the next fork takes it, so the VMs alive at one time always have different indices below
//! `concurrency`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::pool::{Program, VmPool};
use crate::request::ServeError;

/// How often the watcher looks at the programs.
const PERIOD: Duration = Duration::from_millis(250);

/// Which request VMs of a program exist, and when one was last used.
#[derive(Default)]
pub(crate) struct Residency {
    /// Request VMs that exist (idle or running).
    resident: AtomicU32,
    /// Milliseconds since [`epoch`] when a request last took or gave back a VM.
    last_used_ms: AtomicU64,
    /// Indices of freed VMs, for the next forks.
    free_indices: Mutex<Vec<u32>>,
    /// VMs freed because the program was idle.
    freed: AtomicU64,
    /// VMs forked again after that.
    refilled: AtomicU64,
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Residency {
    /// A request VM was made.
    pub(crate) fn made(&self) {
        self.resident.fetch_add(1, Ordering::Relaxed);
    }

    /// A request VM was dropped (not to come back).
    pub(crate) fn dropped(&self) {
        self.resident.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request took or gave back a VM now.
    pub(crate) fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Request VMs that exist now.
    pub(crate) fn resident(&self) -> u32 {
        self.resident.load(Ordering::Relaxed)
    }

    /// (freed while idle, forked again) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.freed.load(Ordering::Relaxed),
            self.refilled.load(Ordering::Relaxed),
        )
    }
}

/// The programs the watcher looks after.
fn watched() -> &'static Mutex<Vec<Weak<Program>>> {
    static W: OnceLock<Mutex<Vec<Weak<Program>>>> = OnceLock::new();
    W.get_or_init(|| {
        let r = std::thread::Builder::new()
            .name("edgevm-idle".into())
            .spawn(watch_loop);
        if let Err(e) = r {
            tracing::error!("no idle watcher thread ({e}): idle request VMs are kept");
        }
        Mutex::new(Vec::new())
    })
}

fn watch_loop() {
    loop {
        std::thread::sleep(PERIOD);
        let programs: Vec<Arc<Program>> = {
            let mut w = watched().lock().unwrap_or_else(|e| e.into_inner());
            w.retain(|p| p.strong_count() > 0);
            w.iter().filter_map(Weak::upgrade).collect()
        };
        for p in programs {
            p.free_idle_vms();
        }
    }
}

impl Program {
    /// Let the watcher free this program's request VMs when it is idle (once ready; only
    /// with `free_idle_vms_after`).
    pub(crate) fn watch_idle(self: &Arc<Self>) {
        if self.settings.free_idle_vms_after.is_some() {
            watched()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(self));
        }
    }

    /// Free the idle request VMs if no request took one for `free_idle_vms_after`.
    pub(crate) fn free_idle_vms(&self) {
        let Some(after) = self.settings.free_idle_vms_after else {
            return;
        };
        let Some(pool) = self.pool.get() else {
            return;
        };
        let r = &self.residency;
        let last = r.last_used_ms.load(Ordering::Relaxed);
        if self.retired.load(Ordering::SeqCst)
            || now_ms().saturating_sub(last) < after.as_millis() as u64
        {
            return;
        }
        let mut freed = 0;
        // Taking a permit first keeps permits and idle VMs consistent for any request that
        // comes in meanwhile (it finds no permit and forks a VM of its own).
        while self.waiting.load(Ordering::SeqCst) == 0 {
            let Ok(permit) = pool.permits.try_acquire() else {
                break;
            };
            permit.forget();
            let Some(vm) = pool.take() else {
                pool.permits.add_permits(1);
                break;
            };
            r.free_indices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(vm.index());
            drop(vm);
            r.dropped();
            freed += 1;
        }
        if freed > 0 {
            // KVM VMs made ahead at boot and not used go too (a refill makes its own).
            pool.shells
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            r.freed.fetch_add(freed, Ordering::Relaxed);
            tracing::debug!(
                "Program '{}': {freed} idle request VM(s) freed ({} left)",
                self.name,
                r.resident()
            );
        }
    }

    /// No VM is free: if some were freed while the program was idle, fork one back into the
    /// pool (the request then waits in line for a VM as usual).
    pub(crate) fn refill(&self, pool: &VmPool) -> Result<(), ServeError> {
        let r = &self.residency;
        let Some(index) = r
            .free_indices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        else {
            return Ok(());
        };
        match self.fork(&pool.frozen, &pool.storage, &pool.shells, index) {
            Ok(vm) => {
                r.refilled.fetch_add(1, Ordering::Relaxed);
                pool.put(vm);
                Ok(())
            }
            Err(e) => {
                r.free_indices
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(index);
                tracing::error!("{}: {e}", self.name);
                Err(ServeError::ProgramError(e.to_string()))
            }
        }
    }
}
