//! [`Runtime`]: all programs, by name — the [`ProgramHost`] the HTTP layer uses — and live
//! updates.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::BootError;
use crate::pool::{Program, State};
use crate::request::{GuestRequest, ProgramHost, ServeError, ServeFuture};
use crate::request_vm::RequestSettings;
use crate::settings::{ProgramSettings, MAX_QUEUE};
use crate::vm::VmOptions;

/// All programs; the [`ProgramHost`] the HTTP layer uses.
#[derive(Default)]
pub struct Runtime {
    pub(crate) programs: HashMap<String, Arc<Program>>,
    /// Programs replaced by live updates since start, by name (what requests now use).
    pub(crate) updated: RwLock<HashMap<String, Arc<Program>>>,
    /// Set once `updated` has an entry: until then requests skip its lock.
    pub(crate) any_updated: std::sync::atomic::AtomicBool,
}

/// Why a live update was refused (the text is the answer's body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// No such program (404).
    #[error("{0}")]
    NotFound(String),
    /// No key configured, or the wrong key (403).
    #[error("{0}")]
    Forbidden(String),
    /// The new program could not start; the old one keeps serving (400).
    #[error("{0}")]
    Refused(String),
}

/// Compare secrets without an early exit.
pub(crate) fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Runtime {
    /// An empty runtime.
    pub fn new() -> Self {
        Runtime::default()
    }

    /// Add a program (replacing one of the same name).
    pub fn add(&mut self, name: &str, settings: ProgramSettings) -> Arc<Program> {
        let p = Program::new(name, settings);
        self.programs.insert(name.to_string(), p.clone());
        p
    }

    /// Register a program that cannot run; requests to it get 503 with `why`.
    pub fn add_failed(&mut self, name: &str, why: String) {
        let settings = ProgramSettings {
            vm: VmOptions::new(name, Default::default(), Vec::new()),
            concurrency: 1,
            max_queue: MAX_QUEUE,
            free_idle_vms_after: None,
            free_idle_image: false,
            request: RequestSettings::default(),
            start: false,
            origin: "local",
            cached: false,
            warmup: None,
            key: String::new(),
            storage: false,
            storage_binary: None,
            max_storage_time: Duration::from_secs(10),
            snapshot: None,
            loader: None,
            server: None,
        };
        let p = Program::new(name, settings);
        *p.state.lock().unwrap_or_else(|e| e.into_inner()) =
            State::Failed(Arc::new(BootError::Config(why)));
        self.programs.insert(name.to_string(), p);
    }

    /// Register a program whose binary cannot be loaded now (`why`): it is failed, and
    /// retried like a program whose boot failed (`retry.rs`): when its file changes or
    /// after the back-off.
    pub fn add_unloadable(&mut self, name: &str, settings: ProgramSettings, why: String) {
        let p = Program::new(name, settings);
        p.retry.begin(&p.settings.vm.program_path);
        *p.state.lock().unwrap_or_else(|e| e.into_inner()) =
            State::Failed(Arc::new(BootError::Load(why)));
        p.schedule_retry();
        self.programs.insert(name.to_string(), p);
    }

    /// Start the programs configured with `start`.
    pub fn start_eager(&self) {
        for (_, p) in self.programs() {
            if p.settings.start || p.settings.server.is_some() {
                p.start();
            }
        }
    }

    /// The current program of that name (after any live update).
    pub fn program(&self, name: &str) -> Option<Arc<Program>> {
        if self.any_updated.load(Ordering::Acquire) {
            if let Some(p) = self
                .updated
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
            {
                return Some(p.clone());
            }
        }
        self.programs.get(name).cloned()
    }

    /// All current programs, sorted by name.
    pub fn programs(&self) -> Vec<(String, Arc<Program>)> {
        let mut v: Vec<_> = self
            .programs
            .keys()
            .filter_map(|n| self.program(n).map(|p| (n.clone(), p)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether `key` allows a live update of `name` (the program, or why not): the check a
    /// live update starts with, made before its body is read.
    pub fn check_update_key(&self, name: &str, key: &str) -> Result<Arc<Program>, UpdateError> {
        let Some(old) = self.program(name) else {
            return Err(UpdateError::NotFound(format!("no such program: '{name}'")));
        };
        let want = &old.settings.key;
        if want.is_empty() {
            return Err(UpdateError::Forbidden(format!(
                "live update is disabled for '{name}': no key is configured"
            )));
        }
        if !same_key(want.as_bytes(), key.as_bytes()) {
            return Err(UpdateError::Forbidden(format!(
                "wrong live-update key for '{name}'"
            )));
        }
        Ok(old)
    }

    /// Live update: boot `binary` with the program's settings and, once it is ready, swap it in
    /// atomically. Requests already queued or running finish on the old program, whose VMs are
    /// then freed. A program that fails to boot is refused with its error and the old one keeps
    /// serving. `key` must equal the program's configured key; no key configured, no update.
    pub fn live_update(
        &self,
        name: &str,
        key: &str,
        binary: Vec<u8>,
    ) -> Result<String, UpdateError> {
        let old = self.check_update_key(name, key)?;
        if binary.is_empty() {
            return Err(UpdateError::Refused("empty program binary".into()));
        }
        let mut settings = old.settings.clone();
        settings.vm.binary = Arc::new(binary);
        settings.loader = None;
        // A storage program of its own linked high (remote storage calls, crate::remote)
        // stays: the update replaces the request program. Otherwise the new binary runs in
        // the storage VM too.
        settings.storage_binary = old
            .storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|s| s.remote_binary());
        settings.origin = "live update";
        settings.cached = false;
        let budget = settings.vm.max_boot_time + Duration::from_secs(30);
        let new = Program::with_stats(name, settings, old.stats.clone());
        new.candidate.store(true, Ordering::Release);
        new.start();
        match new.wait_ready(budget) {
            Ok(true) => {}
            Ok(false) => {
                new.retire();
                return Err(UpdateError::Refused(format!(
                    "the new program for '{name}' did not become ready in time"
                )));
            }
            Err(e) => {
                return Err(UpdateError::Refused(format!(
                    "the new program for '{name}' failed to start: {e}"
                )))
            }
        }
        // Written next to `filename` now, renamed over it once the update is committed: a
        // restarted server runs what this one runs.
        let pending =
            match PendingBinary::write(&new.settings.vm.program_path, &new.settings.vm.binary) {
                Ok(p) => p.map(|mut p| {
                    p.keep_companion = settings_keep_storage(&new.settings);
                    p
                }),
                Err(e) => {
                    new.retire();
                    return Err(UpdateError::Refused(format!(
                        "the new program for '{name}' cannot be saved to {}: {e}",
                        new.settings.vm.program_path.display()
                    )));
                }
            };
        // Carry the storage state across: the old storage VM's on_live_update() hands it out,
        // the new one's on_live_restore() takes it in.
        let old_st = old
            .storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let new_st = new
            .storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let (Some(o), Some(n)) = (old_st, new_st) {
            let state = o.live_update_state().map_err(|e| {
                new.retire();
                UpdateError::Refused(format!("on_live_update of the old program failed: {e}"))
            })?;
            let bytes = state.len();
            if !state.is_empty() {
                n.live_restore(state).map_err(|e| {
                    new.retire();
                    UpdateError::Refused(format!("on_live_restore of the new program failed: {e}"))
                })?;
            }
            old.stats
                .live_update_transfer_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if let Some(p) = pending {
            if let Err(e) = p.commit() {
                new.retire();
                return Err(UpdateError::Refused(format!(
                    "the new program for '{name}' cannot be saved: {e}"
                )));
            }
        }
        let ms = new.ready_info().map(|r| r.1).unwrap_or(0.0);
        new.publish_gauges();
        self.updated
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), new);
        // Before retiring the old one: from now on every lookup finds the new program.
        self.any_updated.store(true, Ordering::Release);
        old.retire();
        old.stats.live_updates.fetch_add(1, Ordering::Relaxed);
        tracing::info!("Program '{name}' live-updated (ready={ms:.2} ms)");
        Ok(format!("Program '{name}' updated (ready in {ms:.2} ms)\n"))
    }
}

/// A live-updated binary written beside the program's file, not yet in its place. Dropped
/// without [`PendingBinary::commit`], the temporary file is removed.
pub(crate) struct PendingBinary {
    pub(crate) tmp: std::path::PathBuf,
    pub(crate) dest: std::path::PathBuf,
    pub(crate) committed: bool,
    /// The `<file>_storage` companion stays (it is the storage program of a remote-call
    /// program, which the update did not replace).
    pub(crate) keep_companion: bool,
}

/// Whether a live-updated program keeps its own storage binary (remote storage calls).
fn settings_keep_storage(s: &ProgramSettings) -> bool {
    s.storage_binary.is_some()
}

impl PendingBinary {
    /// Write `bytes` to a temporary file in the directory of `dest` (synced to disk, with
    /// `dest`'s permissions). `None` when the program has no file (`dest` empty).
    pub(crate) fn write(
        dest: &std::path::Path,
        bytes: &[u8],
    ) -> std::io::Result<Option<PendingBinary>> {
        use std::io::Write;
        if dest.as_os_str().is_empty() {
            return Ok(None);
        }
        let file_name = dest.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".update-{}", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let pending = PendingBinary {
            tmp: tmp.clone(),
            dest: dest.to_owned(),
            committed: false,
            keep_companion: false,
        };
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Ok(md) = std::fs::metadata(dest) {
            f.set_permissions(md.permissions())?;
        }
        f.sync_all()?;
        Ok(Some(pending))
    }

    /// Rename the new binary over the program's file. A `<file>_storage` companion (the
    /// storage VM's binary at start) is removed: after a live update the storage VM runs the
    /// new binary too, and so will a restarted server.
    pub(crate) fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        if self.keep_companion {
            return Ok(());
        }
        let mut companion = self.dest.clone().into_os_string();
        companion.push("_storage");
        match std::fs::remove_file(&companion) {
            Ok(()) => tracing::info!(
                "{}: removed (the live update runs the new binary in the storage VM too)",
                std::path::Path::new(&companion).display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "{}: cannot remove after a live update: {e}",
                std::path::Path::new(&companion).display()
            ),
        }
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for PendingBinary {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl ProgramHost for Runtime {
    fn serve(&self, program: &str, req: GuestRequest) -> ServeFuture {
        match self.program(program) {
            Some(p) => Box::pin(p.serve(req)),
            None => {
                let e = ServeError::ProgramNotFound(program.to_string());
                Box::pin(async move { Err(e) })
            }
        }
    }

    fn streams_body(&self, program: &str) -> crate::request::BoolFuture {
        match self.program(program) {
            Some(p) => Box::pin(p.streams_body()),
            None => Box::pin(async { false }),
        }
    }

    fn fetch_counters(&self, program: &str) -> Option<Arc<crate::net::FetchCounters>> {
        self.program(program).map(|p| p.stats.fetch.clone())
    }
}
