//! The effective settings of one program ([`ProgramConfig`]) and its parts.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// One mebibyte, the unit of every size in the JSON.
pub const MB: u64 = 1 << 20;
/// Largest address space (and so largest memory size) a program may have:
/// 512 GB.
pub const MAX_ADDRESS_SPACE: u64 = 512 * 1024 * MB;
/// Largest accepted `concurrency`.
pub const MAX_CONCURRENCY: u32 = 255;
/// Largest `max_queue`.
pub const MAX_QUEUE: u32 = 8192;
/// Default `max_queue`.
pub const DEFAULT_MAX_QUEUE: u32 = 1024;
/// Largest accepted `smp` (extra vCPUs per VM).
pub const MAX_SMP: u32 = 16;
/// Largest accepted time limit, in seconds (one day).
pub const MAX_TIME_SECS: f64 = 86_400.0;
/// Name of the built-in group, used by programs that have no `group` key.
pub const DEFAULT_GROUP: &str = "test";

/// The effective settings of one program: its group's settings with the
/// program's own keys applied on top, validated.
///
/// Units: every byte size is in **bytes** here (the JSON gives megabytes),
/// every time limit is a [`Duration`] (the JSON gives seconds, fractions
/// allowed). Serializing (e.g. for `edgevm check`) writes the JSON units
/// back, so the output is itself a valid program object.
///
/// Field order and names follow the JSON keys of the glossary. Keys marked
/// *not supported yet* are parsed and validated, but a program whose
/// effective value differs from the default fails to load (see
/// [`crate::Support`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgramConfig {
    /// Program name (the key of the object in the JSON). Not serialized:
    /// the name is the key the object is printed under.
    #[serde(skip)]
    pub name: String,
    /// `group`: the group the settings were copied from
    /// ([`DEFAULT_GROUP`] when absent).
    pub group: String,
    /// `uri`: where to fetch the latest version of the program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `filename`: where the program is found, or stored when fetched
    /// (`$HOME`/`$PWD` expanded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<PathBuf>,
    /// `key`: the live-update key; empty disables live update.
    pub key: String,
    /// `start`: start the program at load time instead of on first request.
    pub start: bool,
    /// `storage`: the program has a storage VM with shared mutable state.
    pub storage: bool,
    /// `concurrency`: number of request VMs, 1..=255. Default 2.
    pub concurrency: u32,
    /// `max_queue` (edgevm extension): requests that may wait for a free request VM,
    /// 0..=[`MAX_QUEUE`]; more are answered 503 at once. Default [`DEFAULT_MAX_QUEUE`].
    pub max_queue: u32,
    /// `free_idle_vms_after` (edgevm extension, seconds): free the program's idle request VMs
    /// once none was used for this long; the next request forks them again. None (0 in the
    /// configuration, the default): keep them.
    #[serde(serialize_with = "ser_opt_secs")]
    pub free_idle_vms_after: Option<Duration>,
    /// `free_idle_image` (edgevm extension): once `free_idle_vms_after` freed every request
    /// VM, free the frozen image too (it stays on disk as the program's snapshot file); the
    /// next request loads it back.
    pub free_idle_image: bool,
    /// `max_boot_time` (seconds): time limit for `main()` to reach
    /// waiting for requests. Default 16 s.
    #[serde(serialize_with = "ser_secs")]
    pub max_boot_time: Duration,
    /// `max_request_time` (seconds): time limit for one request.
    /// Default 8 s.
    #[serde(serialize_with = "ser_secs")]
    pub max_request_time: Duration,
    /// `max_storage_time` (seconds): time limit for one storage access.
    /// Default 10 s.
    #[serde(serialize_with = "ser_secs")]
    pub max_storage_time: Duration,
    /// `max_memory` (MB in JSON, multiple of 2): memory of the main VM
    /// during initialization. Default 256 MB.
    #[serde(serialize_with = "ser_mb")]
    pub max_memory: u64,
    /// `max_request_memory` (MB in JSON): working memory a request VM may
    /// add on top of the main VM. Default 64 MB.
    #[serde(serialize_with = "ser_mb")]
    pub max_request_memory: u64,
    /// `limit_workmem_after_req` (MB in JSON, multiple of 2; alias
    /// `req_mem_limit_after_reset`): working memory kept after a request;
    /// **0 means unlimited** (the default). Only active when non-zero and
    /// lower than `max_request_memory`.
    #[serde(serialize_with = "ser_mb")]
    pub limit_workmem_after_req: u64,
    /// `shared_memory` (MB in JSON, multiple of 2): memory shared between
    /// the request VMs, at the end of the address space. Default 0.
    #[serde(serialize_with = "ser_mb")]
    pub shared_memory: u64,
    /// `address_space` (MB in JSON, multiple of 2, at most 512 GB): the
    /// highest guest address. Always at least
    /// `max_memory + shared_memory` (raised automatically).
    #[serde(serialize_with = "ser_mb")]
    pub address_space: u64,
    /// `hugepages`: ask the host for (transparent) huge pages over the whole
    /// main VM's memory.
    pub hugepages: bool,
    /// `hugepage_arena_size` (MB, multiple of 2): the first part of main
    /// memory asked for huge pages; 0 disables.
    #[serde(serialize_with = "ser_mb")]
    pub hugepage_arena_size: u64,
    /// `request_hugepage_arena_size` (MB, multiple of 2; alias
    /// `request_hugepages`): the first part of each request VM's memory
    /// asked for huge pages; 0 disables.
    #[serde(serialize_with = "ser_mb")]
    pub request_hugepage_arena_size: u64,
    /// `split_hugepages`: allow splitting hugepages into 4K pages during
    /// requests. Default true. edgevm's copy-on-write is host-side, at 4 KiB,
    /// whatever the value (docs/CONFIG.md).
    pub split_hugepages: bool,
    /// `transparent_hugepages` (reference extra): ask for transparent huge
    /// pages over all guest memory, main and request VMs.
    pub transparent_hugepages: bool,
    /// `ephemeral`: reset the request VM after every request. Default true.
    pub ephemeral: bool,
    /// `ephemeral_keep_working_memory`: reset but keep the working memory
    /// banks. Default false. Enabling it also enables `ephemeral`.
    pub ephemeral_keep_working_memory: bool,
    /// `control_ephemeral`: the guest may choose ephemeralness with
    /// `sys_make_ephemeral` before it waits for requests. Default false.
    pub control_ephemeral: bool,
    /// `allow_debug`: `sys_breakpoint()` opens a GDB session (docs/DEBUGGING.md).
    pub allow_debug: bool,
    /// `remote_debug_on_exception`: a crash opens a GDB session at the faulting instruction.
    pub remote_debug_on_exception: bool,
    /// `debug_listen` (edgevm): where GDB sessions listen. Default 127.0.0.1:2159.
    pub debug_listen: std::net::SocketAddr,
    /// `allow_net` (edgevm): destinations this program may reach besides public addresses
    /// (`sys_fetch`, sockets; see the `edgevm-netpolicy` crate). Each layer (server, group,
    /// program) **appends**.
    pub allow_net: Vec<String>,
    /// `deny_net` (edgevm): destinations this program may not reach, even public ones or
    /// ones listed in `allow_net`. Each layer **appends**.
    pub deny_net: Vec<String>,
    /// `main_arguments`: arguments after argv\[0\] (`$HOME`/`$PWD`
    /// expanded). A later layer replaces the list.
    pub main_arguments: Vec<String>,
    /// `environment`: extra `KEY=VALUE` variables (`$HOME`/`$PWD`
    /// expanded). Each layer (group, program, override) **appends**.
    pub environment: Vec<String>,
    /// `allowed_paths`: host files the guest may open (docs/CONFIG.md "Files").
    pub allowed_paths: Vec<AllowedPath>,
    /// `current_working_directory`: the guest's cwd. Default `/`.
    pub current_working_directory: String,
    /// `mmap_backed_files`: map guest file mappings without copying.
    /// Default true. Accepted; mappings are copies either way for now.
    pub mmap_backed_files: bool,
    /// `verbose`: verbose loading and syscall diagnostics.
    pub verbose: bool,
    /// `verbose_syscalls`: log every system call of the main VM.
    pub verbose_syscalls: bool,
    /// `verbose_pagetables`: log the page protections after initialization.
    pub verbose_pagetables: bool,
    /// `remapping`: named memory areas at fixed guest addresses (above the
    /// address space), read-write.
    #[serde(serialize_with = "ser_remappings")]
    pub remapping: Vec<Remapping>,
    /// `executable_remapping` (reference extra): like `remapping` but
    /// also executable.
    #[serde(serialize_with = "ser_remappings")]
    pub executable_remapping: Vec<Remapping>,
    /// `blackout_area`: guest areas the program can never map or touch.
    #[serde(serialize_with = "ser_remappings")]
    pub blackout_area: Vec<Remapping>,
    /// `warmup`: mock requests sent before forking the request VMs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// `sha256` (reference extra): expected digest of the program file.
    /// *Not supported yet.*
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `md5` (reference extra): expected digest of the program file.
    /// *Not supported yet.*
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// `download` (reference extra): files fetched before start.
    /// *Not supported yet* (when non-empty).
    pub download: Vec<Download>,
    /// `smp` (reference extra): extra vCPUs per VM, 0..=16.
    /// *Not supported yet* (when non-zero).
    pub smp: u32,
    /// `stdout` (reference extra): the program's stdout goes to the
    /// server's stdout (else all its output goes to the log, stderr).
    pub stdout: bool,
    /// `relocate_fixed_mmap` (reference extra): default true: MAP_FIXED
    /// mappings outside the mmap area are placed elsewhere; false: mmap
    /// hints are honoured and such mappings fail.
    pub relocate_fixed_mmap: bool,
    /// `executable_heap` (reference extra): brk and mmap memory executable, W+X allowed.
    pub executable_heap: bool,
    /// `cold_start_file` (reference extra): VM snapshot file.
    /// *Not supported yet.*
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start_file: Option<PathBuf>,
    /// `server` (reference extra): the TCP server mode (see `tcp_server.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::tcp_server::TcpServerConfig>,
    /// `websocket_server` (reference extra): the TCP server mode with the WebSocket
    /// handshake and framing done by the host (`max_message` set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket_server: Option<crate::tcp_server::TcpServerConfig>,
}

/// One entry of `allowed_paths`: a string `"/path"` (same real and virtual
/// path) or an object `{"real", "virtual"?, "prefix"?, "writable"?,
/// "symlink"?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AllowedPath {
    /// Host path (`$HOME`/`$PWD` expanded).
    pub real: String,
    /// Path the guest sees; equal to `real` when not given.
    #[serde(rename = "virtual")]
    pub virtual_path: String,
    /// Any path starting with `virtual_path` matches.
    pub prefix: bool,
    /// The guest may write (main and storage VMs only).
    pub writable: bool,
    /// `virtual_path` is a symlink resolving to `real`.
    pub symlink: bool,
}

/// One entry of `remapping`, `executable_remapping` or `blackout_area`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remapping {
    /// The entry's name (object form), or `"<key>[<index>]"` (array form).
    pub name: String,
    /// Guest virtual start address (at least 0x20000, 4 KiB aligned).
    pub address: u64,
    /// Size in bytes (non-zero, 4 KiB aligned).
    pub size: u64,
}

impl Remapping {
    /// One past the last address of the area.
    pub fn end(&self) -> u64 {
        self.address + self.size
    }
}

/// The `warmup` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warmup {
    /// `num_requests`: how many mock requests (default 20).
    pub num_requests: u16,
    /// `url`: request path (default `/`).
    pub url: String,
    /// `method`: HTTP method (default `GET`).
    pub method: String,
    /// `headers`: `"Name: value"` strings.
    pub headers: Vec<String>,
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup {
            num_requests: 20,
            url: "/".to_string(),
            method: "GET".to_string(),
            headers: Vec::new(),
        }
    }
}

/// One entry of `download`: `{"uri", "filepath", "sha256"?, "md5"?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Download {
    /// Where to fetch from.
    pub uri: String,
    /// Where to store it (`$HOME`/`$PWD` expanded).
    pub filepath: PathBuf,
    /// Expected SHA-256 (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Expected MD5 (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

/// The defaults every program and group starts from (the built-in group
/// [`DEFAULT_GROUP`]).
pub(crate) static DEFAULTS: LazyLock<ProgramConfig> = LazyLock::new(|| ProgramConfig {
    name: String::new(),
    group: DEFAULT_GROUP.to_string(),
    uri: None,
    filename: None,
    key: String::new(),
    start: false,
    storage: false,
    concurrency: 2,
    max_queue: DEFAULT_MAX_QUEUE,
    free_idle_vms_after: None,
    free_idle_image: false,
    max_boot_time: Duration::from_secs(16),
    max_request_time: Duration::from_secs(8),
    max_storage_time: Duration::from_secs(10),
    max_memory: 256 * MB,
    max_request_memory: 64 * MB,
    limit_workmem_after_req: 0,
    shared_memory: 0,
    address_space: 256 * MB,
    hugepages: false,
    hugepage_arena_size: 0,
    request_hugepage_arena_size: 0,
    split_hugepages: true,
    transparent_hugepages: false,
    ephemeral: true,
    ephemeral_keep_working_memory: false,
    control_ephemeral: false,
    allow_debug: false,
    remote_debug_on_exception: false,
    debug_listen: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        2159,
    )),
    allow_net: Vec::new(),
    deny_net: Vec::new(),
    main_arguments: Vec::new(),
    environment: Vec::new(),
    allowed_paths: Vec::new(),
    current_working_directory: "/".to_string(),
    mmap_backed_files: true,
    verbose: false,
    verbose_syscalls: false,
    verbose_pagetables: false,
    remapping: Vec::new(),
    executable_remapping: Vec::new(),
    blackout_area: Vec::new(),
    warmup: None,
    sha256: None,
    md5: None,
    download: Vec::new(),
    smp: 0,
    stdout: false,
    relocate_fixed_mmap: true,
    executable_heap: false,
    cold_start_file: None,
    server: None,
    websocket_server: None,
});

impl Default for ProgramConfig {
    /// The built-in defaults (group [`DEFAULT_GROUP`], no name, no file).
    fn default() -> Self {
        DEFAULTS.clone()
    }
}

impl ProgramConfig {
    /// Settings for a program run straight from the command line
    /// (`edgevm run ./prog`): the built-in defaults, group
    /// [`DEFAULT_GROUP`], the given name and file.
    pub fn for_run(name: impl Into<String>, filename: impl Into<PathBuf>) -> ProgramConfig {
        ProgramConfig {
            name: name.into(),
            filename: Some(filename.into()),
            ..ProgramConfig::default()
        }
    }

    /// `limit_workmem_after_req` as an option: `None` when unlimited.
    pub fn workmem_limit_after_request(&self) -> Option<u64> {
        (self.limit_workmem_after_req != 0).then_some(self.limit_workmem_after_req)
    }

    /// The settings as pretty-printed JSON in the configuration file's
    /// units (MB, seconds). The output is a valid program object.
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }
}

fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.map_or(0.0, |d| d.as_secs_f64()))
}

fn ser_mb<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(bytes / MB)
}

struct RemapValue<'a>(&'a Remapping);

impl Serialize for RemapValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut seq = s.serialize_seq(Some(2))?;
        seq.serialize_element(&format!("{:#x}", r.address))?;
        if r.size % MB == 0 {
            seq.serialize_element(&(r.size / MB))?;
        } else {
            seq.serialize_element(&format!("{:#x}", r.end()))?;
        }
        seq.end()
    }
}

/// Remappings are written in the object form `{name: ["0xADDR", MB]}` (or
/// `["0xADDR", "0xEND"]` when the size is not a whole number of MB).
fn ser_remappings<S: Serializer>(v: &[Remapping], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(v.len()))?;
    for r in v {
        map.serialize_entry(&r.name, &RemapValue(r))?;
    }
    map.end()
}
