//! edgevm-config: the JSON configuration of groups and programs (the
//! "JSON glossary" of the Compute VMOD), from text to validated, effective
//! per-program settings.
//!
//! This crate owns: reading one or more JSON-with-comments files, telling
//! programs from groups, layering (built-in defaults → group → program →
//! later files' overrides), validating every key (type, range, granularity),
//! deciding which keys edgevm supports yet, unknown-key warnings, and
//! rendering the effective settings for `edgevm check`. It does not fetch,
//! load or run programs.
//!
//! # File format
//!
//! * JSON with `//` and `/* */` comments. Trailing commas are **rejected**
//!   with an error naming file, line and column
//!   (`compute.json:3:28: trailing comma`, pointing at the comma).
//! * The top level is an object. Each entry is an object. An entry with a
//!   `group`, `uri` or `filename` key is a **program**; any other entry is a
//!   **group** — except that, in a later file, an entry named like an
//!   existing program is an override of that program (like
//!   `compute.configure`).
//! * The top-level entry [`SERVER_SECTION`] (`"server"`) is not a program or
//!   group: it holds the server-wide settings ([`ServerConfig`]: listen address,
//!   connection limit, timeouts, request size limits). Its unknown keys are
//!   warnings; a bad value fails the whole load.
//! * The group [`DEFAULT_GROUP`] (`"test"`) always exists, with the built-in
//!   defaults; a program without `group` belongs to it. Defining a `"test"`
//!   group in a file changes it.
//! * Groups and programs are separate name spaces (a program may be named
//!   like a group).
//!
//! # Layering
//!
//! With several files, all group objects of the same name are applied in file
//! order (built-in defaults first), then every program starts from a copy of
//! its group's final settings and applies its objects in file order. A later
//! object may repeat the program's `group` but not change it. Within one
//! object the order of keys does not matter. `environment` appends (group,
//! then program, then overrides), every other key replaces.
//! `ephemeral_keep_working_memory: true` also enables `ephemeral`, and an
//! object that sets `ephemeral: false` also clears
//! `ephemeral_keep_working_memory` (setting both that way in one object is an
//! error). `address_space` is raised to `max_memory + shared_memory` when
//! smaller.
//!
//! # Units and validation
//!
//! Sizes are megabytes in JSON (whole numbers; `64.0` is accepted, `64.5`
//! is not) and bytes in [`ProgramConfig`]. Sizes with a 2 MB granularity
//! that are not a multiple of 2 are **rejected**, not rounded. Times are
//! seconds (fractions allowed, > 0, at most one day) and [`Duration`]s in
//! [`ProgramConfig`]. `$HOME` and `$PWD` are expanded in `filename`,
//! `main_arguments`, `environment`, `allowed_paths`,
//! `current_working_directory`, `cold_start_file` and `download` paths (see
//! [`PathVars`]).
//!
//! # Errors and warnings
//!
//! A file that cannot be read or parsed fails the whole load. A bad value
//! fails only its program (or, for a group, the programs of that group): the
//! error is kept in [`Config::programs`] so a server can keep serving the
//! good programs and log the bad ones ([`Config::log_errors`]). Unknown keys
//! are warnings ([`Config::warnings`], also logged with `tracing::warn!`).
//! Keys edgevm does not implement yet are accepted at their default value
//! and fail the program otherwise (see [`Support`], [`key_support`]).
//!
//! [`Duration`]: std::time::Duration

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;

use json_comments::CommentSettings;
use serde_json::{Map, Value};

mod error;
mod expand;
mod json;
mod keys;
mod program;
mod routes;
mod server;
mod tcp_server;
#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use expand::PathVars;
pub use keys::Support;
pub use program::{
    AllowedPath, Download, ProgramConfig, Remapping, Warmup, DEFAULT_GROUP, DEFAULT_MAX_QUEUE,
    MAX_ADDRESS_SPACE, MAX_CONCURRENCY, MAX_QUEUE, MAX_SMP, MAX_TIME_SECS, MB,
};
pub use routes::{ChainStep, Route, FETCH_STEP, ROUTES_SECTION};
pub use server::{ListenAt, ServerConfig, TrustedFrontend, SERVER_KEYS, SERVER_SECTION};
pub use tcp_server::{TcpListen, TcpServerConfig};

use json::{comma_before, DuplicateKeys};
use keys::{Ctx, Draft, KEYS};

/// A GDB session address (`debug_listen`, `edgevm run --gdb=ADDR`): `IP:PORT`, `[IPv6]:PORT`
/// or `localhost:PORT` (loopback).
pub fn parse_debug_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(p) = port.parse::<u16>() {
            return Ok((std::net::Ipv4Addr::LOCALHOST, p).into());
        }
    }
    s.parse()
        .map_err(|_| format!("must be an address and port such as \"127.0.0.1:2159\", got {s:?}"))
}

/// Whether a configuration key (canonical name or alias) is known, and if
/// so whether edgevm supports it. `None` for unknown keys.
pub fn key_support(key: &str) -> Option<Support> {
    keys::lookup(key).map(|k| k.support)
}

/// All known keys (canonical names) with their support status.
pub fn known_keys() -> impl Iterator<Item = (&'static str, Support)> {
    KEYS.iter().map(|k| (k.name, k.support))
}

/// A loaded configuration: every program and group with either its
/// effective settings or the reason it cannot be used.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Names of the sources (files) in load order.
    pub sources: Vec<String>,
    /// Every group (including the built-in [`DEFAULT_GROUP`]) with its
    /// settings (as a template `ProgramConfig` whose `name` and `group` are
    /// the group's name) or its error.
    pub groups: BTreeMap<String, Result<ProgramConfig, ConfigError>>,
    /// Every program with its effective settings or its error.
    pub programs: BTreeMap<String, Result<ProgramConfig, ConfigError>>,
    /// Warnings (unknown keys, …), each naming the program/group and file.
    pub warnings: Vec<String>,
    /// Server-wide settings from the top-level [`SERVER_SECTION`] object (later files
    /// override earlier ones key by key).
    pub server: ServerConfig,
    /// The top-level [`ROUTES_SECTION`] lists of every file, in order (first match wins).
    pub routes: Vec<Route>,
}

/// One object from one file, for one program or group.
struct Layer {
    source: String,
    obj: Map<String, Value>,
}

impl Config {
    /// Load and merge configuration files, later files overriding earlier
    /// ones (see the crate documentation). `$HOME`/`$PWD` come from the
    /// process ([`PathVars::from_env`]).
    ///
    /// Fails only if a file cannot be read or is not a well-formed
    /// configuration document; per-program problems are in
    /// [`Config::programs`].
    pub fn load_files(paths: &[PathBuf]) -> Result<Config, ConfigError> {
        let mut sources = Vec::with_capacity(paths.len());
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            sources.push((path.display().to_string(), text));
        }
        Config::from_sources(&sources, &PathVars::from_env())
    }

    /// Load a configuration from text; `source_name` (e.g. the file name) is
    /// used in messages. `$HOME`/`$PWD` come from the process.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        Config::from_sources(
            &[(source_name.to_string(), text.to_string())],
            &PathVars::from_env(),
        )
    }

    /// The general form: `(source_name, text)` pairs in override order, and
    /// explicit values for `$HOME`/`$PWD`.
    pub fn from_sources(
        sources: &[(String, String)],
        vars: &PathVars,
    ) -> Result<Config, ConfigError> {
        let mut group_layers: BTreeMap<String, Vec<Layer>> = BTreeMap::new();
        let mut program_layers: BTreeMap<String, Vec<Layer>> = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut server = ServerConfig::default();
        let mut all_routes = Vec::new();

        for (source, text) in sources {
            let doc = parse_document(text, source, &mut warnings)?;
            for (name, value) in doc {
                if name == ROUTES_SECTION {
                    let r = routes::parse(&value).map_err(|message| ConfigError::Structure {
                        source_name: source.clone(),
                        message,
                    })?;
                    all_routes.extend(r);
                    continue;
                }
                if name == SERVER_SECTION {
                    let Value::Object(obj) = &value else {
                        return Err(ConfigError::Structure {
                            source_name: source.clone(),
                            message: format!(
                                "'{SERVER_SECTION}' must be an object of server settings, got {}",
                                keys::describe(&value)
                            ),
                        });
                    };
                    for w in server.apply(obj, source)? {
                        tracing::warn!("{w}");
                        warnings.push(w);
                    }
                    continue;
                }
                let Value::Object(obj) = value else {
                    return Err(ConfigError::Structure {
                        source_name: source.clone(),
                        message: format!(
                            "'{name}' must be an object (a program or a group), got {}",
                            keys::describe(&value)
                        ),
                    });
                };
                if name.is_empty() {
                    return Err(ConfigError::Structure {
                        source_name: source.clone(),
                        message: "a program or group name must not be empty".to_string(),
                    });
                }
                let layer = Layer {
                    source: source.clone(),
                    obj,
                };
                let is_program = ["group", "uri", "filename"]
                    .iter()
                    .any(|k| layer.obj.contains_key(*k))
                    || program_layers.contains_key(&name);
                if is_program {
                    program_layers.entry(name).or_default().push(layer);
                } else {
                    group_layers.entry(name).or_default().push(layer);
                }
            }
        }

        let mut config = Config {
            sources: sources.iter().map(|(s, _)| s.clone()).collect(),
            warnings,
            server,
            routes: all_routes,
            ..Config::default()
        };

        // Groups: built-in defaults, then every layer in file order.
        let mut group_drafts: BTreeMap<String, Result<Draft, ConfigError>> = BTreeMap::new();
        group_drafts.insert(DEFAULT_GROUP.to_string(), Ok(Draft::new()));
        for name in group_layers.keys() {
            group_drafts
                .entry(name.clone())
                .or_insert_with(|| Ok(Draft::new()));
        }
        for (name, layers) in &group_layers {
            let Some(Ok(draft)) = group_drafts.get_mut(name) else {
                continue;
            };
            draft.cfg.name = name.clone();
            draft.cfg.group = name.clone();
            let mut errors = Vec::new();
            for layer in layers {
                errors.extend(apply_layer(draft, layer, name, vars, &mut config.warnings));
            }
            if let Some(err) = ConfigError::combine(errors) {
                group_drafts.insert(name.clone(), Err(err));
            }
        }
        for (name, draft) in &group_drafts {
            let result = match draft {
                Ok(d) => {
                    let mut d = d.clone();
                    d.cfg.name = name.clone();
                    d.cfg.group = name.clone();
                    finalize(d, false)
                }
                Err(e) => Err(e.clone()),
            };
            config.groups.insert(name.clone(), result);
        }

        // Programs: a copy of the group, then every layer in file order.
        for (name, layers) in &program_layers {
            let result = build_program(name, layers, &group_drafts, vars, &mut config.warnings);
            config.programs.insert(name.clone(), result);
        }

        tcp_server::refuse_shared_listeners(&mut config.programs, &config.server);

        let unknown = routes::unknown_programs(&config.routes, |p| config.programs.contains_key(p));
        if let Some((i, p)) = unknown.first() {
            return Err(ConfigError::Structure {
                source_name: config.sources.join(", "),
                message: format!("route {}: no program '{p}' is configured", i + 1),
            });
        }

        if config.programs.is_empty() && !sources.is_empty() {
            let message = format!("{}: no programs defined", config.sources.join(", "));
            tracing::warn!("{message}");
            config.warnings.push(message);
        }
        Ok(config)
    }

    /// The effective settings of a program, if it exists and is valid.
    pub fn program(&self, name: &str) -> Option<&ProgramConfig> {
        self.programs.get(name).and_then(|r| r.as_ref().ok())
    }

    /// The valid programs, by name.
    pub fn valid_programs(&self) -> impl Iterator<Item = (&str, &ProgramConfig)> {
        self.programs
            .iter()
            .filter_map(|(n, r)| r.as_ref().ok().map(|c| (n.as_str(), c)))
    }

    /// The programs that failed, by name, with their errors.
    pub fn errors(&self) -> impl Iterator<Item = (&str, &ConfigError)> {
        self.programs
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| (n.as_str(), e)))
    }

    /// Whether any program or group failed.
    pub fn has_errors(&self) -> bool {
        self.programs.values().any(Result::is_err) || self.groups.values().any(Result::is_err)
    }

    /// Log every failed program and group with `tracing::error!` (warnings
    /// were already logged while loading).
    pub fn log_errors(&self) {
        for (name, err) in self.group_errors() {
            tracing::error!(group = name, "invalid group: {err}");
        }
        for (name, err) in self.errors() {
            tracing::error!(program = name, "program will not be served: {err}");
        }
    }

    fn group_errors(&self) -> impl Iterator<Item = (&str, &ConfigError)> {
        self.groups
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| (n.as_str(), e)))
    }

    /// A human-readable report for `edgevm check`: a summary line, the
    /// warnings, the errors, then the effective settings of every valid
    /// program as a JSON object (in configuration units, so it can be used
    /// as a configuration file itself).
    pub fn render_check(&self) -> String {
        let ok = self.valid_programs().count();
        let failed = self.programs.len() - ok;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} program(s): {ok} ok, {failed} failed; {} group(s); {} warning(s); sources: {}",
            self.programs.len(),
            self.groups.len(),
            self.warnings.len(),
            if self.sources.is_empty() {
                "(none)".to_string()
            } else {
                self.sources.join(", ")
            }
        );
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let mut write_error = |what: &str, name: &str, err: &ConfigError| {
            if let ConfigError::Multiple(list) = err {
                let _ = writeln!(out, "error: {what} '{name}': {} errors:", list.len());
                for e in list {
                    let _ = writeln!(out, "  {e}");
                }
            } else {
                // The error text usually names the program already: say it once.
                let text = err.to_string().replacen(&format!("{name}: "), "", 1);
                let _ = writeln!(out, "error: {what} '{name}': {text}");
            }
        };
        for (name, err) in self.group_errors() {
            write_error("group", name, err);
        }
        for (name, err) in self.errors() {
            write_error("program", name, err);
        }
        if !self.server.is_empty() {
            let _ = writeln!(out, "server settings: {}", self.server.to_json());
        }
        let valid: BTreeMap<&str, &ProgramConfig> = self.valid_programs().collect();
        let json =
            serde_json::to_string_pretty(&valid).unwrap_or_else(|e| format!("<unprintable: {e}>"));
        let _ = writeln!(out, "effective settings:\n{json}");
        out
    }
}

/// Strip comments (keeping every byte position, including newlines inside
/// block comments) and parse the top-level object.
fn parse_document(
    text: &str,
    source: &str,
    warnings: &mut Vec<String>,
) -> Result<Map<String, Value>, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut stripped = Vec::with_capacity(text.len());
    CommentSettings::c_style()
        .strip_comments(text.as_bytes())
        .read_to_end(&mut stripped)
        .map_err(|_| ConfigError::Structure {
            source_name: source.to_string(),
            message: "invalid comment: a '/' outside a string must start '//' or '/*'".to_string(),
        })?;
    // json_comments blanks out block comments including their newlines;
    // put the newlines back so that line numbers stay right.
    for (out, orig) in stripped.iter_mut().zip(text.as_bytes()) {
        if *orig == b'\n' {
            *out = b'\n';
        }
    }
    let value: Value = serde_json::from_slice(&stripped).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        // serde_json reports a trailing comma at the token after it; point at the comma.
        let (line, column) = if message == "trailing comma" {
            comma_before(&stripped, e.line(), e.column()).unwrap_or((e.line(), e.column()))
        } else {
            (e.line(), e.column())
        };
        ConfigError::Syntax {
            source_name: source.to_string(),
            line,
            column,
            message,
        }
    })?;
    match value {
        Value::Object(map) => {
            // serde_json keeps the last of duplicate keys silently; say so.
            if let Ok(DuplicateKeys(dups)) = serde_json::from_slice::<DuplicateKeys>(&stripped) {
                for dup in dups {
                    let message =
                        format!("{source}: {dup} is given more than once; the last one is used");
                    tracing::warn!("{message}");
                    warnings.push(message);
                }
            }
            Ok(map)
        }
        other => Err(ConfigError::Structure {
            source_name: source.to_string(),
            message: format!(
                "the top level must be an object of programs and groups, got {}",
                keys::describe(&other)
            ),
        }),
    }
}

/// Apply one object's keys to a draft; returns the errors found.
fn apply_layer(
    draft: &mut Draft,
    layer: &Layer,
    name: &str,
    vars: &PathVars,
    warnings: &mut Vec<String>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut seen: BTreeMap<&'static str, &str> = BTreeMap::new();
    let mut ctx = Ctx {
        name,
        source: &layer.source,
        vars,
        warnings,
    };
    let invalid = |key: &str, message: String| ConfigError::InvalidValue {
        source_name: layer.source.clone(),
        name: name.to_string(),
        key: key.to_string(),
        message,
    };
    for (key, value) in &layer.obj {
        let Some(spec) = keys::lookup(key) else {
            ctx.warn(format!(
                "Unknown configuration key for '{name}': {key} ({}){}",
                layer.source,
                keys::did_you_mean(key, keys::all_key_names())
            ));
            continue;
        };
        if let Some(other) = seen.insert(spec.name, key) {
            errors.push(invalid(
                key,
                format!("is given twice (as '{other}' and '{key}')"),
            ));
            continue;
        }
        if let Err(message) = (spec.apply)(draft, value, &mut ctx) {
            errors.push(invalid(key, message));
        }
    }

    // ephemeral_keep_working_memory implies ephemeral; turning ephemeral off
    // turns keep-working-memory off.
    let ekwm_set = seen.contains_key("ephemeral_keep_working_memory");
    let ephemeral_set = seen.contains_key("ephemeral");
    if errors.is_empty() {
        let cfg = &mut draft.cfg;
        if ekwm_set && cfg.ephemeral_keep_working_memory {
            if ephemeral_set && !cfg.ephemeral {
                errors.push(ConfigError::Inconsistent {
                    name: name.to_string(),
                    message: format!(
                        "'ephemeral_keep_working_memory': true requires 'ephemeral', \
                         but 'ephemeral' is false ({})",
                        layer.source
                    ),
                });
            }
            cfg.ephemeral = true;
        } else if ephemeral_set && !cfg.ephemeral {
            cfg.ephemeral_keep_working_memory = false;
        }
    }
    errors
}

fn group_key(layer: &Layer, program: &str) -> Result<Option<String>, ConfigError> {
    match layer.obj.get("group") {
        None => Ok(None),
        Some(v) => keys::non_empty_string(v)
            .map(|s| Some(s.to_string()))
            .map_err(|message| ConfigError::InvalidValue {
                source_name: layer.source.clone(),
                name: program.to_string(),
                key: "group".to_string(),
                message,
            }),
    }
}

/// First path segments the server keeps for itself (`/metrics`, `/_edgevm/...`): no program
/// can have these names (edgevm-server's router uses the same list).
pub const RESERVED_PROGRAM_NAMES: &[&str] = &["metrics", "_edgevm"];

/// Why no request could reach a program called `name`, if none could: a reserved name, a
/// `.`/`..` segment, or a character that a URL path segment cannot carry unescaped (the
/// router compares the first segment as sent, without percent-decoding).
pub fn unreachable_name(name: &str) -> Option<String> {
    if RESERVED_PROGRAM_NAMES.contains(&name) {
        return Some(format!(
            "the program name '{name}' is reserved for the server's admin paths (/metrics, /_edgevm/...); choose another name"
        ));
    }
    if name == "." || name == ".." {
        return Some(format!(
            "'{name}' cannot be a program name (a dot segment is refused in URLs)"
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c);
    if let Some(c) = name.chars().find(|&c| !ok(c)) {
        return Some(format!(
            "the program name {name:?} cannot be reached by a URL: it contains {c:?}; use letters, digits and - . _ ~ (a program is requested as /<name>/...)"
        ));
    }
    None
}

fn build_program(
    name: &str,
    layers: &[Layer],
    groups: &BTreeMap<String, Result<Draft, ConfigError>>,
    vars: &PathVars,
    warnings: &mut Vec<String>,
) -> Result<ProgramConfig, ConfigError> {
    if let Some(message) = unreachable_name(name) {
        return Err(ConfigError::UnreachableName {
            program: name.to_string(),
            message,
        });
    }
    let first = layers.first().expect("a program has at least one layer");
    let group = group_key(first, name)?.unwrap_or_else(|| DEFAULT_GROUP.to_string());
    for layer in &layers[1..] {
        if let Some(other) = group_key(layer, name)? {
            if other != group {
                return Err(ConfigError::GroupChanged {
                    program: name.to_string(),
                    from: group,
                    to: other,
                    source_name: layer.source.clone(),
                });
            }
        }
    }
    let mut draft = match groups.get(&group) {
        None => {
            let hint = match keys::did_you_mean(&group, groups.keys().map(String::as_str)) {
                h if h.is_empty() => format!(
                    " (groups: {})",
                    groups.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                h => h,
            };
            return Err(ConfigError::UnknownGroup {
                program: name.to_string(),
                group,
                hint,
            });
        }
        Some(Err(e)) => {
            return Err(ConfigError::GroupInvalid {
                program: name.to_string(),
                group,
                error: Box::new(e.clone()),
            })
        }
        Some(Ok(d)) => d.clone(),
    };
    draft.cfg.name = name.to_string();
    draft.cfg.group = group;
    let mut errors = Vec::new();
    for layer in layers {
        errors.extend(apply_layer(&mut draft, layer, name, vars, warnings));
    }
    if let Some(err) = ConfigError::combine(errors) {
        return Err(err);
    }
    finalize(draft, true)
}

/// Cross-key checks and derived values, once all layers are applied.
fn finalize(draft: Draft, is_program: bool) -> Result<ProgramConfig, ConfigError> {
    let mut cfg = draft.cfg;
    let mut errors = Vec::new();
    let inconsistent = |message: String| ConfigError::Inconsistent {
        name: cfg.name.clone(),
        message,
    };

    let needed = cfg.max_memory + cfg.shared_memory;
    if needed > MAX_ADDRESS_SPACE {
        errors.push(inconsistent(format!(
            "'max_memory' + 'shared_memory' ({} MB) exceed the 512 GB address space",
            needed / MB
        )));
    }
    let address_space = draft.address_space.unwrap_or(0).max(needed);
    if cfg.hugepage_arena_size > cfg.max_memory {
        errors.push(inconsistent(format!(
            "'hugepage_arena_size' ({} MB) cannot be larger than 'max_memory' ({} MB)",
            cfg.hugepage_arena_size / MB,
            cfg.max_memory / MB
        )));
    }
    if cfg.request_hugepage_arena_size > cfg.max_request_memory {
        errors.push(inconsistent(format!(
            "'request_hugepage_arena_size' ({} MB) cannot be larger than \
             'max_request_memory' ({} MB)",
            cfg.request_hugepage_arena_size / MB,
            cfg.max_request_memory / MB
        )));
    }
    if is_program && cfg.filename.is_none() && cfg.uri.is_none() {
        errors.push(inconsistent(
            "a program needs a 'filename' or a 'uri'".to_string(),
        ));
    }
    if (cfg.sha256.is_some() || cfg.md5.is_some()) && cfg.uri.is_none() && is_program {
        errors.push(inconsistent(
            "'sha256'/'md5' pin the program downloaded from 'uri' (a cached file with that \
             digest is used without downloading): this program has no 'uri'"
                .to_string(),
        ));
    }
    if cfg.free_idle_image && cfg.free_idle_vms_after.is_none() {
        errors.push(inconsistent(
            "'free_idle_image' needs 'free_idle_vms_after' (the image goes after the request VMs)"
                .to_string(),
        ));
    }
    if cfg.free_idle_image && cfg.storage {
        errors.push(inconsistent(
            "'free_idle_image' cannot be used with 'storage': such a program has no snapshot"
                .to_string(),
        ));
    }
    if cfg.storage && cfg.cold_start_file.is_some() {
        errors.push(inconsistent(
            "'cold_start_file' cannot be used with 'storage': a snapshot does not hold the \
             storage VM's state"
                .to_string(),
        ));
    }
    cfg.address_space = address_space;

    if is_program {
        for spec in KEYS {
            if spec.support == Support::NotYet && !(spec.is_default)(&cfg) {
                errors.push(ConfigError::NotSupported {
                    name: cfg.name.clone(),
                    key: spec.name.to_string(),
                });
            }
        }
    }

    // Keep the key bookkeeping honest: every spec name is unique.
    debug_assert_eq!(
        KEYS.iter().map(|k| k.name).collect::<BTreeSet<_>>().len(),
        KEYS.len()
    );

    match ConfigError::combine(errors) {
        Some(err) => Err(err),
        None => Ok(cfg),
    }
}
