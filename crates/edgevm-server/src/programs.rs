//! From configuration to running programs: maps each valid [`ProgramConfig`] onto the
//! runtime's [`ProgramSettings`], and serves statistics on the admin endpoints.

use std::sync::Arc;

use edgevm_config::{Config, Download, ProgramConfig};
use edgevm_runtime::net::NetAccess;
use edgevm_runtime::pool::{
    LoadedBinary, Loader, ProgramSettings, Runtime, UpdateError, WarmupSettings,
};
use edgevm_runtime::request_vm::RequestSettings;
use edgevm_runtime::vm::VmOptions;
use edgevm_runtime::GuestResponse;

use crate::http::{AdminCheck, AdminHandler, AdminRequest};

/// Default budget for downloading one program.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The download budget: [`FETCH_TIMEOUT`], or `EDGEVM_FETCH_TIMEOUT_MS` (milliseconds, > 0)
/// when set — the tests use it to exercise a stalled server in bounded time.
pub fn fetch_timeout() -> std::time::Duration {
    edgevm_runtime::env::fetch_timeout().unwrap_or(FETCH_TIMEOUT)
}

/// GDB settings of a program: None unless `allow_debug` or `remote_debug_on_exception` is
/// set (then the run loop has no debugging code on its path).
pub fn debug_settings(p: &ProgramConfig) -> Option<edgevm_runtime::debug::DebugSettings> {
    if !p.allow_debug && !p.remote_debug_on_exception {
        return None;
    }
    let mut g = edgevm_runtime::debug::DebugSettings::new(p.debug_listen);
    g.on_breakpoint = p.allow_debug;
    g.on_exception = p.remote_debug_on_exception;
    Some(g)
}

/// The program's `allowed_paths` as sandbox rules.
pub fn allowed_paths(p: &ProgramConfig) -> Vec<edgevm_runtime::PathRule> {
    p.allowed_paths
        .iter()
        .map(|a| edgevm_runtime::PathRule {
            virt: a.virtual_path.as_bytes().to_vec(),
            real: a.real.clone().into(),
            prefix: a.prefix,
            writable: a.writable,
            symlink: a.symlink,
        })
        .collect()
}

/// The memory layout keys (`blackout_area`, `relocate_fixed_mmap`, the huge-page keys) into
/// `vm`.
pub fn memory_layout(p: &ProgramConfig, vm: &mut VmOptions) {
    vm.blackout_area = p
        .blackout_area
        .iter()
        .map(|r| (r.address, r.end()))
        .collect();
    vm.relocate_fixed_mmap = p.relocate_fixed_mmap;
    vm.remappings = p
        .remapping
        .iter()
        .map(|r| (r.address, r.size, false))
        .chain(
            p.executable_remapping
                .iter()
                .map(|r| (r.address, r.size, true)),
        )
        .collect();
    let all = u64::MAX;
    vm.huge_pages = edgevm_runtime::vm::HugePages {
        main: if p.hugepages || p.transparent_hugepages {
            all
        } else {
            p.hugepage_arena_size
        },
        request: if p.transparent_hugepages {
            all
        } else {
            p.request_hugepage_arena_size
        },
    };
}

/// Settings for one program whose binary is `bytes`.
pub fn program_settings(p: &ProgramConfig, bytes: Vec<u8>) -> ProgramSettings {
    let path = p.filename.clone().unwrap_or_default();
    let mut vm = VmOptions::new(&p.name, path, bytes);
    vm.group = p.group.clone();
    vm.arguments = p.main_arguments.clone();
    vm.environment = p.environment.clone();
    vm.max_memory = p.max_memory;
    vm.address_space = p.address_space;
    vm.shared_memory = p.shared_memory;
    vm.max_boot_time = p.max_boot_time;
    vm.verbose = p.verbose;
    vm.verbose_syscalls = p.verbose_syscalls;
    vm.storage = false;
    vm.debug = p.allow_debug;
    vm.gdb = debug_settings(p);
    vm.control_ephemeral = p.control_ephemeral;
    vm.state_file = p.filename.as_deref().map(VmOptions::state_path_for);
    vm.allowed_paths = allowed_paths(p);
    vm.cwd = p.current_working_directory.clone();
    vm.executable_heap = p.executable_heap;
    vm.mmap_backed_files = p.mmap_backed_files;
    vm.verbose_pagetables = p.verbose_pagetables;
    vm.smp = p.smp;
    vm.output_to_stdout = p.stdout;
    memory_layout(p, &mut vm);
    ProgramSettings {
        vm,
        concurrency: p.concurrency,
        max_queue: p.max_queue as usize,
        free_idle_vms_after: p.free_idle_vms_after,
        free_idle_image: p.free_idle_image,
        request: RequestSettings {
            max_request_time: p.max_request_time,
            max_request_memory: p.max_request_memory,
            limit_workmem_after_req: p.workmem_limit_after_request().unwrap_or(0),
            ephemeral: p.ephemeral,
            keep_working_memory: p.ephemeral_keep_working_memory,
        },
        start: p.start || p.server.is_some() || p.websocket_server.is_some(),
        origin: "local",
        cached: false,
        key: p.key.clone(),
        storage: p.storage,
        storage_binary: None,
        max_storage_time: p.max_storage_time,
        loader: None,
        snapshot: None,
        server: p.server.as_ref().or(p.websocket_server.as_ref()).map(|s| {
            edgevm_runtime::tcp_server::ServerMode {
                listen: match &s.listen {
                    edgevm_config::TcpListen::Tcp(a) => edgevm_runtime::tcp_server::Listen::Tcp(*a),
                    edgevm_config::TcpListen::Unix(p) => {
                        edgevm_runtime::tcp_server::Listen::Unix(p.clone())
                    }
                },
                systems: s.systems,
                max_connections: s.max_connections,
                idle_timeout: s.idle_timeout,
                websocket: s.max_message.map(|m| m as usize),
            }
        }),
        warmup: p.warmup.as_ref().map(|w| WarmupSettings {
            num_requests: u32::from(w.num_requests),
            url: w.url.clone(),
            method: w.method.clone(),
            headers: w.headers.clone(),
        }),
    }
}

/// A program's snapshot file: its `cold_start_file`, else `<snapshot_dir>/<name>.snapshot`
/// (not for programs with storage, which are never snapshotted), else none.
pub fn snapshot_file(p: &ProgramConfig, cfg: &Config) -> Option<std::path::PathBuf> {
    if let Some(f) = &p.cold_start_file {
        return Some(f.clone());
    }
    let dir = cfg.server.snapshot_dir.as_deref()?;
    (!p.storage).then(|| edgevm_runtime::snapshot::file_in(dir, &p.name))
}

/// A program's network access: the server's `allow_net`/`deny_net` plus the program's (its
/// group's included), and the server's fetcher (outgoing.rs). The entries were validated when
/// the configuration was loaded.
pub fn net_access(cfg: &Config, p: &ProgramConfig) -> NetAccess {
    let s = &cfg.server;
    let policy = crate::outgoing::program_policy(
        s.allow_net.as_deref().unwrap_or_default(),
        s.deny_net.as_deref().unwrap_or_default(),
        &p.allow_net,
        &p.deny_net,
    )
    .unwrap_or_else(|e| {
        // Cannot happen (validated at load); refuse everything rather than allow too much.
        tracing::error!("{}: {e}; outgoing requests refused", p.name);
        edgevm_runtime::net::NetPolicy::parse(&[], &["0.0.0.0/0".into(), "::/0".into()])
            .unwrap_or_default()
    });
    let fetcher: Arc<dyn edgevm_runtime::net::Fetcher> = crate::outgoing::outgoing();
    let policy = Arc::new(policy);
    crate::outgoing::remember_policy(&p.name, policy.clone());
    NetAccess {
        policy,
        fetcher: Some(fetcher),
        counters: Default::default(),
    }
}

/// Build the runtime for every program of `cfg`. Programs that cannot be set up (bad
/// settings, unreadable file, features not built yet) are registered as failed, so requests
/// to them get a clear 503 and the rest keep serving. Returns the error lines too.
pub fn build_runtime(cfg: &Config) -> (Runtime, Vec<String>) {
    let mut rt = Runtime::new();
    let mut errors = Vec::new();
    let cfg_snap;
    let mut cfg = cfg;
    if let Some(dir) = &cfg.server.snapshot_dir {
        if let Err(e) = prepare_snapshot_dir(dir) {
            errors.push(format!(
                "snapshot_dir {}: {e}; programs boot without snapshots",
                dir.display()
            ));
            let mut c = cfg.clone();
            c.server.snapshot_dir = None;
            cfg_snap = c;
            cfg = &cfg_snap;
        }
    }
    let timeout = fetch_timeout();
    for (name, p) in &cfg.programs {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                // Config errors usually name the program already: say it once.
                let e = e.to_string().replacen(&format!("{name}: "), "", 1);
                let msg = format!("program '{name}': {e}");
                errors.push(msg.clone());
                rt.add_failed(name, msg);
                continue;
            }
        };
        if p.free_idle_image && snapshot_file(p, cfg).is_none() {
            let msg = format!(
                "program '{name}': 'free_idle_image' needs a snapshot file ('cold_start_file', or the server's 'snapshot_dir')"
            );
            errors.push(msg.clone());
            rt.add_failed(name, msg);
            continue;
        }
        if p.uri.is_some() {
            // Downloaded (or taken from the cache) when the program boots.
            let mut settings = program_settings(p, Vec::new());
            settings.snapshot = snapshot_file(p, cfg);
            settings.vm.net = net_access(cfg, p);
            let (n, uri, file) = (name.clone(), p.uri.clone(), p.filename.clone());
            let pin = crate::fetch::Pin::from_config(p.sha256.as_deref(), p.md5.as_deref());
            let downloads = p.download.clone();
            settings.loader = Some(Loader(
                Arc::new(move || {
                    run_downloads(&n, &downloads, timeout)?;
                    let f = crate::fetch::obtain_pinned(
                        &n,
                        uri.as_deref(),
                        file.as_deref(),
                        pin.as_ref(),
                        timeout,
                    )
                    .map_err(|e| e.to_string())?;
                    for note in &f.notes {
                        tracing::warn!("{n}: {note}");
                    }
                    for line in &f.info {
                        tracing::info!("{n}: {line}");
                    }
                    Ok(LoadedBinary {
                        request: f.request,
                        storage: f.storage,
                        origin: f.origin.as_str(),
                        cached: f.cached,
                        download_time: f.download_time,
                    })
                }),
                None,
            ));
            if let Some(f) = &p.filename {
                settings.vm.program_path = f.clone();
            }
            rt.add(name, settings);
            continue;
        }
        let Some(file) = &p.filename else {
            let msg = format!("program '{name}': no filename");
            errors.push(msg.clone());
            rt.add_failed(name, msg);
            continue;
        };
        match crate::fetch::obtain(name, None, Some(file), timeout) {
            Ok(f) => {
                // Read now for a clear error at start, and again when the program boots: a
                // node with many programs, most never or rarely run, does not keep every
                // binary in memory (docs/BENCHMARKS.md, "Many programs").
                drop(f);
                let mut settings = program_settings(p, Vec::new());
                settings.snapshot = snapshot_file(p, cfg);
                settings.vm.net = net_access(cfg, p);
                settings.loader = Some(local_loader(name, file, &p.download));
                rt.add(name, settings);
            }
            Err(e) => {
                // Failed now, booted again when the file changes (or after a back-off).
                let msg = e.to_string();
                errors.push(msg.clone());
                let mut settings = program_settings(p, Vec::new());
                settings.loader = Some(local_loader(name, file, &p.download));
                rt.add_unloadable(name, settings, msg);
            }
        }
    }
    (rt, errors)
}

/// The server's snapshot directory: made (mode 0700) if missing; it must be a directory.
fn prepare_snapshot_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    Ok(())
}

/// The program's `download` list, fetched before its binary is read (fetch/download.rs).
fn run_downloads(
    name: &str,
    list: &[Download],
    timeout: std::time::Duration,
) -> Result<(), String> {
    for (warn, line) in
        crate::fetch::fetch_downloads(name, list, timeout).map_err(|e| e.to_string())?
    {
        if warn {
            tracing::warn!("{name}: {line}");
        } else {
            tracing::info!("{name}: {line}");
        }
    }
    Ok(())
}

/// Reads a local program's file (and its `*storage` companion) when the program boots.
fn local_loader(name: &str, file: &std::path::Path, downloads: &[Download]) -> Loader {
    let (name, file, downloads) = (name.to_string(), file.to_path_buf(), downloads.to_vec());
    // Nothing but the file is read when there is no download list.
    let only = downloads.is_empty().then(|| file.clone());
    Loader(
        Arc::new(move || {
            run_downloads(&name, &downloads, fetch_timeout())?;
            let f = crate::fetch::obtain(&name, None, Some(&file), fetch_timeout())
                .map_err(|e| e.to_string())?;
            Ok(LoadedBinary {
                request: f.request,
                storage: f.storage,
                origin: f.origin.as_str(),
                cached: false,
                download_time: f.download_time,
            })
        }),
        only,
    )
}

/// The admin endpoints:
///
/// * `GET /_edgevm/health` — 200 `ready` when every program that must start at boot
///   (`"start": true`) is ready; 503 with the reasons otherwise, and 503 `draining` once the
///   server is draining (SIGTERM). For load-balancer probes.
/// * `GET /_edgevm/stats` — JSON statistics per program.
/// * `GET /metrics` — the same in the Prometheus text format (`metrics.rs`).
/// * `POST /_edgevm/update/<program>` — live update: the body is the new program binary, the
///   key goes in the `X-Edgevm-Key` header (only there: a key in a URL ends up in proxy and
///   access logs); it must equal the program's `key`.
///
/// The method, the path, the program and the key are checked from the request head before
/// any byte of the body is read ([`AdminHandler::check`]); only a live update whose key
/// matched may send a body larger than the normal limit (up to
/// [`StatsAdmin::with_max_update_bytes`]).
pub struct StatsAdmin {
    runtime: Arc<Runtime>,
    max_update_bytes: usize,
    /// Programs that must be ready for the health endpoint to answer 200.
    required: Vec<String>,
    /// The server's drain state.
    drain: crate::drain::Drain,
}

/// The programs of `cfg` the health endpoint waits for: those with `"start": true` (a program
/// whose file cannot be read counts too: it stays failed, and health 503).
pub fn start_programs(cfg: &Config) -> Vec<String> {
    cfg.programs
        .iter()
        .filter_map(|(n, p)| match p {
            Ok(p) if p.start => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// Default largest live-update body (a program binary).
pub const MAX_UPDATE_BYTES: usize = 64 << 20;

impl StatsAdmin {
    /// Admin endpoints over `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        StatsAdmin {
            runtime,
            max_update_bytes: MAX_UPDATE_BYTES,
            required: Vec::new(),
            drain: Default::default(),
        }
    }

    /// Health: `required` programs must be ready, and `drain` not started, for 200.
    pub fn with_health(mut self, required: Vec<String>, drain: crate::drain::Drain) -> Self {
        self.required = required;
        self.drain = drain;
        self
    }

    fn health(&self) -> GuestResponse {
        let mut resp = if self.drain.is_draining() {
            text(503, "draining\n")
        } else {
            let waiting: Vec<String> = self
                .required
                .iter()
                .filter_map(|n| match self.runtime.program(n) {
                    Some(p) if p.ready_info().is_some() => None,
                    // The state only: a failure's reason (paths, ...) is in the stats and
                    // the log, not on an endpoint every listener serves.
                    Some(p) => Some(format!(
                        "{n} ({})",
                        if p.status().starts_with("failed") {
                            "failed"
                        } else {
                            "booting"
                        }
                    )),
                    None => Some(format!("{n} (not configured)")),
                })
                .collect();
            if waiting.is_empty() {
                text(200, "ready\n")
            } else {
                text(503, &format!("not ready: {}\n", waiting.join(", ")))
            }
        };
        resp.headers
            .push(("Cache-Control".into(), "no-store".into()));
        resp
    }

    /// The largest live-update body (default [`MAX_UPDATE_BYTES`]).
    pub fn with_max_update_bytes(mut self, bytes: usize) -> Self {
        self.max_update_bytes = bytes;
        self
    }

    fn json(&self) -> String {
        let mut progs = serde_json::Map::new();
        for (name, p) in self.runtime.programs() {
            let mut o = serde_json::Map::new();
            o.insert("status".into(), p.status().into());
            o.insert("concurrency".into(), p.settings().concurrency.into());
            o.insert("origin".into(), p.settings().origin.into());
            let (resident, freed, refilled) = p.resident_vms();
            o.insert("resident_vms".into(), resident.into());
            o.insert("idle_vms_freed".into(), freed.into());
            o.insert("idle_vms_refilled".into(), refilled.into());
            let retry = p.retry_info();
            o.insert("boot_failures".into(), retry.boot_failures.into());
            if let Some(d) = retry.retry_in {
                o.insert("retry_in_s".into(), d.as_secs_f64().into());
            }
            if let Some((vms, ms)) = p.ready_info() {
                o.insert("vms".into(), vms.into());
                o.insert("ready_ms".into(), ms.into());
            }
            let snap = p.stats.snapshot();
            let reqs = snap.get("requests").copied().unwrap_or(0);
            let exits = snap.get("exits").copied().unwrap_or(0);
            for (k, v) in snap {
                o.insert(k.into(), v.into());
            }
            let per = if reqs > 0 {
                exits as f64 / reqs as f64
            } else {
                0.0
            };
            o.insert("exits_per_request".into(), per.into());
            progs.insert(name.clone(), serde_json::Value::Object(o));
        }
        serde_json::to_string_pretty(&serde_json::json!({ "programs": progs })).unwrap_or_default()
    }

    /// The live update's checks from the request head: method, program, key.
    fn check_update(&self, req: &AdminRequest, name: &str) -> AdminCheck {
        if req.method != "POST" && req.method != "PUT" {
            let mut r = text(
                405,
                "live update wants POST with the program binary as the body\n",
            );
            r.headers.push(("allow".into(), "POST, PUT".into()));
            return AdminCheck::Answer(r);
        }
        let key = req.header("x-edgevm-key").unwrap_or_default();
        match self.runtime.check_update_key(name, key) {
            Ok(_) => AdminCheck::ReadBody(self.max_update_bytes),
            Err(e) => AdminCheck::Answer(update_error(e)),
        }
    }

    fn update(&self, req: &AdminRequest, name: &str) -> GuestResponse {
        let key = req.header("x-edgevm-key").unwrap_or_default();
        match self.runtime.live_update(name, key, req.body.clone()) {
            Ok(msg) => text(200, &msg),
            Err(e) => update_error(e),
        }
    }
}

fn update_error(e: UpdateError) -> GuestResponse {
    let status = match e {
        UpdateError::NotFound(_) => 404,
        UpdateError::Forbidden(_) => 403,
        UpdateError::Refused(_) => 400,
    };
    text(status, &format!("{e}\n"))
}

fn text(status: u16, body: &str) -> GuestResponse {
    GuestResponse {
        status,
        content_type: "text/plain".into(),
        headers: vec![],
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The read-only endpoints: `/_edgevm/stats` and `/metrics`.
const READ_ONLY: &[&str] = &["/_edgevm/stats", "/metrics", "/_edgevm/health"];

impl AdminHandler for StatsAdmin {
    fn check(&self, req: &AdminRequest) -> AdminCheck {
        if let Some(name) = req.path.strip_prefix("/_edgevm/update/") {
            return self.check_update(req, name);
        }
        if !READ_ONLY.contains(&req.path.as_str()) {
            // No such endpoint: said before any body is read.
            return AdminCheck::Answer(text(404, "not found\n"));
        }
        if req.method != "GET" && req.method != "HEAD" {
            let mut r = text(405, "this endpoint answers GET and HEAD\n");
            r.headers.push(("allow".into(), "GET, HEAD".into()));
            return AdminCheck::Answer(r);
        }
        AdminCheck::ReadNormalBody
    }

    fn handle(&self, req: &AdminRequest) -> Option<GuestResponse> {
        if let Some(name) = req.path.strip_prefix("/_edgevm/update/") {
            // (check_update ran on the head: method, program and key are right.)
            return Some(self.update(req, name));
        }
        match req.path.as_str() {
            "/_edgevm/health" => Some(self.health()),
            "/_edgevm/stats" => Some(GuestResponse {
                status: 200,
                content_type: "application/json".into(),
                headers: vec![],
                body: self.json().into_bytes(),
                ..Default::default()
            }),
            "/metrics" => {
                let (ct, body) = crate::metrics::render(&self.runtime, req.header("accept"));
                Some(GuestResponse {
                    status: 200,
                    content_type: ct.into(),
                    headers: vec![],
                    body: body.into_bytes(),
                    ..Default::default()
                })
            }
            _ => None,
        }
    }
}
