//! The server-wide settings: the top-level `"server"` object of a configuration file, and the
//! same settings given on the `edgevm serve` command line.
//!
//! ```json
//! { "server": { "listen": "0.0.0.0:8080", "max_connections": 5000, "idle_timeout": 30 } }
//! ```
//!
//! Every key is optional; what is not given keeps the server's default (see docs/CONFIG.md).
//! Later files override earlier ones key by key, and command-line flags override files. An
//! unknown key is a warning; a bad value is an error that fails the whole load (the server
//! cannot start with settings it does not understand).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::keys::describe;
use crate::MAX_TIME_SECS;

/// Name of the top-level object holding the server settings. It cannot be a program or a
/// group name.
pub const SERVER_SECTION: &str = "server";

/// Largest `max_body_size`: the program's request-body input area (16 MB).
pub const MAX_BODY_MB: f64 = 16.0;
/// Largest `max_header_size`: the request strings area of a program's I/O area (256 KB).
pub const MAX_HEADER_KB: f64 = 256.0;
/// Largest `max_headers`: what a program's I/O area holds.
pub const MAX_HEADERS: u64 = 512;
/// Largest `max_body_memory` (MB): 1 TB.
pub const MAX_BODY_MEMORY_MB: f64 = 1048576.0;
/// Largest `max_update_size` (MB): a live update's program binary.
pub const MAX_UPDATE_MB: f64 = 1024.0;
/// Largest `max_connections`.
pub const MAX_CONNECTIONS: u64 = 1_000_000;

/// Server-wide settings as configured; `None` = not given (the server's default applies).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerConfig {
    /// `listen`: address and port to listen on (TCP). `None` with [`Self::listen_unix`] set.
    pub listen: Option<SocketAddr>,
    /// `listen` given as `unix:/path`: a Unix-domain socket to listen on instead of TCP.
    pub listen_unix: Option<PathBuf>,
    /// `admin_listen`: a separate listener for the admin endpoints (address or `unix:/path`).
    pub admin_listen: Option<ListenAt>,
    /// `listen_mode`: permission bits of the Unix socket file (octal text such as "0660").
    pub listen_mode: Option<u32>,
    /// `listen_owner`: owner of the Unix socket file, `user`, `user:group` or `:group`
    /// (names or numeric ids; resolved when the server binds).
    pub listen_owner: Option<String>,
    /// `drain_seconds`: after SIGTERM, how long the server keeps serving (health answering
    /// 503) before it stops accepting and finishes in-flight requests. 0 = no drain period.
    pub drain_seconds: Option<Duration>,
    /// `trusted_frontends`: who may pass a program's `arg` in the `X-Edgevm-Arg` header.
    pub trusted_frontends: Option<Vec<TrustedFrontend>>,
    /// `max_connections`: connections served at once; more are refused with 503.
    pub max_connections: Option<usize>,
    /// `header_timeout` (s): time to send a complete request head.
    pub header_timeout: Option<Duration>,
    /// `idle_timeout` (s): time a kept-alive connection may sit idle.
    pub idle_timeout: Option<Duration>,
    /// `body_timeout` (s): time to send the whole request body.
    pub body_timeout: Option<Duration>,
    /// `max_header_size` (KB in JSON, bytes here): largest request head.
    pub max_header_size: Option<usize>,
    /// `max_headers`: most request headers.
    pub max_headers: Option<usize>,
    /// `max_body_size` (MB in JSON, bytes here): largest request body.
    pub max_body_size: Option<usize>,
    /// `max_update_size` (MB in JSON, bytes here): largest live-update body (a program
    /// binary), read only after the update's key matched.
    pub max_update_size: Option<usize>,
    /// `max_connections_per_address`: connections from one client IP address at once.
    pub max_connections_per_address: Option<usize>,
    /// `max_body_memory` (MB in JSON, bytes here): server-wide budget for buffered request
    /// bodies.
    pub max_body_memory: Option<usize>,
    /// `lenient_http`: accept requests RFC 9112 says to refuse (no/duplicate Host, transfer
    /// codings other than chunked).
    pub lenient_http: Option<bool>,
    /// `log_requests`: one info log line per request (default true).
    pub log_requests: Option<bool>,
    /// `error_details`: error responses tell the client why (host paths, crash reports);
    /// by default they say only the status and the request id (default false).
    pub error_details: Option<bool>,
    /// `snapshot_dir`: each program's snapshot file is `<dir>/<program>.snapshot` unless it
    /// has its own `cold_start_file` (programs with storage are not snapshotted).
    pub snapshot_dir: Option<PathBuf>,
    /// `allow_net`: destinations every program may reach besides public addresses (see the
    /// `edgevm-netpolicy` crate); groups and programs add their own.
    pub allow_net: Option<Vec<String>>,
    /// `deny_net`: destinations no program may reach.
    pub deny_net: Option<Vec<String>>,
}

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAt {
    /// A TCP address and port.
    Tcp(SocketAddr),
    /// A Unix-domain socket file.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAt::Tcp(a) => write!(f, "{a}"),
            ListenAt::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parse `listen`-style text: `ADDR:PORT` or `unix:/absolute/path`.
fn listen_at(v: &Value) -> Result<ListenAt, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("must be a string, got {}", describe(v)))?;
    if let Some(path) = s.strip_prefix("unix:") {
        if !path.starts_with('/') || path.len() > 100 || path.contains('\0') {
            return Err(format!(
                "a Unix socket must be an absolute path of at most 100 bytes such as \"unix:/run/edgevm/edgevm.sock\", got {s:?}"
            ));
        }
        Ok(ListenAt::Unix(PathBuf::from(path)))
    } else {
        parse_listen(s).map(ListenAt::Tcp)
    }
}

/// Every key of the server section.
pub const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "listen_mode",
    "listen_owner",
    "drain_seconds",
    "trusted_frontends",
    "max_connections",
    "header_timeout",
    "idle_timeout",
    "body_timeout",
    "max_header_size",
    "max_headers",
    "max_body_size",
    "max_update_size",
    "lenient_http",
    "max_body_memory",
    "max_connections_per_address",
    "log_requests",
    "error_details",
    "snapshot_dir",
    "allow_net",
    "deny_net",
];

fn number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("must be a number, got {n}")),
        other => Err(format!("must be a number, got {}", describe(other))),
    }
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("must be true or false, got {}", describe(v)))
}

/// `HOST:PORT` with HOST an IP address (`[v6]` in brackets) or `localhost` (= 127.0.0.1).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let bad = || {
        format!("must be an address and port such as \"127.0.0.1:8080\", \"localhost:8080\" or \"[::]:80\", or \"unix:/path\", got {s:?}")
    };
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| bad())
}

fn count(v: &Value, max: u64) -> Result<usize, String> {
    let f = number(v)?;
    if f.fract() != 0.0 || !(1.0..=max as f64).contains(&f) {
        return Err(format!("must be a whole number from 1 to {max}, got {v}"));
    }
    Ok(f as usize)
}

fn seconds(v: &Value) -> Result<Duration, String> {
    let f = number(v)?;
    if !(f > 0.0 && f <= MAX_TIME_SECS) {
        return Err(format!(
            "must be a number of seconds greater than 0 and at most {MAX_TIME_SECS}, got {v}"
        ));
    }
    Ok(Duration::from_secs_f64(f))
}

/// One entry of `trusted_frontends`: an address, a network (`10.0.0.0/8`, `fd00::/8`), or
/// `"unix"` (clients of the Unix socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedFrontend {
    /// Addresses whose first `prefix` bits equal those of the address.
    Net(IpAddr, u8),
    /// Connections to the Unix socket.
    Unix,
}

impl TrustedFrontend {
    /// Parse `"127.0.0.1"`, `"10.0.0.0/8"`, `"::1"`, `"fd00::/8"` or `"unix"`.
    pub fn parse(s: &str) -> Result<TrustedFrontend, String> {
        if s == "unix" {
            return Ok(TrustedFrontend::Unix);
        }
        let bad = || {
            format!("must be an address, a network such as \"10.0.0.0/8\", or \"unix\", got {s:?}")
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(TrustedFrontend::Net(addr, prefix))
    }

    /// Whether `ip` (IPv4-mapped IPv6 addresses count as IPv4) is in this network.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        let TrustedFrontend::Net(net, prefix) = self else {
            return false;
        };
        let bits = |a: IpAddr| -> (u128, u32) {
            match a.to_canonical() {
                IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((n, nlen), (a, alen)) = (bits(*net), bits(ip));
        if nlen != alen {
            return false;
        }
        let p = u32::from(*prefix);
        let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
        n & mask == a & mask
    }

    /// Whether this entry is `"unix"`.
    pub fn is_unix(&self) -> bool {
        matches!(self, TrustedFrontend::Unix)
    }
}

impl std::fmt::Display for TrustedFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustedFrontend::Unix => f.write_str("unix"),
            TrustedFrontend::Net(a, p) => write!(f, "{a}/{p}"),
        }
    }
}

/// A user or group: a name (letters, digits, `_`, `-`, `.`; not starting with `-`) or a
/// numeric id.
fn valid_id_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// `listen_owner`: `user`, `user:group` or `:group`.
fn owner(v: &Value) -> Result<String, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("must be a string, got {}", describe(v)))?;
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let ok = match group {
        None => valid_id_name(user),
        Some(g) => valid_id_name(g) && (user.is_empty() || valid_id_name(user)),
    };
    if !ok {
        return Err(format!(
            "must be \"user\", \"user:group\" or \":group\" (names or numeric ids), got {s:?}"
        ));
    }
    Ok(s.to_string())
}

/// `listen_mode`: octal permission bits as text ("0660", "660"), at most 0777.
fn mode(v: &Value) -> Result<u32, String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "must be octal permission bits as a string such as \"0660\", got {}",
            describe(v)
        )
    })?;
    let digits = s.trim();
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && digits.len() <= 4 && m <= 0o777 => Ok(m),
        _ => Err(format!(
            "must be octal permission bits from \"0\" to \"0777\" such as \"0660\", got {s:?}"
        )),
    }
}

/// A size in `unit` bytes (fractions allowed), above 0 and at most `max` units.
fn size(v: &Value, unit: u64, name: &str, max: f64) -> Result<usize, String> {
    let f = number(v)?;
    let bytes = (f * unit as f64).round();
    if !(f > 0.0 && f <= max) || bytes < 1.0 {
        return Err(format!(
            "must be a number of {name} greater than 0 and at most {max}, got {v}"
        ));
    }
    Ok(bytes as usize)
}

impl ServerConfig {
    /// Apply one key; `Err` is the reason the value is refused.
    fn set(&mut self, key: &str, v: &Value) -> Result<bool, String> {
        match key {
            "listen" => match listen_at(v)? {
                ListenAt::Unix(path) => {
                    self.listen_unix = Some(path);
                    self.listen = None;
                }
                ListenAt::Tcp(addr) => {
                    self.listen = Some(addr);
                    self.listen_unix = None;
                }
            },
            "admin_listen" => self.admin_listen = Some(listen_at(v)?),
            "listen_mode" => self.listen_mode = Some(mode(v)?),
            "trusted_frontends" => {
                let list = v.as_array().ok_or_else(|| {
                    format!(
                        "must be a list such as [\"127.0.0.1\", \"10.0.0.0/8\", \"unix\"], got {}",
                        describe(v)
                    )
                })?;
                let mut out = Vec::new();
                for e in list {
                    let s = e
                        .as_str()
                        .ok_or_else(|| format!("entries must be strings, got {}", describe(e)))?;
                    out.push(TrustedFrontend::parse(s)?);
                }
                self.trusted_frontends = Some(out);
            }
            "listen_owner" => self.listen_owner = Some(owner(v)?),
            "drain_seconds" => {
                let f = number(v)?;
                if !(0.0..=MAX_TIME_SECS).contains(&f) {
                    return Err(format!(
                        "must be a number of seconds from 0 to {MAX_TIME_SECS}, got {v}"
                    ));
                }
                self.drain_seconds = Some(Duration::from_secs_f64(f));
            }
            "max_connections" => self.max_connections = Some(count(v, MAX_CONNECTIONS)?),
            "header_timeout" => self.header_timeout = Some(seconds(v)?),
            "idle_timeout" => self.idle_timeout = Some(seconds(v)?),
            "body_timeout" => self.body_timeout = Some(seconds(v)?),
            "max_header_size" => {
                self.max_header_size = Some(size(v, 1 << 10, "KB", MAX_HEADER_KB)?)
            }
            "max_headers" => self.max_headers = Some(count(v, MAX_HEADERS)?),
            "max_body_size" => self.max_body_size = Some(size(v, 1 << 20, "MB", MAX_BODY_MB)?),
            "max_connections_per_address" => {
                self.max_connections_per_address = Some(count(v, MAX_CONNECTIONS)?)
            }
            "max_body_memory" => {
                self.max_body_memory = Some(size(v, 1 << 20, "MB", MAX_BODY_MEMORY_MB)?)
            }
            "lenient_http" => {
                self.lenient_http = Some(
                    v.as_bool()
                        .ok_or_else(|| format!("must be true or false, got {}", describe(v)))?,
                )
            }
            "max_update_size" => {
                self.max_update_size = Some(size(v, 1 << 20, "MB", MAX_UPDATE_MB)?)
            }
            "log_requests" => self.log_requests = Some(boolean(v)?),
            "error_details" => self.error_details = Some(boolean(v)?),
            "snapshot_dir" => {
                let d = v
                    .as_str()
                    .filter(|d| !d.is_empty() && !d.contains('\0'))
                    .ok_or_else(|| format!("must be a directory path, got {}", describe(v)))?;
                self.snapshot_dir = Some(PathBuf::from(d));
            }
            "allow_net" => self.allow_net = Some(crate::keys::net_entries(v)?),
            "deny_net" => self.deny_net = Some(crate::keys::net_entries(v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Apply a `"server"` object from `source`. Unknown keys are returned as warnings; bad
    /// values fail (all of them reported).
    pub(crate) fn apply(
        &mut self,
        obj: &Map<String, Value>,
        source: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        if let Some(k) = ["group", "uri", "filename"]
            .iter()
            .find(|k| obj.contains_key(**k))
        {
            return Err(ConfigError::Structure {
                source_name: source.to_string(),
                message: format!(
                    "'{SERVER_SECTION}' holds the server settings, so it cannot be a program (it has '{k}'); give the program another name"
                ),
            });
        }
        for (key, value) in obj {
            match self.set(key, value) {
                Ok(true) => {}
                Ok(false) => warnings.push(format!(
                    "Unknown configuration key for '{SERVER_SECTION}': {key} ({source}){}; known keys: {}",
                    crate::keys::did_you_mean(key, SERVER_KEYS.iter().copied()),
                    SERVER_KEYS.join(", ")
                )),
                Err(message) => errors.push(ConfigError::InvalidValue {
                    source_name: source.to_string(),
                    name: SERVER_SECTION.to_string(),
                    key: key.clone(),
                    message,
                }),
            }
        }
        match ConfigError::combine(errors) {
            Some(e) => Err(e),
            None => Ok(warnings),
        }
    }

    /// Apply a setting given as text (a command-line flag), validated like the JSON key:
    /// `listen`, `listen_mode` and `listen_owner` are text, every other key a number in the
    /// key's unit.
    pub fn set_from_str(&mut self, key: &str, text: &str) -> Result<(), ConfigError> {
        let value = if matches!(
            key,
            "listen" | "listen_mode" | "listen_owner" | "snapshot_dir"
        ) {
            Value::String(text.to_string())
        } else if key == "trusted_frontends" {
            Value::Array(
                text.split(',')
                    .map(|s| Value::String(s.trim().to_string()))
                    .collect(),
            )
        } else if let Ok(b) = text.trim().parse::<bool>() {
            Value::Bool(b)
        } else {
            serde_json::from_str::<serde_json::Number>(text.trim())
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(text.to_string()))
        };
        let err = |message: String| ConfigError::InvalidValue {
            source_name: "command line".to_string(),
            name: SERVER_SECTION.to_string(),
            key: key.to_string(),
            message,
        };
        match self.set(key, &value) {
            Ok(true) => Ok(()),
            Ok(false) => Err(err("is not a server setting".to_string())),
            Err(m) => Err(err(m)),
        }
    }

    /// Checks across keys, once every file and flag is applied: `listen_mode` and
    /// `listen_owner` only mean something for a `unix:` listen address.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.listen_unix.is_none() {
            for (key, given) in [
                ("listen_mode", self.listen_mode.is_some()),
                ("listen_owner", self.listen_owner.is_some()),
            ] {
                if given {
                    return Err(ConfigError::InvalidValue {
                        source_name: "configuration".to_string(),
                        name: SERVER_SECTION.to_string(),
                        key: key.to_string(),
                        message:
                            "applies to a Unix socket only: set \"listen\": \"unix:/path\" too"
                                .to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == ServerConfig::default()
    }

    /// The settings given, as a `"server"` object in configuration units.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let secs = |d: Duration| serde_json::json!(d.as_secs_f64());
        if let Some(a) = self.listen {
            m.insert("listen".into(), a.to_string().into());
        }
        if let Some(p) = &self.listen_unix {
            m.insert("listen".into(), format!("unix:{}", p.display()).into());
        }
        if let Some(a) = &self.admin_listen {
            m.insert("admin_listen".into(), a.to_string().into());
        }
        if let Some(mode) = self.listen_mode {
            m.insert("listen_mode".into(), format!("{mode:04o}").into());
        }
        if let Some(o) = &self.listen_owner {
            m.insert("listen_owner".into(), o.clone().into());
        }
        if let Some(d) = self.drain_seconds {
            m.insert("drain_seconds".into(), secs(d));
        }
        if let Some(t) = &self.trusted_frontends {
            let list: Vec<Value> = t.iter().map(|t| t.to_string().into()).collect();
            m.insert("trusted_frontends".into(), list.into());
        }
        if let Some(n) = self.max_connections {
            m.insert("max_connections".into(), n.into());
        }
        if let Some(d) = self.header_timeout {
            m.insert("header_timeout".into(), secs(d));
        }
        if let Some(d) = self.idle_timeout {
            m.insert("idle_timeout".into(), secs(d));
        }
        if let Some(d) = self.body_timeout {
            m.insert("body_timeout".into(), secs(d));
        }
        if let Some(b) = self.max_header_size {
            m.insert(
                "max_header_size".into(),
                serde_json::json!(b as f64 / 1024.0),
            );
        }
        if let Some(n) = self.max_headers {
            m.insert("max_headers".into(), n.into());
        }
        if let Some(b) = self.max_body_size {
            m.insert(
                "max_body_size".into(),
                serde_json::json!(b as f64 / (1 << 20) as f64),
            );
        }
        if let Some(n) = self.max_connections_per_address {
            m.insert("max_connections_per_address".into(), n.into());
        }
        if let Some(b) = self.max_body_memory {
            m.insert(
                "max_body_memory".into(),
                serde_json::json!(b as f64 / (1 << 20) as f64),
            );
        }
        if let Some(b) = self.lenient_http {
            m.insert("lenient_http".into(), b.into());
        }
        if let Some(b) = self.max_update_size {
            m.insert(
                "max_update_size".into(),
                serde_json::json!(b as f64 / (1 << 20) as f64),
            );
        }
        if let Some(b) = self.log_requests {
            m.insert("log_requests".into(), b.into());
        }
        if let Some(b) = self.error_details {
            m.insert("error_details".into(), b.into());
        }
        if let Some(d) = &self.snapshot_dir {
            m.insert("snapshot_dir".into(), d.to_string_lossy().into());
        }
        if let Some(l) = &self.allow_net {
            m.insert("allow_net".into(), l.clone().into());
        }
        if let Some(l) = &self.deny_net {
            m.insert("deny_net".into(), l.clone().into());
        }
        Value::Object(m)
    }
}
