//! The table of configuration keys: how each is parsed and validated, and
//! whether edgevm supports it yet.
//!
//! To make a key supported, change its `support` in [`KEYS`] to
//! [`Support::Supported`]; nothing else needs to change.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::expand::PathVars;
use crate::program::{
    AllowedPath, Download, ProgramConfig, Remapping, Warmup, DEFAULTS, MAX_ADDRESS_SPACE,
    MAX_CONCURRENCY, MAX_QUEUE, MAX_SMP, MAX_TIME_SECS, MB,
};

/// Whether edgevm honours a configuration key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Parsed, validated and honoured.
    Supported,
    /// Parsed and validated, but a program whose effective value differs
    /// from the default fails with "'key' is not supported yet".
    NotYet,
}

/// A program or group being built, layer by layer.
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub cfg: ProgramConfig,
    /// `address_space` as explicitly configured (the effective value is
    /// computed once all layers are applied).
    pub address_space: Option<u64>,
}

impl Draft {
    pub fn new() -> Draft {
        Draft {
            cfg: ProgramConfig::default(),
            address_space: None,
        }
    }
}

/// Context handed to the parse functions.
pub(crate) struct Ctx<'a> {
    /// Program or group name, for warnings.
    pub name: &'a str,
    pub source: &'a str,
    pub vars: &'a PathVars,
    pub warnings: &'a mut Vec<String>,
}

impl Ctx<'_> {
    pub fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.warnings.push(message);
    }
}

type ApplyFn = fn(&mut Draft, &Value, &mut Ctx<'_>) -> Result<(), String>;
type IsDefaultFn = fn(&ProgramConfig) -> bool;

/// One configuration key.
pub(crate) struct KeySpec {
    /// Canonical JSON name.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    pub support: Support,
    /// Parse `value` and store it in the draft.
    pub apply: ApplyFn,
    /// Whether the effective value equals the default (only consulted for
    /// [`Support::NotYet`] keys).
    pub is_default: IsDefaultFn,
}

use Support::{NotYet, Supported};

macro_rules! same_as_default {
    ($field:ident) => {
        |c: &ProgramConfig| c.$field == DEFAULTS.$field
    };
}

/// Every key edgevm knows, in glossary order followed by the reference
/// extras.
pub(crate) static KEYS: &[KeySpec] = &[
    KeySpec {
        name: "group",
        aliases: &[],
        support: Supported,
        apply: |_, v, _| non_empty_string(v).map(drop),
        is_default: |_| true,
    },
    KeySpec {
        name: "uri",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            let uri = non_empty_string(v)?;
            let lower = uri.to_ascii_lowercase();
            if !["http://", "https://", "file://"]
                .iter()
                .any(|p| lower.starts_with(p))
            {
                return Err(format!(
                    "unsupported uri {uri:?}: use http://, https:// or file://"
                ));
            }
            d.cfg.uri = Some(uri.to_string());
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "filename",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            d.cfg.filename = Some(PathBuf::from(ctx.vars.expand(non_empty_string(v)?)?));
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "key",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.key = string(v)?.to_string();
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "concurrency",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.concurrency = int_in(v, 1, MAX_CONCURRENCY.into())? as u32;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        // edgevm extension: the bound of the queue the glossary gives `concurrency`.
        name: "max_queue",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.max_queue = int_in(v, 0, MAX_QUEUE.into())? as u32;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        // edgevm extension: idle programs give their request VMs back.
        name: "free_idle_vms_after",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.free_idle_vms_after = match v.as_f64() {
                Some(0.0) => None,
                _ => Some(seconds(v)?),
            };
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "start",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.start, v),
        is_default: |_| true,
    },
    KeySpec {
        name: "storage",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.storage, v),
        is_default: |_| true,
    },
    KeySpec {
        name: "max_boot_time",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.max_boot_time = seconds(v)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "max_request_time",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.max_request_time = seconds(v)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "max_storage_time",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.max_storage_time = seconds(v)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "max_memory",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.max_memory = megabytes(v, 2, 2)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "max_request_memory",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.max_request_memory = megabytes(v, 1, 1)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "limit_workmem_after_req",
        aliases: &["req_mem_limit_after_reset"],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.limit_workmem_after_req = megabytes(v, 2, 0)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "shared_memory",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.shared_memory = megabytes(v, 2, 0)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "address_space",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.address_space = Some(megabytes(v, 2, 2)?);
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "hugepages",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| set_bool(&mut d.cfg.hugepages, v),
        is_default: same_as_default!(hugepages),
    },
    KeySpec {
        name: "hugepage_arena_size",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.hugepage_arena_size = megabytes(v, 2, 0)?;
            Ok(())
        },
        is_default: same_as_default!(hugepage_arena_size),
    },
    KeySpec {
        name: "request_hugepage_arena_size",
        aliases: &["request_hugepages"],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.request_hugepage_arena_size = megabytes(v, 2, 0)?;
            Ok(())
        },
        is_default: same_as_default!(request_hugepage_arena_size),
    },
    KeySpec {
        name: "split_hugepages",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| set_bool(&mut d.cfg.split_hugepages, v),
        is_default: same_as_default!(split_hugepages),
    },
    KeySpec {
        name: "ephemeral",
        aliases: &[],
        support: Supported,
        // The interplay with ephemeral_keep_working_memory is resolved per
        // layer in `apply_layer`.
        apply: |d, v, _| set_bool(&mut d.cfg.ephemeral, v),
        is_default: |_| true,
    },
    KeySpec {
        name: "ephemeral_keep_working_memory",
        aliases: &["experimental_keep_working_memory"],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.ephemeral_keep_working_memory, v),
        is_default: |_| true,
    },
    KeySpec {
        name: "control_ephemeral",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.control_ephemeral, v),
        is_default: |_| true,
    },
    KeySpec {
        name: "allow_debug",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.allow_debug, v),
        is_default: same_as_default!(allow_debug),
    },
    KeySpec {
        name: "remote_debug_on_exception",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.remote_debug_on_exception, v),
        is_default: same_as_default!(remote_debug_on_exception),
    },
    KeySpec {
        name: "debug_listen",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.debug_listen = crate::parse_debug_listen(string(v)?)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "main_arguments",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            d.cfg.main_arguments = expanded_strings(v, ctx.vars)?;
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "environment",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            let vars = expanded_strings(v, ctx.vars)?;
            for (i, var) in vars.iter().enumerate() {
                match var.split_once('=') {
                    Some((k, _)) if !k.is_empty() => {}
                    _ => {
                        return Err(format!(
                            "entry {i} must look like \"NAME=value\", got {var:?}"
                        ))
                    }
                }
            }
            d.cfg.environment.extend(vars);
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "allowed_paths",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            d.cfg.allowed_paths = allowed_paths(v, ctx)?;
            Ok(())
        },
        is_default: same_as_default!(allowed_paths),
    },
    KeySpec {
        name: "current_working_directory",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            let dir = ctx.vars.expand(non_empty_string(v)?)?;
            if !dir.starts_with('/') {
                return Err(format!("must be an absolute path, got {dir:?}"));
            }
            d.cfg.current_working_directory = dir;
            Ok(())
        },
        is_default: same_as_default!(current_working_directory),
    },
    KeySpec {
        name: "mmap_backed_files",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.mmap_backed_files, v),
        is_default: same_as_default!(mmap_backed_files),
    },
    KeySpec {
        name: "verbose",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.verbose, v),
        is_default: |_| true,
    },
    KeySpec {
        name: "verbose_syscalls",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.verbose_syscalls, v),
        is_default: |_| true,
    },
    KeySpec {
        name: "verbose_pagetables",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| set_bool(&mut d.cfg.verbose_pagetables, v),
        is_default: same_as_default!(verbose_pagetables),
    },
    KeySpec {
        name: "remapping",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.remapping = remappings("remapping", v)?;
            Ok(())
        },
        is_default: same_as_default!(remapping),
    },
    KeySpec {
        name: "blackout_area",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.blackout_area = remappings("blackout_area", v)?;
            Ok(())
        },
        is_default: same_as_default!(blackout_area),
    },
    KeySpec {
        name: "warmup",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            d.cfg.warmup = Some(warmup(v, ctx)?);
            Ok(())
        },
        is_default: |_| true,
    },
    // ---- Extras found in the reference implementation and real configs.
    KeySpec {
        name: "executable_remapping",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.executable_remapping = remappings("executable_remapping", v)?;
            Ok(())
        },
        is_default: same_as_default!(executable_remapping),
    },
    KeySpec {
        name: "sha256",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.sha256 = Some(hex_digest(v, 64)?);
            Ok(())
        },
        is_default: same_as_default!(sha256),
    },
    KeySpec {
        name: "md5",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.md5 = Some(hex_digest(v, 32)?);
            Ok(())
        },
        is_default: same_as_default!(md5),
    },
    KeySpec {
        name: "download",
        aliases: &[],
        support: NotYet,
        apply: |d, v, ctx| {
            d.cfg.download = downloads(v, ctx)?;
            Ok(())
        },
        is_default: same_as_default!(download),
    },
    KeySpec {
        name: "smp",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.smp = int_in(v, 0, MAX_SMP.into())? as u32;
            Ok(())
        },
        is_default: same_as_default!(smp),
    },
    KeySpec {
        name: "stdout",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| set_bool(&mut d.cfg.stdout, v),
        is_default: same_as_default!(stdout),
    },
    KeySpec {
        name: "relocate_fixed_mmap",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| set_bool(&mut d.cfg.relocate_fixed_mmap, v),
        is_default: same_as_default!(relocate_fixed_mmap),
    },
    KeySpec {
        name: "executable_heap",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| set_bool(&mut d.cfg.executable_heap, v),
        is_default: same_as_default!(executable_heap),
    },
    KeySpec {
        name: "cold_start_file",
        aliases: &[],
        support: NotYet,
        apply: |d, v, ctx| {
            d.cfg.cold_start_file = Some(PathBuf::from(ctx.vars.expand(non_empty_string(v)?)?));
            Ok(())
        },
        is_default: same_as_default!(cold_start_file),
    },
    KeySpec {
        name: "transparent_hugepages",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| set_bool(&mut d.cfg.transparent_hugepages, v),
        is_default: same_as_default!(transparent_hugepages),
    },
    KeySpec {
        name: "server",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.server = Some(object(v)?.clone().into());
            Ok(())
        },
        is_default: same_as_default!(server),
    },
    KeySpec {
        name: "websocket_server",
        aliases: &[],
        support: NotYet,
        apply: |d, v, _| {
            d.cfg.websocket_server = Some(object(v)?.clone().into());
            Ok(())
        },
        is_default: same_as_default!(websocket_server),
    },
];

/// Find a key by its canonical name or an alias.
pub(crate) fn lookup(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter()
        .find(|k| k.name == key || k.aliases.contains(&key))
}

/// `" (did you mean 'KEY'?)"` when one of `known` is close to the unknown `key` (a typo:
/// Jaro-Winkler similarity of at least 0.85, case ignored), else nothing.
pub(crate) fn did_you_mean<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let lower = key.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(&lower, k), k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default()
}

/// Every key name a program or group accepts (canonical names and aliases).
pub(crate) fn all_key_names() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .flat_map(|k| std::iter::once(k.name).chain(k.aliases.iter().copied()))
}

// ---------------------------------------------------------------- values

/// Describe a JSON value's type for error messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

pub(crate) fn string(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("must be a string, got {}", describe(v)))
}

pub(crate) fn non_empty_string(v: &Value) -> Result<&str, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s)
}

fn object(v: &Value) -> Result<&Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("must be an object, got {}", describe(v)))
}

fn set_bool(slot: &mut bool, v: &Value) -> Result<(), String> {
    *slot = boolean(v)?;
    Ok(())
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("must be true or false, got {}", describe(v)))
}

/// A non-negative whole number (integral floats such as `64.0` accepted).
fn whole(v: &Value) -> Result<u64, String> {
    let Value::Number(n) = v else {
        return Err(format!("must be a number, got {}", describe(v)));
    };
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    if n.is_i64() {
        return Err(format!("must not be negative, got {n}"));
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f < 0.0 {
        Err(format!("must not be negative, got {n}"))
    } else if f.fract() == 0.0 && f <= (1u64 << 53) as f64 {
        Ok(f as u64)
    } else {
        Err(format!("must be a whole number, got {n}"))
    }
}

fn int_in(v: &Value, min: u64, max: u64) -> Result<u64, String> {
    let n = whole(v)?;
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}, got {n}"));
    }
    Ok(n)
}

/// A size in megabytes: a whole number, a multiple of `granularity`, at
/// least `min` and at most 512 GB. Returns bytes.
fn megabytes(v: &Value, granularity: u64, min: u64) -> Result<u64, String> {
    if v.is_boolean() {
        return Err(format!(
            "must be a number of megabytes, got {}",
            describe(v)
        ));
    }
    let n = whole(v)?;
    let max = MAX_ADDRESS_SPACE / MB;
    if n < min {
        return Err(format!("must be at least {min} MB, got {n}"));
    }
    if n > max {
        return Err(format!("must be at most {max} MB (512 GB), got {n}"));
    }
    if n % granularity != 0 {
        return Err(format!("must be a multiple of {granularity} MB, got {n}"));
    }
    Ok(n * MB)
}

/// A time limit in seconds (fractions allowed): greater than zero, at most
/// one day.
fn seconds(v: &Value) -> Result<Duration, String> {
    let Value::Number(n) = v else {
        return Err(format!("must be a number of seconds, got {}", describe(v)));
    };
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f < 0.0 {
        return Err(format!("must not be negative, got {n}"));
    }
    if f == 0.0 {
        return Err("must be greater than 0 seconds".to_string());
    }
    if !f.is_finite() || f > MAX_TIME_SECS {
        return Err(format!("must be at most {MAX_TIME_SECS} seconds, got {n}"));
    }
    Ok(Duration::from_secs_f64(f))
}

fn expanded_strings(v: &Value, vars: &PathVars) -> Result<Vec<String>, String> {
    let Value::Array(items) = v else {
        return Err(format!("must be an array of strings, got {}", describe(v)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let s = item
                .as_str()
                .ok_or_else(|| format!("entry {i} must be a string, got {}", describe(item)))?;
            vars.expand(s).map_err(|e| format!("entry {i} {e}"))
        })
        .collect()
}

fn hex_digest(v: &Value, len: usize) -> Result<String, String> {
    let s = string(v)?;
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("must be {len} hexadecimal digits, got {s:?}"));
    }
    Ok(s.to_ascii_lowercase())
}

/// Warn about keys of a nested object that are not in `known`.
fn warn_unknown_subkeys(obj: &Map<String, Value>, parent: &str, known: &[&str], ctx: &mut Ctx<'_>) {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            let message = format!(
                "Unknown configuration key for '{}': {parent}.{k} ({}){}",
                ctx.name,
                ctx.source,
                did_you_mean(k, known.iter().copied())
            );
            ctx.warn(message);
        }
    }
}

fn allowed_paths(v: &Value, ctx: &mut Ctx<'_>) -> Result<Vec<AllowedPath>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "must be an array of paths or path objects, got {}",
            describe(v)
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let entry = match item {
            Value::String(s) if !s.is_empty() => {
                let real = ctx.vars.expand(s).map_err(|e| format!("entry {i} {e}"))?;
                AllowedPath {
                    virtual_path: real.clone(),
                    real,
                    prefix: false,
                    writable: false,
                    symlink: false,
                }
            }
            Value::Object(obj) => {
                warn_unknown_subkeys(
                    obj,
                    "allowed_paths",
                    &["real", "virtual", "prefix", "writable", "symlink"],
                    ctx,
                );
                let field = |name: &str| obj.get(name);
                let real = match field("real") {
                    Some(r) => non_empty_string(r).map_err(|e| format!("entry {i}: 'real' {e}"))?,
                    None => return Err(format!("entry {i} needs a \"real\" path")),
                };
                let real = ctx
                    .vars
                    .expand(real)
                    .map_err(|e| format!("entry {i} {e}"))?;
                let virtual_path = match field("virtual") {
                    Some(p) => {
                        let p = string(p).map_err(|e| format!("entry {i}: 'virtual' {e}"))?;
                        if p.is_empty() {
                            real.clone()
                        } else {
                            ctx.vars.expand(p).map_err(|e| format!("entry {i} {e}"))?
                        }
                    }
                    None => real.clone(),
                };
                let flag = |name: &str| -> Result<bool, String> {
                    match obj.get(name) {
                        Some(b) => boolean(b).map_err(|e| format!("entry {i}: '{name}' {e}")),
                        None => Ok(false),
                    }
                };
                AllowedPath {
                    real,
                    virtual_path,
                    prefix: flag("prefix")?,
                    writable: flag("writable")?,
                    symlink: flag("symlink")?,
                }
            }
            other => {
                return Err(format!(
                    "entry {i} must be a non-empty path string or an object, got {}",
                    describe(other)
                ))
            }
        };
        out.push(entry);
    }
    Ok(out)
}

fn parse_hex_address(v: &Value, what: &str) -> Result<u64, String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "{what} must be a hex string like \"0x1000000000\", got {}",
            describe(v)
        )
    })?;
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16)
        .map_err(|_| format!("{what} must be a hex string like \"0x1000000000\", got {s:?}"))
}

/// Minimum remapping address (below it lives the guest's low memory).
const MIN_REMAP_ADDRESS: u64 = 0x20000;
const PAGE: u64 = 4096;

fn remapping(name: String, v: &Value) -> Result<Remapping, String> {
    let pair = match v {
        Value::Array(items) if items.len() == 2 => items,
        other => {
            return Err(format!(
                "{name} must be [\"0xADDRESS\", megabytes] or [\"0xADDRESS\", \"0xEND\"], got {}",
                if other.is_array() {
                    "an array of the wrong length".to_string()
                } else {
                    describe(other)
                }
            ))
        }
    };
    let address = parse_hex_address(&pair[0], &format!("{name}: address"))?;
    if address < MIN_REMAP_ADDRESS {
        return Err(format!(
            "{name}: address {address:#x} is below the minimum {MIN_REMAP_ADDRESS:#x}"
        ));
    }
    if address % PAGE != 0 {
        return Err(format!("{name}: address {address:#x} is not 4 KiB aligned"));
    }
    let size = match &pair[1] {
        Value::String(_) => {
            let end = parse_hex_address(&pair[1], &format!("{name}: end address"))?;
            if end <= address {
                return Err(format!(
                    "{name}: end address {end:#x} must be above the start address {address:#x}"
                ));
            }
            if end % PAGE != 0 {
                return Err(format!("{name}: end address {end:#x} is not 4 KiB aligned"));
            }
            end - address
        }
        other => {
            let mb = whole(other).map_err(|e| format!("{name}: size in megabytes {e}"))?;
            if mb == 0 {
                return Err(format!("{name}: size must be at least 1 MB"));
            }
            mb.checked_mul(MB)
                .ok_or_else(|| format!("{name}: size {mb} MB is too large"))?
        }
    };
    if address.checked_add(size).is_none() {
        return Err(format!(
            "{name}: area does not fit in the 64-bit address space"
        ));
    }
    Ok(Remapping {
        name,
        address,
        size,
    })
}

/// Accepted shapes:
/// * object `{"name": ["0xADDR", MB | "0xEND"], ...}` (glossary form),
/// * a single pair `["0xADDR", MB | "0xEND"]`,
/// * an array of pairs `[["0xADDR", MB], ...]`.
///
/// Array-form entries are named `"<key>[<index>]"`.
fn remappings(key: &str, v: &Value) -> Result<Vec<Remapping>, String> {
    match v {
        Value::Object(obj) => obj
            .iter()
            .map(|(name, pair)| remapping(format!("'{name}'"), pair).map(|mut r| {
                r.name = name.clone();
                r
            }))
            .collect(),
        Value::Array(items) if items.len() == 2 && !items[0].is_array() => {
            Ok(vec![remapping(format!("{key}[0]"), v)?])
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, pair)| remapping(format!("{key}[{i}]"), pair))
            .collect(),
        other => Err(format!(
            "must be an object of named [\"0xADDRESS\", size] pairs or an array of such pairs, got {}",
            describe(other)
        )),
    }
}

fn warmup(v: &Value, ctx: &mut Ctx<'_>) -> Result<Warmup, String> {
    let obj = object(v)?;
    warn_unknown_subkeys(
        obj,
        "warmup",
        &["num_requests", "url", "method", "headers"],
        ctx,
    );
    let mut w = Warmup::default();
    if let Some(n) = obj.get("num_requests") {
        w.num_requests =
            int_in(n, 0, u16::MAX.into()).map_err(|e| format!("'num_requests' {e}"))? as u16;
    }
    if let Some(u) = obj.get("url") {
        let u = non_empty_string(u).map_err(|e| format!("'url' {e}"))?;
        if !u.starts_with('/') {
            return Err(format!("'url' must be a path starting with '/', got {u:?}"));
        }
        w.url = u.to_string();
    }
    if let Some(m) = obj.get("method") {
        let m = non_empty_string(m).map_err(|e| format!("'method' {e}"))?;
        if !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "'method' must be an HTTP method like \"GET\", got {m:?}"
            ));
        }
        w.method = m.to_ascii_uppercase();
    }
    if let Some(h) = obj.get("headers") {
        let Value::Array(items) = h else {
            return Err(format!(
                "'headers' must be an array of strings, got {}",
                describe(h)
            ));
        };
        for (i, item) in items.iter().enumerate() {
            let s = item.as_str().ok_or_else(|| {
                format!(
                    "'headers' entry {i} must be a string, got {}",
                    describe(item)
                )
            })?;
            match s.split_once(':') {
                Some((name, _)) if !name.trim().is_empty() => w.headers.push(s.to_string()),
                _ => {
                    return Err(format!(
                        "'headers' entry {i} must look like \"Name: value\", got {s:?}"
                    ))
                }
            }
        }
    }
    Ok(w)
}

fn downloads(v: &Value, ctx: &mut Ctx<'_>) -> Result<Vec<Download>, String> {
    let Value::Array(items) = v else {
        return Err(format!("must be an array of objects, got {}", describe(v)));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let obj = object(item).map_err(|e| format!("entry {i} {e}"))?;
        warn_unknown_subkeys(obj, "download", &["uri", "filepath", "sha256", "md5"], ctx);
        let get = |name: &str| -> Result<&str, String> {
            let v = obj
                .get(name)
                .ok_or_else(|| format!("entry {i} needs \"{name}\""))?;
            non_empty_string(v).map_err(|e| format!("entry {i}: '{name}' {e}"))
        };
        let uri = get("uri")?.to_string();
        let filepath = PathBuf::from(
            ctx.vars
                .expand(get("filepath")?)
                .map_err(|e| format!("entry {i} {e}"))?,
        );
        let sha256 = obj
            .get("sha256")
            .map(|v| hex_digest(v, 64).map_err(|e| format!("entry {i}: 'sha256' {e}")))
            .transpose()?;
        let md5 = obj
            .get("md5")
            .map(|v| hex_digest(v, 32).map_err(|e| format!("entry {i}: 'md5' {e}")))
            .transpose()?;
        out.push(Download {
            uri,
            filepath,
            sha256,
            md5,
        });
    }
    Ok(out)
}
