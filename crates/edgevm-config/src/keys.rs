//! The table of configuration keys: how each is parsed and validated, and
//! whether edgevm supports it yet.
//!
//! To make a key supported, change its `support` in [`KEYS`] to
//! [`Support::Supported`]; nothing else needs to change.

use std::path::PathBuf;

use serde_json::Value;

use crate::expand::PathVars;
use crate::program::{ProgramConfig, DEFAULTS, MAX_CONCURRENCY, MAX_QUEUE, MAX_SMP};

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

use Support::Supported;

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
        // edgevm extension: idle programs give their frozen image back too.
        name: "free_idle_image",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.free_idle_image, v),
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
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.hugepages, v),
        is_default: same_as_default!(hugepages),
    },
    KeySpec {
        name: "hugepage_arena_size",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.hugepage_arena_size = megabytes(v, 2, 0)?;
            Ok(())
        },
        is_default: same_as_default!(hugepage_arena_size),
    },
    KeySpec {
        name: "request_hugepage_arena_size",
        aliases: &["request_hugepages"],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.request_hugepage_arena_size = megabytes(v, 2, 0)?;
            Ok(())
        },
        is_default: same_as_default!(request_hugepage_arena_size),
    },
    KeySpec {
        name: "split_hugepages",
        aliases: &[],
        support: Supported,
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
        // edgevm extension: the outgoing network policy (edgevm-netpolicy), added to the
        // server's and the group's.
        name: "allow_net",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.allow_net.extend(net_entries(v)?);
            Ok(())
        },
        is_default: |_| true,
    },
    KeySpec {
        name: "deny_net",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.deny_net.extend(net_entries(v)?);
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
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.verbose_pagetables, v),
        is_default: same_as_default!(verbose_pagetables),
    },
    KeySpec {
        name: "remapping",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.remapping = remappings("remapping", v)?;
            Ok(())
        },
        is_default: same_as_default!(remapping),
    },
    KeySpec {
        name: "blackout_area",
        aliases: &[],
        support: Supported,
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
        support: Supported,
        apply: |d, v, _| {
            d.cfg.executable_remapping = remappings("executable_remapping", v)?;
            Ok(())
        },
        is_default: same_as_default!(executable_remapping),
    },
    KeySpec {
        name: "sha256",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.sha256 = Some(hex_digest(v, 64)?);
            Ok(())
        },
        is_default: same_as_default!(sha256),
    },
    KeySpec {
        name: "md5",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.md5 = Some(hex_digest(v, 32)?);
            Ok(())
        },
        is_default: same_as_default!(md5),
    },
    KeySpec {
        name: "download",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            d.cfg.download = downloads(v, ctx)?;
            Ok(())
        },
        is_default: same_as_default!(download),
    },
    KeySpec {
        name: "smp",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| {
            d.cfg.smp = int_in(v, 0, MAX_SMP.into())? as u32;
            Ok(())
        },
        is_default: same_as_default!(smp),
    },
    KeySpec {
        name: "stdout",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.stdout, v),
        is_default: same_as_default!(stdout),
    },
    KeySpec {
        name: "relocate_fixed_mmap",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.relocate_fixed_mmap, v),
        is_default: same_as_default!(relocate_fixed_mmap),
    },
    KeySpec {
        name: "executable_heap",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.executable_heap, v),
        is_default: same_as_default!(executable_heap),
    },
    KeySpec {
        name: "cold_start_file",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            d.cfg.cold_start_file = Some(PathBuf::from(ctx.vars.expand(non_empty_string(v)?)?));
            Ok(())
        },
        is_default: same_as_default!(cold_start_file),
    },
    KeySpec {
        name: "transparent_hugepages",
        aliases: &[],
        support: Supported,
        apply: |d, v, _| set_bool(&mut d.cfg.transparent_hugepages, v),
        is_default: same_as_default!(transparent_hugepages),
    },
    KeySpec {
        name: "server",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            d.cfg.server = Some(crate::tcp_server::parse(v, false, |p| ctx.vars.expand(p))?);
            Ok(())
        },
        is_default: same_as_default!(server),
    },
    KeySpec {
        name: "websocket_server",
        aliases: &[],
        support: Supported,
        apply: |d, v, ctx| {
            d.cfg.websocket_server =
                Some(crate::tcp_server::parse(v, true, |p| ctx.vars.expand(p))?);
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

mod values;
pub(crate) use values::*;
