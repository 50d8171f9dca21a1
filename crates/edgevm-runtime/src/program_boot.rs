//! Booting a program: load its binary, boot the storage VM and the main VM, warm it up,
//! freeze it and fork the request VMs (see docs/DESIGN.md, "The path of a request").

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{BootError, StorageError};
use crate::pool::{Program, Shells, State, VmPool};
use crate::request::GuestRequest;
use crate::request_vm::{Invoker, RequestVm};
use crate::settings::{queue_timeout, ProgramSettings, WarmupSettings};
use crate::storage::StorageHandle;
use crate::vm::{BootOutcome, Frozen, MainVm};

impl Program {
    /// Boot the storage VM and start its thread.
    pub(crate) fn boot_storage(
        &self,
        settings: &ProgramSettings,
    ) -> Result<StorageHandle, StorageError> {
        let mut opts = settings.vm.clone();
        opts.storage = true;
        let mut remote = None;
        if let Some(b) = &settings.storage_binary {
            opts.binary = b.clone();
            // A storage program linked high: request VMs call its functions remotely, and its
            // VM's address space covers its image (crate::remote).
            let usual = settings.vm.memory_size();
            remote = crate::remote::check_pair(
                b,
                &settings.vm.binary,
                usual,
                settings.vm.executable_heap,
            )
            .map_err(StorageError::Remote)?;
            if let Some((_, hi)) = remote {
                opts.address_space = crate::remote::storage_address_space(usual, hi);
            }
        }
        let mut handle = crate::storage::start(opts, settings.max_storage_time, queue_timeout())?;
        handle.set_remote(remote, settings.storage_binary.clone());
        Ok(handle)
    }

    /// The boot thread: boot, or record why not.
    pub(crate) fn boot(self: Arc<Self>) {
        if let Err(e) = self.try_boot() {
            self.set_failed(e);
        }
    }

    fn try_boot(self: &Arc<Self>) -> Result<(), BootError> {
        let t0 = Instant::now();
        self.retry.begin(&self.settings.vm.program_path);
        let mut settings = self.settings.clone();
        // A snapshot written from the very file the program is read from, unchanged since,
        // starts without reading it (snapshot.rs).
        // A request found the snapshot file unusable on its own thread and said why
        // (`start_here`): boot without trying it again.
        let tried = self.snapshot_tried.swap(false, Ordering::AcqRel);
        let unread = match tried {
            true => None,
            false => self.load_snapshot_unread(&settings),
        };
        let download = match unread {
            Some(_) => None,
            None => self.load_binary(&mut settings)?,
        };
        let shells = self.prepare_shells();
        // When the boot ends (ready with its forks done, or failed) no more VMs are made ahead.
        let _close = CloseShells(shells.clone());
        let storage = if settings.storage {
            Some(self.boot_storage(&settings)?)
        } else {
            None
        };
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = storage.clone();
        let binary_size = match unread {
            Some(_) => std::fs::metadata(&settings.vm.program_path).map_or(0, |m| m.len()),
            None => settings.vm.binary.len() as u64,
        };
        self.set_boot_gauge(0, binary_size);
        // A valid snapshot file replaces the boot; a boot writes one (snapshot.rs): before
        // the program is ready when request VMs could change the image (shared memory).
        let loaded = unread.or_else(|| (!tried).then(|| self.load_snapshot(&settings))?);
        let (frozen, write) = match loaded {
            Some(f) => (f, false),
            None => (self.boot_and_freeze(&settings, &storage)?, true),
        };
        if write && settings.vm.shared_memory > 0 {
            self.write_snapshot(&frozen, &settings);
        }
        self.set_boot_gauge(1, frozen.image.backing_bytes());
        // The first VM makes the program ready; the others follow on helper threads.
        let first = self.fork(&frozen, &storage, &shells, 0)?;
        if let Some(mode) = &settings.server {
            let t = crate::tcp_server::TcpServer::start(
                &self.name,
                mode,
                frozen.clone(),
                settings.request.clone(),
                storage.clone(),
                self.stats.tcp.clone(),
            )
            .map_err(BootError::Config)?;
            *self.tcp.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        }
        let pool = self.go_ready(
            t0,
            &settings,
            download,
            frozen.clone(),
            storage,
            shells,
            first,
        );
        self.fork_rest(&pool, settings.concurrency.max(1));
        if write && settings.vm.shared_memory == 0 {
            self.write_snapshot(&frozen, &settings);
        }
        Ok(())
    }

    /// Get the binary from the loader, if the program has one: the download time, if any.
    pub(crate) fn load_binary(
        &self,
        settings: &mut ProgramSettings,
    ) -> Result<Option<Duration>, BootError> {
        let Some(loader) = &settings.loader else {
            return Ok(None);
        };
        let b = (loader.0)().map_err(BootError::Load)?;
        settings.vm.binary = Arc::new(b.request);
        settings.storage_binary = b.storage.map(Arc::new);
        settings.origin = b.origin;
        settings.cached = b.cached;
        Ok(b.download_time)
    }

    /// Make the request VMs' KVM VMs while the program boots (on another CPU); the forks
    /// after the freeze then only map memory and set registers.
    fn prepare_shells(&self) -> Arc<Shells> {
        let n = self.settings.concurrency.max(1);
        let shells = Arc::new(Shells::with_budget(n));
        let sh = shells.clone();
        let size = self.settings.vm.memory_size() as usize;
        let spawned = std::thread::Builder::new()
            .name(format!("prepare:{}", self.name))
            .spawn(move || {
                // Below the boot thread's priority: the boot decides when the program is
                // ready; this only uses what CPU is left (Linux: per-thread nice).
                let tid = nix::unistd::gettid().as_raw() as libc::id_t;
                // SAFETY: plain system call on this thread's own id; failure is harmless.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) };
                sh.prepare(|| crate::vm::prepared_shell(size));
            });
        if let Err(e) = spawned {
            tracing::debug!("{}: no VM preparation thread: {e}", self.name);
        }
        shells
    }

    /// Boot the main VM to wait_for_requests(), warm it up and freeze it.
    pub(crate) fn boot_and_freeze(
        &self,
        settings: &ProgramSettings,
        storage: &Option<StorageHandle>,
    ) -> Result<Arc<Frozen>, BootError> {
        let (vm, report) = MainVm::boot_with_storage(settings.vm.clone(), storage.clone())?;
        if let BootOutcome::Exited(code) = report.outcome {
            return Err(BootError::Exited(code));
        }
        // As the reference: any registered function, or an event loop, is enough to load.
        if !vm.registered && vm.paused.is_none() {
            return Err(BootError::NoHandler);
        }
        let vm = match &self.settings.warmup {
            Some(w) => self.warm_up(vm, w, storage.clone())?,
            None => vm,
        };
        let mut f = vm.freeze()?;
        // The ELF is in the image now: the binary's bytes are not needed any more.
        f.opts.binary = Arc::default();
        Ok(Arc::new(f))
    }

    /// Whether a request may start this program from its snapshot file on its own thread
    /// ([`Program::start_here`]): a snapshot file exists, and nothing but a local file read
    /// stands before it (no download, no storage VM to boot, no TCP server to start).
    pub(crate) fn starts_here(&self) -> bool {
        let s = &self.settings;
        let local = match &s.loader {
            None => true,
            Some(l) => l.1.as_deref() == Some(s.vm.program_path.as_path()),
        };
        local
            && !s.storage
            && s.server.is_none()
            && !self.candidate.load(Ordering::Acquire)
            && s.snapshot.as_deref().is_some_and(|p| p.exists())
    }

    /// A request for a program that is not started: start it from its snapshot file right
    /// here, on the request's thread (the HTTP worker, which then runs the request in the
    /// first VM), rather than on a boot thread it would wait for — each hand-off between
    /// threads is a wake-up, a scheduling delay on a busy machine, and together they were
    /// most of a snapshot start over HTTP (docs/BENCHMARKS.md, "Snapshot start"). The load
    /// takes about as long as the request's inline time slice (`EDGEVM_INLINE_SLICE_US`).
    /// The program's other VMs are forked on a thread of their own. A file that cannot be
    /// used is logged and counted here, and the boot thread boots without trying it again.
    /// False when the program does not start this way; true when it was started (or is
    /// being started by another request).
    pub(crate) fn start_here(self: &Arc<Self>) -> bool {
        if !self.starts_here() {
            return false;
        }
        if !self.claim_start() {
            return true;
        }
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.snapshot_start_here()));
        match r {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.snapshot_tried.store(true, Ordering::Release);
                self.spawn_boot();
            }
            Ok(Err(e)) => self.set_failed(e),
            Err(_) => self.set_failed(BootError::Panicked),
        }
        true
    }

    /// [`Program::start_here`]'s start: false if the snapshot file is not usable.
    fn snapshot_start_here(self: &Arc<Self>) -> Result<bool, BootError> {
        let t0 = Instant::now();
        self.retry.begin(&self.settings.vm.program_path);
        let mut settings = self.settings.clone();
        let (frozen, download, binary_size) = match self.load_snapshot_unread(&settings) {
            Some(f) => {
                let size = std::fs::metadata(&settings.vm.program_path).map_or(0, |m| m.len());
                (f, None, size)
            }
            None => {
                let download = self.load_binary(&mut settings)?;
                match self.load_snapshot(&settings) {
                    Some(f) => (f, download, settings.vm.binary.len() as u64),
                    None => return Ok(false),
                }
            }
        };
        self.set_boot_gauge(0, binary_size);
        self.set_boot_gauge(1, frozen.image.backing_bytes());
        let n = settings.concurrency.max(1);
        // No VMs made ahead for this start: the first fork takes a spare (spare.rs), the
        // others take spares or make their own, off the request's path.
        let shells = Arc::new(Shells::with_budget(n));
        let first = match self.fork(&frozen, &None, &shells, 0) {
            Ok(v) => v,
            Err(e) => {
                shells.close();
                return Err(e);
            }
        };
        let pool = self.go_ready(t0, &settings, download, frozen, None, shells, first);
        if n == 1 {
            pool.shells.close();
            return Ok(true);
        }
        let me = self.clone();
        let p = pool.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("forks:{}", self.name))
            .spawn(move || {
                me.fork_rest(&p, n);
                p.shells.close();
            });
        if let Err(e) = spawned {
            pool.shells.close();
            tracing::error!(
                "Program '{}': cannot start a thread forking its other {} VMs: {e}",
                self.name,
                n - 1
            );
        }
        Ok(true)
    }

    /// The program is ready with its first request VM: make the pool and say so (the caller
    /// forks the rest: [`Program::fork_rest`]).
    #[allow(clippy::too_many_arguments)]
    fn go_ready(
        self: &Arc<Self>,
        t0: Instant,
        settings: &ProgramSettings,
        download: Option<Duration>,
        frozen: Arc<Frozen>,
        storage: Option<StorageHandle>,
        shells: Arc<Shells>,
        first: Box<RequestVm>,
    ) -> Arc<VmPool> {
        let n = self.settings.concurrency.max(1);
        let pool = Arc::new(VmPool {
            frozen: crate::idle::ImageSlot::new(frozen.clone()),
            storage: storage.clone(),
            shells,
            idle: Mutex::new(Vec::with_capacity(n as usize)),
            permits: tokio::sync::Semaphore::new(0),
        });
        pool.put(first);
        let h = frozen.handlers;
        self.streams_post.store(
            h.stream_post != 0 && h.post != 0 && h.request == 0,
            Ordering::Release,
        );
        let _ = self.pool.set(pool.clone());
        let ready_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ephemeral = frozen
            .ephemeral_override
            .unwrap_or(self.settings.request.ephemeral);
        let kind = match (ephemeral, self.settings.request.keep_working_memory) {
            (true, true) => " ephemeral-kwm",
            (true, false) => " ephemeral",
            _ => "",
        };
        let downloads = download
            .map(|d| format!("downloads={:.2}ms, ", d.as_secs_f64() * 1e3))
            .unwrap_or_default();
        tracing::info!(
            "Program '{}' is loaded ({}, {}, vm={n}{kind}, huge=0/0, {downloads}ready={ready_ms:.2} ms)",
            self.name,
            settings.origin,
            if settings.cached { "cached" } else { "not cached" },
        );
        self.retry.succeeded();
        self.stats.image_resident.store(1, Ordering::Relaxed);
        self.set_state(State::Ready { vms: n, ready_ms });
        self.residency.touch();
        self.watch_idle();
        pool
    }

    /// Fork one request VM (index `i`).
    pub(crate) fn fork(
        &self,
        frozen: &Arc<Frozen>,
        storage: &Option<StorageHandle>,
        shells: &Shells,
        i: u32,
    ) -> Result<Box<RequestVm>, BootError> {
        let shell = shells.take().or_else(|| {
            // A program with a snapshot file may take a spare VM (spare.rs).
            self.settings
                .snapshot
                .as_ref()
                .and_then(|_| crate::spare::take(frozen.image.size()))
        });
        let mut vm = RequestVm::new_in(
            frozen.clone(),
            self.settings.request.clone(),
            storage.clone(),
            shell,
        )
        .map_err(BootError::Fork)?;
        vm.set_index(i);
        self.residency.made();
        Ok(Box::new(vm))
    }

    /// Fork VMs 1..n into the pool, on up to as many threads as there are CPUs.
    pub(crate) fn fork_rest(self: &Arc<Self>, pool: &Arc<VmPool>, n: u32) {
        let next = Arc::new(std::sync::atomic::AtomicU32::new(1));
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get()) as u32;
        let threads = (n - 1).min(cpus);
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for t in 0..threads {
            let (me, pool, next) = (self.clone(), pool.clone(), next.clone());
            let h = std::thread::Builder::new()
                .name(format!("fork{t}:{}", self.name))
                .spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let Some(frozen) = pool.frozen.get() else {
                        break;
                    };
                    match me.fork(&frozen, &pool.storage, &pool.shells, i) {
                        Ok(vm) => pool.put(vm),
                        Err(e) => tracing::error!("{}: {e}", me.name),
                    }
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => tracing::error!("{}: cannot start a fork thread: {e}", self.name),
            }
        }
        for h in handles {
            let _ = h.join();
        }
        tracing::debug!(
            "Program '{}': {} more request VMs forked in {:.2} ms",
            self.name,
            n - 1,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }

    /// Send the warmup requests to the main VM, then put it back exactly at its
    /// wait_for_requests() point (registers and TLS), warmed.
    pub(crate) fn warm_up(
        &self,
        vm: MainVm,
        w: &WarmupSettings,
        storage: Option<StorageHandle>,
    ) -> Result<MainVm, BootError> {
        use edgevm_kvm::Vcpu;
        let regs = *vm.machine.cpu.regs();
        let (fs, gs) = (vm.machine.cpu.fs_base(), vm.machine.cpu.gs_base());
        let mut vm = vm;
        let xsave = vm.install_entry_fpu()?;
        let entry = vm.entry_state(xsave);
        let paused = vm.paused.is_some();
        let mut inv = Invoker::new(vm, entry, self.settings.request.clone(), storage);
        // An event loop runs each warmup request on to its next wait, and is frozen there.
        if paused {
            inv.paused_regs = Some(regs);
            inv.continue_loop = true;
            inv.pause_slots = true;
        }
        let headers = w
            .headers
            .iter()
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let req = GuestRequest {
            method: w.method.clone(),
            url: w.url.clone(),
            headers,
            warmup: true,
            ..Default::default()
        };
        let t = Instant::now();
        for i in 0..w.num_requests {
            if let Err(f) = inv.invoke(&req) {
                return Err(BootError::Warmup {
                    index: i + 1,
                    count: w.num_requests,
                    failure: f,
                });
            }
        }
        let mut vm = inv.vm;
        if paused {
            return Ok(vm);
        }
        *vm.machine.cpu.regs_mut() = regs;
        // The frozen state is the one before warmup: registers, and the FS and GS bases a
        // handler may have moved (arch_prctl) — every request would start with them.
        if vm.machine.cpu.fs_base() != fs {
            vm.machine.cpu.set_fs_base(fs)?;
        }
        if vm.machine.cpu.gs_base() != gs {
            vm.machine.cpu.set_gs_base(gs)?;
        }
        tracing::info!(
            "Program '{}' warmed up with {} requests in {:.2} ms",
            self.name,
            w.num_requests,
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(vm)
    }
}

/// Closes a boot's [`Shells`] when the boot ends, however it ends.
struct CloseShells(Arc<Shells>);

impl Drop for CloseShells {
    fn drop(&mut self) {
        self.0.close();
    }
}
