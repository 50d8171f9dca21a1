//! edgevm: the command line. `edgevm run` boots one program in a VM; `edgevm check` validates
//! a configuration. Everything of substance lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use edgevm_config::{Config, ProgramConfig};
mod new;

use edgevm_runtime::vm::{BootOutcome, BootReport, MainVm, RunError, VmOptions};

#[derive(Parser)]
#[command(
    name = "edgevm",
    version,
    about = "Run native x86_64 Linux programs in per-request KVM VMs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a static x86_64 program inside a VM, like the reference system boots every program.
    Run(RunArgs),
    /// Serve the configured programs over HTTP: `/<program>/...` runs that program.
    Serve {
        /// Configuration file (JSON with comments); may repeat, later files override.
        #[arg(long = "config", short = 'c', required = true)]
        config: Vec<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write a ready-to-build program NAME/ (source, build.sh, config.json).
    New {
        /// Program name (also its directory and URL path).
        name: String,
        /// Language: c, cpp or rust.
        #[arg(long, default_value = "c")]
        lang: String,
    },
    /// Validate configuration files and print each program's effective settings.
    Check {
        /// Configuration file (JSON with comments); may repeat, later files override.
        #[arg(long = "config", short = 'c', required = true)]
        config: Vec<PathBuf>,
    },
}

/// Server-wide settings; each overrides the configuration's top-level "server" object
/// (docs/CONFIG.md) and is validated the same way.
#[derive(Args)]
struct ServerArgs {
    /// Address to listen on, or `unix:/path` for a Unix socket [default: 127.0.0.1:8080]
    /// (server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// A separate listener for the admin endpoints (/metrics, /_edgevm/...): an address or
    /// unix:/path (socket mode 0600); the main listener then serves programs only
    /// (server.admin_listen).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Permission bits of the Unix socket file, octal (server.listen_mode), e.g. 0660.
    #[arg(long)]
    listen_mode: Option<String>,
    /// Owner of the Unix socket file: user, user:group or :group (server.listen_owner).
    #[arg(long)]
    listen_owner: Option<String>,
    /// Front ends whose X-Edgevm-Arg header becomes the program's arg: comma-separated
    /// addresses, networks (10.0.0.0/8) or `unix` (server.trusted_frontends).
    #[arg(long)]
    trusted_frontends: Option<String>,
    /// Seconds to keep serving after SIGTERM while /_edgevm/health answers 503, before
    /// stopping to accept [default: 0] (server.drain_seconds).
    #[arg(long)]
    drain_seconds: Option<String>,
    /// Largest request body in MB, at most 16; 413 beyond [default: 16] (server.max_body_size).
    #[arg(long)]
    max_body_mb: Option<String>,
    /// Largest live-update body (program binary) in MB, at most 1024; read only after the
    /// key matched [default: 64] (server.max_update_size).
    #[arg(long)]
    max_update_mb: Option<String>,
    /// Accept requests RFC 9112 says to refuse: no, an empty or several Host headers,
    /// transfer codings other than chunked (server.lenient_http).
    #[arg(long)]
    lenient_http: bool,
    /// Most connections from one client IP address at once; more are answered 503 [default:
    /// no limit] (server.max_connections_per_address).
    #[arg(long)]
    max_connections_per_address: Option<String>,
    /// Server-wide budget in MB for buffered request bodies; past it new bodies wait 1 s,
    /// then get 503 [default: an eighth of the memory, at least 64] (server.max_body_memory).
    #[arg(long)]
    max_body_memory_mb: Option<String>,
    /// Largest request head in KB, at most 256; 431 beyond [default: 64]
    /// (server.max_header_size).
    #[arg(long)]
    max_header_kb: Option<String>,
    /// Most request headers, at most 512; 431 beyond [default: 100] (server.max_headers).
    #[arg(long)]
    max_headers: Option<String>,
    /// Connections served at once; more are answered 503 and closed [default: 10000]
    /// (server.max_connections).
    #[arg(long)]
    max_connections: Option<String>,
    /// Seconds a client has to send a complete request head [default: 10]
    /// (server.header_timeout).
    #[arg(long)]
    header_timeout: Option<String>,
    /// Seconds an idle keep-alive connection stays open [default: 60] (server.idle_timeout).
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Seconds a client has to send the whole request body; 408 beyond [default: 60]
    /// (server.body_timeout).
    #[arg(long)]
    body_timeout: Option<String>,
    /// No log line per request (server.log_requests: false). EDGEVM_LOG=info,edgevm::access=off
    /// does the same.
    #[arg(long)]
    no_request_log: bool,
    /// Error responses tell clients why a program failed (crash report, host paths) instead
    /// of only the status and request id (server.error_details: true). Not on a public
    /// listener.
    #[arg(long)]
    error_details: bool,
}

impl ServerArgs {
    /// The configuration's server settings with these flags applied on top.
    fn apply(&self, cfg: &mut edgevm_config::ServerConfig) -> Result<()> {
        for (key, value) in [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
            ("listen_mode", &self.listen_mode),
            ("listen_owner", &self.listen_owner),
            ("drain_seconds", &self.drain_seconds),
            ("trusted_frontends", &self.trusted_frontends),
            ("max_body_size", &self.max_body_mb),
            ("max_update_size", &self.max_update_mb),
            ("max_body_memory", &self.max_body_memory_mb),
            (
                "max_connections_per_address",
                &self.max_connections_per_address,
            ),
            ("max_header_size", &self.max_header_kb),
            ("max_headers", &self.max_headers),
            ("max_connections", &self.max_connections),
            ("header_timeout", &self.header_timeout),
            ("idle_timeout", &self.idle_timeout),
            ("body_timeout", &self.body_timeout),
        ] {
            if let Some(v) = value {
                cfg.set_from_str(key, v)?;
            }
        }
        if self.lenient_http {
            cfg.set_from_str("lenient_http", "true")?;
        }
        if self.no_request_log {
            cfg.set_from_str("log_requests", "false")?;
        }
        if self.error_details {
            cfg.set_from_str("error_details", "true")?;
        }
        Ok(())
    }
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file(s) with the program's settings (glossary keys).
    #[arg(long = "config", short = 'c')]
    config: Vec<PathBuf>,
    /// Which program of the configuration to use (default: the only one, or the one whose
    /// filename is PROGRAM).
    #[arg(long)]
    program: Option<String>,
    /// Program name (argv[0], KVM_NAME, output prefix). Default: the file name.
    #[arg(long)]
    name: Option<String>,
    /// max_memory in MB.
    #[arg(long)]
    max_memory: Option<u64>,
    /// address_space in MB.
    #[arg(long)]
    address_space: Option<u64>,
    /// max_boot_time in seconds.
    #[arg(long)]
    max_boot_time: Option<f64>,
    /// Add an environment variable (K=V); may repeat.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Print loading details.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Log every system call by name.
    #[arg(long)]
    verbose_syscalls: bool,
    /// Print the program's output without the `>>> [name] ` prefix.
    #[arg(long)]
    raw: bool,
    /// Stop at the program's entry and wait for GDB on ADDR (`target remote ADDR`)
    /// [default: 127.0.0.1:2159]. See docs/DEBUGGING.md.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, require_equals = true,
          default_missing_value = edgevm_runtime::debug::DEFAULT_LISTEN)]
    gdb: Option<String>,
    /// The program file (a static x86_64 ELF); optional when the configuration names it.
    file: Option<PathBuf>,
    /// Arguments after the program (main_arguments). `--request [METHOD] PATH [-H 'K: V']...
    /// [-d BODY|@FILE]` after them boots the program like `serve` does (same checks) and
    /// sends it one request: the response is printed like `curl -i`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// One request for `edgevm run PROG --request ...`.
#[derive(Debug, PartialEq)]
struct RequestSpec {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A token of RFC 9110 (method, header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Take `--request [METHOD] PATH [-H 'K: V']... [-d BODY|@FILE]` off the end of `args`.
fn take_request(args: &mut Vec<String>) -> Result<Option<RequestSpec>> {
    let Some(at) = args.iter().position(|a| a == "--request") else {
        return Ok(None);
    };
    let spec: Vec<String> = args.drain(at..).skip(1).collect();
    let usage = "usage: edgevm run PROGRAM [ARGS...] --request [METHOD] PATH [-H 'Name: value']... [-d BODY|@FILE]";
    let words = spec.iter().take_while(|w| !w.starts_with('-')).count();
    let (method, path) = match &spec[..words] {
        [path] => (None, path.clone()),
        [method, path] => (Some(method.clone()), path.clone()),
        _ => bail!("--request wants [METHOD] PATH; {usage}"),
    };
    let mut headers = Vec::new();
    let mut body = None;
    let mut rest = spec[words..].iter();
    while let Some(flag) = rest.next() {
        let Some(value) = rest.next() else {
            bail!("{flag} wants a value; {usage}");
        };
        match flag.as_str() {
            "-H" | "--header" => {
                let Some((name, v)) = value.split_once(':') else {
                    bail!("-H wants 'Name: value', got {value:?}");
                };
                let v = v.trim();
                if !is_token(name) || v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                    bail!("-H wants 'Name: value' (a header name and a value without control characters), got {value:?}");
                }
                headers.push((name.to_ascii_lowercase(), v.to_string()));
            }
            "-d" | "--data" if body.is_none() => {
                body = Some(match value.strip_prefix('@') {
                    Some(f) => std::fs::read(f).with_context(|| format!("-d @{f}"))?,
                    None => value.clone().into_bytes(),
                });
            }
            "-d" | "--data" => bail!("-d is given twice"),
            other => bail!("unknown option {other:?} after --request; {usage}"),
        }
    }
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
    if !is_token(&method) {
        bail!("{method:?} is not an HTTP method");
    }
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        bail!("the request path must start with '/' and contain no spaces or control characters, got {path:?}");
    }
    let body = body.unwrap_or_default();
    if body.len() > 16 << 20 {
        bail!("the request body is {} bytes; at most 16 MB", body.len());
    }
    Ok(Some(RequestSpec {
        method: method.to_ascii_uppercase(),
        path,
        headers,
        body,
    }))
}

fn main() -> ExitCode {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("EDGEVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // gdbstub logs every packet it does not know at info: only when asked for.
    if !std::env::var("EDGEVM_LOG").is_ok_and(|v| v.contains("gdbstub")) {
        if let Ok(d) = "gdbstub=warn".parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::New { name, lang } => new::new_program(&name, &lang).map(|()| ExitCode::SUCCESS),
        Cmd::Check { config } => check(&config),
        Cmd::Serve { config, server } => serve(&config, &server),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgevm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(files: &[PathBuf], args: &ServerArgs) -> Result<ExitCode> {
    use std::sync::Arc;
    edgevm_kvm::kvm_available()?;
    let mut cfg = Config::load_files(files)?;
    args.apply(&mut cfg.server)?;
    cfg.server.check()?;
    let mut opts = edgevm_server::http::HttpOptions::default();
    opts.apply_config(&cfg.server);
    opts.routes = Arc::new(cfg.routes.clone());
    let fds = edgevm_server::limits::raise_fd_limit();
    // Connections get what the programs' VMs leave of the open-file limit.
    let needs = edgevm_server::capacity::needs(&cfg);
    let for_programs = needs.fds - edgevm_server::limits::FD_RESERVE;
    let fitting = edgevm_server::limits::connections_for_fds(
        opts.max_connections,
        fds.saturating_sub(for_programs),
    );
    if fitting < opts.max_connections {
        tracing::warn!(
            "max_connections {} does not fit in the open-file limit of {fds} beside the {for_programs} files of the programs' VMs; using {fitting}",
            opts.max_connections
        );
        opts.max_connections = fitting;
    }
    let listen = match &opts.unix {
        Some(u) => format!("unix:{}", u.path.display()),
        None => format!("http://{}/", opts.listen),
    };
    let drain = opts.drain.clone();
    for line in edgevm_server::capacity::check(
        &needs,
        fds,
        opts.max_connections as u64,
        edgevm_server::capacity::max_map_count(),
    ) {
        match line {
            Ok(info) => tracing::info!("{info}"),
            Err(warning) => tracing::warn!("{warning}"),
        }
    }
    let (runtime, errors) = edgevm_server::programs::build_runtime(&cfg);
    for e in &errors {
        tracing::error!("{e}");
    }
    let runtime = Arc::new(runtime);
    runtime.start_eager();
    let names: Vec<_> = runtime.programs().into_iter().map(|(n, _)| n).collect();
    tracing::info!("{} program(s): {}", names.len(), names.join(", "));
    let mut admin = edgevm_server::programs::StatsAdmin::new(runtime.clone())
        .with_health(edgevm_server::programs::start_programs(&cfg), drain);
    if let Some(b) = cfg.server.max_update_size {
        admin = admin.with_max_update_bytes(b);
    }
    let admin = Arc::new(admin);
    edgevm_server::http::run_server(opts, runtime, Some(admin))
        .with_context(|| format!("cannot serve on {listen}"))?;
    tracing::info!("edgevm stopped");
    Ok(ExitCode::SUCCESS)
}

fn check(files: &[PathBuf]) -> Result<ExitCode> {
    let cfg = Config::load_files(files)?;
    cfg.server.check()?;
    print!("{}", cfg.render_check());
    let mut failed = cfg.has_errors();
    for (name, p) in cfg.valid_programs() {
        match program_file_problem(p) {
            Some(Ok(note)) => println!("note: program '{name}': {note}"),
            Some(Err(e)) => {
                println!("error: program '{name}': {e}");
                failed = true;
            }
            None => {}
        }
        match storage_file_problem(p) {
            Some(Ok(note)) => println!("note: program '{name}': {note}"),
            Some(Err(e)) => {
                println!("error: program '{name}': {e}");
                failed = true;
            }
            None => {}
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `serve` would find at a program's `filename`: `Err` when it could not load it
/// (missing with no `uri` to fetch it, unreadable, not an ELF file), `Ok` with a note when
/// the file will be fetched, `None` when the file is there.
fn program_file_problem(p: &ProgramConfig) -> Option<Result<String, String>> {
    use std::io::Read;
    let file = p.filename.as_ref()?;
    let shown = file.display();
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(file).and_then(|mut f| f.read_exact(&mut magic));
    if let Some(uri) = &p.uri {
        // serve fetches it (into filename); nothing to check here but whether it is there.
        return (!file.exists()).then(|| {
            Ok(format!(
                "'{shown}' does not exist yet: it will be fetched from {uri}"
            ))
        });
    }
    match read {
        Ok(()) if magic == *b"\x7fELF" => None,
        Ok(()) => Some(Err(format!("'{shown}' is not an ELF program"))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Some(Err(format!("'{shown}' is not an ELF program (too short)")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Err(format!(
            "'{shown}' does not exist (and there is no 'uri' to fetch it from)"
        ))),
        Err(e) => Some(Err(format!("cannot read '{shown}': {e}"))),
    }
}

/// What `serve` would make of a program's storage program of its own (`<filename>_storage`,
/// docs/DESIGN.md "Remote storage calls"): a note saying where it is linked (high: request
/// programs call its functions remotely), `Err` when it cannot be loaded or does not go with
/// the program's settings, `None` when there is none.
fn storage_file_problem(p: &ProgramConfig) -> Option<Result<String, String>> {
    let file = p.filename.as_ref()?;
    let companion = edgevm_server::fetch::storage_path(file);
    let storage = std::fs::read(&companion).ok()?;
    let shown = companion.display();
    if !p.storage {
        return Some(Ok(format!("'{shown}' is not used: \"storage\" is false")));
    }
    let request = std::fs::read(file).unwrap_or_default();
    let memory = edgevm_server::programs::program_settings(p, Vec::new())
        .vm
        .memory_size();
    Some(
        match edgevm_runtime::remote::check_pair(&storage, &request, memory, p.executable_heap) {
            Ok(Some((lo, hi))) => Ok(format!(
                "storage program '{shown}' is linked at {lo:#x}-{hi:#x}: requests call its functions remotely (and with storage_call())"
            )),
            Ok(None) => Ok(format!(
                "storage program '{shown}' (linked below 1 GiB: storage_call() only)"
            )),
            Err(e) => Err(format!("'{shown}': {e}")),
        },
    )
}

fn program_config(a: &RunArgs) -> Result<ProgramConfig> {
    if a.config.is_empty() {
        let Some(file) = &a.file else {
            bail!("no program given: edgevm run PROGRAM [ARGS...]");
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "program".into());
        return Ok(ProgramConfig::for_run(name, file.clone()));
    }
    let cfg = Config::load_files(&a.config)?;
    for w in &cfg.warnings {
        eprintln!("edgevm: warning: {w}");
    }
    let name = match (&a.program, &a.file) {
        (Some(p), _) => p.clone(),
        (None, file) => {
            let all: Vec<_> = cfg.programs.keys().cloned().collect();
            let by_file = file.as_ref().and_then(|f| {
                cfg.valid_programs()
                    .find(|(_, p)| p.filename.as_deref() == Some(f.as_path()))
                    .map(|(n, _)| n.to_string())
            });
            match (by_file, all.len()) {
                (Some(n), _) => n,
                (None, 1) => all[0].clone(),
                _ => bail!(
                    "the configuration has {} programs ({}); choose one with --program",
                    all.len(),
                    all.join(", ")
                ),
            }
        }
    };
    match cfg.programs.get(&name) {
        Some(Ok(p)) => {
            // The server-wide network policy applies to `run` too.
            let mut p = p.clone();
            let s = &cfg.server;
            let mut allow = s.allow_net.clone().unwrap_or_default();
            allow.append(&mut p.allow_net);
            let mut deny = s.deny_net.clone().unwrap_or_default();
            deny.append(&mut p.deny_net);
            (p.allow_net, p.deny_net) = (allow, deny);
            Ok(p)
        }
        Some(Err(e)) => bail!("program '{name}': {e}"),
        None => bail!("program '{name}' is not in the configuration"),
    }
}

fn run(mut a: RunArgs) -> Result<ExitCode> {
    let request = take_request(&mut a.args)?;
    edgevm_kvm::kvm_available()?;
    let pc = program_config(&a)?;
    let file = a
        .file
        .clone()
        .or_else(|| pc.filename.clone())
        .context("no program file: give PROGRAM or set filename in the configuration")?;
    let bytes = std::fs::read(&file)
        .with_context(|| format!("cannot read program '{}'", file.display()))?;
    let name = a.name.clone().unwrap_or_else(|| pc.name.clone());
    let o = run_options(&a, &pc, &name, file, bytes)?;
    if let Some(req) = request {
        return run_request(pc, &o, req);
    }
    match MainVm::boot(o) {
        Ok((vm, report)) => Ok(report_ready(&name, &vm, &report)),
        Err(e) => {
            let what = match &e {
                RunError::Crash(_) => "crashed",
                RunError::Timeout { .. } => "timed out",
                RunError::Killed(_) => "was killed",
                _ => "failed",
            };
            eprintln!("edgevm: program '{name}' {what}: {e}");
            Ok(ExitCode::from(match e {
                RunError::Killed(s) => 128 + s as u8,
                _ => 70,
            }))
        }
    }
}

/// The VM options of `edgevm run`: the program's configuration with the command line's
/// overrides.
fn run_options(
    a: &RunArgs,
    pc: &ProgramConfig,
    name: &str,
    file: PathBuf,
    bytes: Vec<u8>,
) -> Result<VmOptions> {
    let mut o = VmOptions::new(name, file.clone(), bytes);
    o.group = pc.group.clone();
    o.arguments = pc.main_arguments.clone();
    o.arguments.extend(a.args.iter().cloned());
    o.environment = pc.environment.clone();
    for e in &a.env {
        if !e.contains('=') {
            bail!("--env wants KEY=VALUE, got '{e}'");
        }
        o.environment.push(e.clone());
    }
    let mb = |what: &str, v: Option<u64>, default: u64| -> Result<u64> {
        match v {
            None => Ok(default),
            Some(0) => bail!("--{what} must be at least 1 MB"),
            Some(m) if m > 256 << 10 => bail!("--{what} {m} MB is above the 256 GB maximum"),
            Some(m) => Ok(m << 20),
        }
    };
    o.max_memory = mb("max-memory", a.max_memory, pc.max_memory)?;
    o.address_space = mb("address-space", a.address_space, pc.address_space)?;
    o.shared_memory = pc.shared_memory;
    o.max_boot_time = match a.max_boot_time {
        None => pc.max_boot_time,
        Some(s) if s > 0.0 && s <= 86400.0 => Duration::from_secs_f64(s),
        Some(s) => bail!("--max-boot-time must be between 0 and 86400 seconds, got {s}"),
    };
    o.verbose = a.verbose || pc.verbose;
    o.verbose_syscalls = a.verbose_syscalls || pc.verbose_syscalls;
    o.raw_output = a.raw;
    o.storage = false;
    o.debug = pc.allow_debug;
    o.executable_heap = pc.executable_heap;
    o.mmap_backed_files = pc.mmap_backed_files;
    o.verbose_pagetables = pc.verbose_pagetables;
    // Under `edgevm run` the program's output is printed as it wrote it (stdout, stderr).
    edgevm_server::programs::memory_layout(pc, &mut o);
    o.gdb = edgevm_server::programs::debug_settings(pc);
    if let Some(addr) = &a.gdb {
        let listen = edgevm_config::parse_debug_listen(addr).map_err(anyhow::Error::msg)?;
        let g = o
            .gdb
            .get_or_insert_with(|| edgevm_runtime::debug::DebugSettings::new(listen));
        g.listen = listen;
        g.at_entry = true;
    }
    o.state_file = Some(VmOptions::state_path_for(&file));
    o.allowed_paths = edgevm_server::programs::allowed_paths(pc);
    o.cwd = pc.current_working_directory.clone();
    // sys_fetch: the configuration's network policy; no self-requests (no server runs).
    let policy = edgevm_runtime::net::NetPolicy::parse(&pc.allow_net, &pc.deny_net)
        .map_err(anyhow::Error::msg)?;
    let fetcher: std::sync::Arc<dyn edgevm_runtime::net::Fetcher> =
        edgevm_server::outgoing::outgoing();
    o.net = edgevm_runtime::net::NetAccess {
        policy: std::sync::Arc::new(policy),
        fetcher: Some(fetcher),
        counters: Default::default(),
    };
    Ok(o)
}

/// What `edgevm run` says about a program that booted, and its exit code.
fn report_ready(name: &str, vm: &MainVm, report: &BootReport) -> ExitCode {
    if vm.opts.verbose {
        eprintln!(
            "edgevm: '{name}': load {:.2} ms, init {:.2} ms, {} VM exits, {} system calls",
            report.load_time.as_secs_f64() * 1e3,
            report.init_time.as_secs_f64() * 1e3,
            report.exits,
            report.syscalls
        );
        // What the hardware-KVM harness (scripts/hwkvm) checks: how SYSCALL entered
        // (CPL0 on hardware KVM) and the XCR0 edgevm set (none on kvm_pvm).
        let entry = match vm.linux.cpl0_syscalls() {
            Some(true) => "CPL0",
            Some(false) => "CPL3",
            None => "unknown",
        };
        let xcr0 = vm
            .machine
            .cpu
            .xcr0()
            .map_or("not set (host's)".to_string(), |x| format!("{x:#x}"));
        eprintln!("edgevm: '{name}': system calls entered at {entry}, XCR0 {xcr0}");
    }
    match report.outcome {
        BootOutcome::Exited(code) => ExitCode::from(code as u8),
        BootOutcome::Ready if !vm.registered && vm.paused.is_none() => {
            eprintln!(
                        "edgevm: program '{name}' is not servable: it called wait_for_requests() without registering a request handler (set_backend_get/post/request); serve refuses it"
                    );
            ExitCode::from(70)
        }
        BootOutcome::Ready => {
            eprintln!(
                        "edgevm: program '{name}' is ready: it called wait_for_requests() after {:.2} ms of initialization ({} VM exits)",
                        (report.load_time + report.init_time).as_secs_f64() * 1e3,
                        report.exits
                    );
            ExitCode::SUCCESS
        }
    }
}

/// `edgevm run PROG --request ...`: boot the program as `serve` does (a one-program runtime
/// with the same checks: handlers registered, no exit before wait_for_requests(), warmup,
/// storage) with the run's settings, send it the request and print the answer like `curl -i`.
/// Exit status 0 when the program answered (whatever the status), 70 when it did not.
fn run_request(mut pc: ProgramConfig, o: &VmOptions, req: RequestSpec) -> Result<ExitCode> {
    use edgevm_runtime::{GuestRequest, ProgramHost};
    use std::io::Write;
    pc.name = o.name.clone();
    pc.filename = Some(o.program_path.clone());
    pc.uri = None;
    pc.max_memory = o.max_memory;
    pc.address_space = o.address_space;
    pc.max_boot_time = o.max_boot_time;
    pc.environment = o.environment.clone();
    pc.main_arguments = o.arguments.clone();
    pc.verbose = o.verbose;
    pc.verbose_syscalls = o.verbose_syscalls;
    pc.concurrency = 1;
    let name = pc.name.clone();
    let mut cfg = Config::default();
    cfg.programs.insert(name.clone(), Ok(pc));
    let (runtime, errors) = edgevm_server::programs::build_runtime(&cfg);
    if let Some(e) = errors.first() {
        eprintln!("edgevm: {e}");
        return Ok(ExitCode::from(70));
    }
    let url = if req.path == format!("/{name}")
        || req.path.starts_with(&format!("/{name}/"))
        || req.path.starts_with(&format!("/{name}?"))
    {
        req.path.clone()
    } else {
        // What the program sees under serve: the program's own prefix first.
        format!("/{name}{}", req.path)
    };
    let content_type = req
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let greq = GuestRequest {
        method: req.method.clone(),
        url,
        arg: String::new(),
        headers: req.headers,
        content_type,
        body: req.body,
        body_in: None,
        warmup: false,
        self_depth: 0,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let answer = rt.block_on(async {
        let r = runtime.serve(&name, greq).await?;
        r.collected(edgevm_runtime::request_vm::MAX_RESPONSE_BODY)
            .await
    });
    match answer {
        Ok(resp) => {
            let mut out = std::io::stdout().lock();
            let reason = match resp.status {
                200 => "OK",
                201 => "Created",
                204 => "No Content",
                301 => "Moved Permanently",
                302 => "Found",
                304 => "Not Modified",
                400 => "Bad Request",
                403 => "Forbidden",
                404 => "Not Found",
                405 => "Method Not Allowed",
                500 => "Internal Server Error",
                503 => "Service Unavailable",
                _ => "",
            };
            writeln!(out, "HTTP/1.1 {} {reason}", resp.status)?;
            if !resp.content_type.is_empty() {
                writeln!(out, "content-type: {}", resp.content_type)?;
            }
            for (k, v) in &resp.headers {
                writeln!(out, "{k}: {v}")?;
            }
            writeln!(out, "content-length: {}", resp.body.len())?;
            writeln!(out)?;
            out.write_all(&resp.body)?;
            out.flush()?;
            if let Some(e) = resp.exits {
                eprintln!("edgevm: '{name}' answered {} ({e} VM exits)", resp.status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("edgevm: program '{name}': {e}");
            Ok(ExitCode::from(70))
        }
    }
}
