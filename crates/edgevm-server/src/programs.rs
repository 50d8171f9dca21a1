//! From configuration to running programs: maps each valid [`ProgramConfig`] onto the
//! runtime's [`ProgramSettings`], and serves statistics on the admin endpoints.

use std::sync::Arc;

use edgevm_config::{Config, ProgramConfig};
use edgevm_runtime::pool::{ProgramSettings, Runtime, WarmupSettings};
use edgevm_runtime::request_vm::RequestSettings;
use edgevm_runtime::vm::VmOptions;
use edgevm_runtime::GuestResponse;

use crate::http::{AdminHandler, AdminRequest};

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
    vm.control_ephemeral = p.control_ephemeral;
    ProgramSettings {
        vm,
        concurrency: p.concurrency,
        request: RequestSettings {
            max_request_time: p.max_request_time,
            max_request_memory: p.max_request_memory,
            limit_workmem_after_req: p.workmem_limit_after_request().unwrap_or(0),
            ephemeral: p.ephemeral,
            keep_working_memory: p.ephemeral_keep_working_memory,
        },
        start: p.start,
        origin: "local",
        cached: false,
        warmup: p.warmup.as_ref().map(|w| WarmupSettings {
            num_requests: u32::from(w.num_requests),
            url: w.url.clone(),
            method: w.method.clone(),
            headers: w.headers.clone(),
        }),
    }
}

/// Build the runtime for every program of `cfg`. Programs that cannot be set up (bad
/// settings, unreadable file, features not built yet) are registered as failed, so requests
/// to them get a clear 503 and the rest keep serving. Returns the error lines too.
pub fn build_runtime(cfg: &Config) -> (Runtime, Vec<String>) {
    let mut rt = Runtime::new();
    let mut errors = Vec::new();
    for (name, p) in &cfg.programs {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("program '{name}': {e}");
                errors.push(msg.clone());
                rt.add_failed(name, msg);
                continue;
            }
        };
        if p.storage {
            let msg = format!("program '{name}': storage programs are not supported yet");
            errors.push(msg.clone());
            rt.add_failed(name, msg);
            continue;
        }
        let Some(file) = &p.filename else {
            let msg = format!("program '{name}': no filename");
            errors.push(msg.clone());
            rt.add_failed(name, msg);
            continue;
        };
        match std::fs::read(file) {
            Ok(bytes) => {
                rt.add(name, program_settings(p, bytes));
            }
            Err(e) => {
                let msg = if p.uri.is_some() {
                    format!(
                        "program '{name}': cannot read '{}' ({e}), and downloading from uri is not supported yet",
                        file.display()
                    )
                } else {
                    format!("program '{name}': cannot read '{}': {e}", file.display())
                };
                errors.push(msg.clone());
                rt.add_failed(name, msg);
            }
        }
    }
    (rt, errors)
}

/// `/_edgevm/stats` (JSON) and `/metrics` (Prometheus text).
pub struct StatsAdmin {
    runtime: Arc<Runtime>,
}

impl StatsAdmin {
    /// Admin endpoints over `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        StatsAdmin { runtime }
    }

    fn json(&self) -> String {
        let mut progs = serde_json::Map::new();
        for (name, p) in self.runtime.programs() {
            let mut o = serde_json::Map::new();
            o.insert("status".into(), p.status().into());
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

    fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<_> = self.runtime.programs().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        let mut first = true;
        for (name, p) in names {
            for (k, v) in p.stats.snapshot() {
                if first {
                    // one HELP/TYPE per metric would need grouping; keep it simple and valid
                }
                out.push_str(&format!("edgevm_{k}{{program=\"{name}\"}} {v}\n"));
            }
            first = false;
        }
        out
    }
}

impl AdminHandler for StatsAdmin {
    fn handle(&self, req: &AdminRequest) -> Option<GuestResponse> {
        match req.path.as_str() {
            "/_edgevm/stats" => Some(GuestResponse {
                status: 200,
                content_type: "application/json".into(),
                headers: vec![],
                body: self.json().into_bytes(),
            }),
            "/metrics" => Some(GuestResponse {
                status: 200,
                content_type: "text/plain; version=0.0.4".into(),
                headers: vec![],
                body: self.prometheus().into_bytes(),
            }),
            _ => None,
        }
    }
}
