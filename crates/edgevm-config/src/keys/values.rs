//! Parsers of key values: JSON types, numbers with units, paths, and the structured values
//! (allowed_paths, remapping, warmup, downloads) with their error messages.

use super::*;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::expand::PathVars;
use crate::program::{
    AllowedPath, Download, Remapping, Warmup, MAX_ADDRESS_SPACE, MAX_TIME_SECS, MB,
};

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

pub(super) fn object(v: &Value) -> Result<&Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("must be an object, got {}", describe(v)))
}

pub(super) fn set_bool(slot: &mut bool, v: &Value) -> Result<(), String> {
    *slot = boolean(v)?;
    Ok(())
}

pub(super) fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("must be true or false, got {}", describe(v)))
}

/// A non-negative whole number (integral floats such as `64.0` accepted).
pub(super) fn whole(v: &Value) -> Result<u64, String> {
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

pub(super) fn int_in(v: &Value, min: u64, max: u64) -> Result<u64, String> {
    let n = whole(v)?;
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}, got {n}"));
    }
    Ok(n)
}

/// A size in megabytes: a whole number, a multiple of `granularity`, at
/// least `min` and at most 512 GB. Returns bytes.
pub(super) fn megabytes(v: &Value, granularity: u64, min: u64) -> Result<u64, String> {
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
pub(super) fn seconds(v: &Value) -> Result<Duration, String> {
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

pub(super) fn expanded_strings(v: &Value, vars: &PathVars) -> Result<Vec<String>, String> {
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

/// `allow_net` / `deny_net`: a list of network entries, each checked here.
pub(crate) fn net_entries(v: &Value) -> Result<Vec<String>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "must be a list such as [\"127.0.0.1:7000\", \"10.1.0.0/16\", \"db.internal:5432\"], got {}",
            describe(v)
        ));
    };
    items
        .iter()
        .map(|item| {
            let s = item
                .as_str()
                .ok_or_else(|| format!("entries must be strings, got {}", describe(item)))?;
            edgevm_netpolicy::NetRule::parse(s)?;
            Ok(s.trim().to_string())
        })
        .collect()
}

pub(super) fn hex_digest(v: &Value, len: usize) -> Result<String, String> {
    let s = string(v)?;
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("must be {len} hexadecimal digits, got {s:?}"));
    }
    Ok(s.to_ascii_lowercase())
}

/// Warn about keys of a nested object that are not in `known`.
pub(super) fn warn_unknown_subkeys(
    obj: &Map<String, Value>,
    parent: &str,
    known: &[&str],
    ctx: &mut Ctx<'_>,
) {
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

pub(super) fn allowed_paths(v: &Value, ctx: &mut Ctx<'_>) -> Result<Vec<AllowedPath>, String> {
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

pub(super) fn parse_hex_address(v: &Value, what: &str) -> Result<u64, String> {
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
pub(super) const MIN_REMAP_ADDRESS: u64 = 0x20000;
pub(super) const PAGE: u64 = 4096;

pub(super) fn remapping(name: String, v: &Value) -> Result<Remapping, String> {
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
pub(super) fn remappings(key: &str, v: &Value) -> Result<Vec<Remapping>, String> {
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

pub(super) fn warmup(v: &Value, ctx: &mut Ctx<'_>) -> Result<Warmup, String> {
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

pub(super) fn downloads(v: &Value, ctx: &mut Ctx<'_>) -> Result<Vec<Download>, String> {
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
        let lower = uri.to_ascii_lowercase();
        if !(lower.starts_with("http://")
            || lower.starts_with("https://")
            || (lower.starts_with("file:///")))
        {
            return Err(format!(
                "entry {i}: unsupported uri {uri:?}: use http://, https:// or file:///path"
            ));
        }
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
