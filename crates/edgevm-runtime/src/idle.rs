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
//!
//! With `free_idle_image` (and a snapshot file, which every start of such a program writes or
//! starts from), once every request VM is gone the frozen image goes too: its memory is
//! given back and the program holds no guest memory at all. The next request loads the
//! image back from the snapshot file on its own thread (snapshot.rs; if the file is no
//! longer valid, e.g. the binary changed, the program boots again on a blocking thread) and
//! then forks its VM as above.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::pool::{Program, VmPool};
use crate::request::ServeError;
use crate::vm::Frozen;
use crate::watcher::Watcher;

/// A ready program's frozen image, which `free_idle_image` may free and a request bring back.
pub(crate) struct ImageSlot(Mutex<Option<Arc<Frozen>>>);

impl ImageSlot {
    pub(crate) fn new(f: Arc<Frozen>) -> ImageSlot {
        ImageSlot(Mutex::new(Some(f)))
    }

    /// The image, if it is in memory.
    pub(crate) fn get(&self) -> Option<Arc<Frozen>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

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

/// The programs with `free_idle_vms_after`.
static IDLE: Watcher = Watcher::new("edgevm-idle", "idle request VMs are kept", |w| {
    for p in w.live() {
        p.free_idle_vms();
    }
});

impl Program {
    /// Let the watcher free this program's request VMs when it is idle (once ready; only
    /// with `free_idle_vms_after`).
    pub(crate) fn watch_idle(self: &Arc<Self>) {
        if self.settings.free_idle_vms_after.is_some() {
            IDLE.add(self);
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
        if r.resident() == 0 && self.settings.free_idle_image {
            self.free_image(pool, after);
        }
        if freed > 0 {
            // KVM VMs made ahead at boot and not used go too (a refill makes its own).
            pool.shells.close();
            r.freed.fetch_add(freed, Ordering::Relaxed);
            tracing::debug!(
                "Program '{}': {freed} idle request VM(s) freed ({} left)",
                self.name,
                r.resident()
            );
        }
    }

    /// Every request VM is gone: free the frozen image too, if the program's snapshot file
    /// holds it (written or started from by this program).
    fn free_image(&self, pool: &VmPool, after: Duration) {
        let s = &self.stats;
        let on_disk = s.snapshot_writes.load(Ordering::Relaxed)
            + s.snapshot_starts.load(Ordering::Relaxed)
            + s.images_reloaded.load(Ordering::Relaxed)
            > 0;
        let mut slot = pool.frozen.0.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: a request that just loaded the image back (and is forking its VM)
        // made the program used again.
        let last = self.residency.last_used_ms.load(Ordering::Relaxed);
        if !on_disk
            || slot.is_none()
            || self.residency.resident() > 0
            || now_ms().saturating_sub(last) < after.as_millis() as u64
        {
            return;
        }
        *slot = None;
        s.image_resident.store(0, Ordering::Relaxed);
        s.memory_image_bytes.store(0, Ordering::Relaxed);
        s.images_freed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("Program '{}': idle frozen image freed", self.name);
    }

    /// The image back in memory (a request needs a VM and the image was freed): from the
    /// snapshot file (unless `tried`: found unusable already), else by booting the program
    /// again. Runs on a blocking thread.
    fn reload_image(
        &self,
        pool: &VmPool,
        tried: bool,
    ) -> Result<Arc<Frozen>, crate::error::BootError> {
        let mut slot = pool.frozen.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = &*slot {
            return Ok(f.clone());
        }
        let mut settings = self.settings.clone();
        self.load_binary(&mut settings)?;
        let loaded = (!tried).then(|| self.load_snapshot(&settings)).flatten();
        let frozen = match loaded {
            Some(f) => f,
            None => {
                let f = self.boot_and_freeze(&settings, &None)?;
                self.write_snapshot(&f, &settings);
                f
            }
        };
        self.image_back(&frozen);
        *slot = Some(frozen.clone());
        Ok(frozen)
    }

    /// [`Program::reload_image`]'s snapshot load on the calling thread, the request's HTTP
    /// worker, as a cold start does (`Program::start_here`, program_boot.rs): no hand-off to
    /// a blocking thread and back. None when the program's binary is not a local file, when
    /// another request is bringing the image back (this one then waits for it on a blocking
    /// thread), or when the file is not usable (`tried` is then set: said and counted here,
    /// the blocking thread boots without trying it again).
    fn reload_image_here(&self, pool: &VmPool, tried: &mut bool) -> Option<Arc<Frozen>> {
        if !self.starts_here() {
            return None;
        }
        let mut slot = match pool.frozen.0.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if let Some(f) = &*slot {
            return Some(f.clone());
        }
        let mut settings = self.settings.clone();
        let frozen = match self.load_snapshot_unread(&settings) {
            Some(f) => f,
            None => {
                // A failure to read the binary is the blocking thread's to report.
                self.load_binary(&mut settings).ok()?;
                match self.load_snapshot(&settings) {
                    Some(f) => f,
                    None => {
                        *tried = true;
                        return None;
                    }
                }
            }
        };
        self.image_back(&frozen);
        *slot = Some(frozen.clone());
        Some(frozen)
    }

    /// The image is in memory again: the statistics say so.
    fn image_back(&self, frozen: &Frozen) {
        let s = &self.stats;
        s.image_resident.store(1, Ordering::Relaxed);
        s.memory_image_bytes
            .store(frozen.image.backing_bytes(), Ordering::Relaxed);
        s.images_reloaded.fetch_add(1, Ordering::Relaxed);
        self.residency.touch();
    }

    /// No VM is free: if some were freed while the program was idle, fork one back into the
    /// pool (the request then waits in line for a VM as usual); a freed image comes back
    /// first, on a blocking thread.
    pub(crate) async fn refill(self: &Arc<Self>, pool: &Arc<VmPool>) -> Result<(), ServeError> {
        let r = &self.residency;
        let Some(index) = r
            .free_indices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        else {
            return Ok(());
        };
        let mut tried = false;
        let frozen = match pool
            .frozen
            .get()
            .or_else(|| self.reload_image_here(pool, &mut tried))
        {
            Some(f) => Ok(f),
            None => {
                let (me, p) = (self.clone(), pool.clone());
                match tokio::task::spawn_blocking(move || me.reload_image(&p, tried)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("internal error while loading the program's image".into()),
                }
            }
        };
        let frozen = match frozen {
            Ok(f) => f,
            Err(e) => {
                r.free_indices
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(index);
                tracing::error!("{}: {e}", self.name);
                return Err(ServeError::ProgramUnavailable(e));
            }
        };
        match self.fork(&frozen, &pool.storage, &pool.shells, index) {
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
