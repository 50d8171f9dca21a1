//! Program delivery: where a program's bytes come from before it is booted.
//!
//! A program is configured with a `filename` (where it is found, or cached when fetched) and
//! optionally a `uri` (where the latest version lives). [`obtain`] implements the reference's
//! load order:
//!
//! - **No `uri`**: read `filename`. If `<filename>_storage` exists it is the storage program.
//!   The result is [`Origin::Local`], `cached = true`.
//! - **`http://` / `https://` `uri`**: `GET` the uri, with
//!   `If-Modified-Since: <mtime of filename>` when `filename` exists.
//!   - **304** → the cached `filename` (and `<filename>_storage` if present) is used
//!     (`cached = true`).
//!   - **2xx** → the body is the program: a raw ELF (`\x7fELF`), or a `.tar` / `.tar.xz`
//!     archive (detected by magic, not by name; see [`unpack`]). The request program is written
//!     to `filename` and the storage program to `<filename>_storage`, each atomically (temporary
//!     file in the same directory, then `rename`). The files' mtime is set to the response's
//!     `Last-Modified` when present, so the next `If-Modified-Since` matches the server's own
//!     notion of the version. A stale `<filename>_storage` is removed when the new version has
//!     no storage program. Files are written storage first, request program last: the request
//!     program's mtime gates the next `If-Modified-Since`, so an interrupted update is
//!     downloaded again rather than half-used.
//!   - **Any network failure or non-2xx/304 status**: if the cached `filename` exists it is used
//!     (`cached = true`) and a warning is added to [`FetchedProgram::notes`]; otherwise it is a
//!     [`FetchError`]. A response whose *content* is unusable (corrupt or confusing archive, not
//!     an ELF) is always an error, even with a cache: the publisher shipped something broken and
//!     that should be loud, not silently masked by an old version.
//!   - Without a `filename` the cache is [`default_cache_path`]:
//!     `std::env::temp_dir()/edgevm-program-<name>` (name sanitised to `[A-Za-z0-9._-]`).
//! - **`file://` `uri`** (`file:///abs/path` or `file://localhost/abs/path`, no percent
//!   decoding): the local file is read every time and handled exactly like a download body
//!   (raw ELF or archive). There are no caching semantics (no `If-Modified-Since`, no fallback
//!   when the file is missing). The result counts as [`Origin::Remote`] with `cached = false`,
//!   because the program came from its `uri`; it is also written to `filename` (and
//!   `<filename>_storage`) when `filename` is set and is a different file.
//!
//! Downloads use one `timeout` for connecting and for the whole exchange (headers and body), so
//! a slow or stalled server gives an error (or the cache) in bounded time. Redirects are
//! followed; proxies from the usual environment variables are honoured; TLS is rustls with the
//! webpki roots. Bodies and decompressed archives are limited to [`MAX_PROGRAM_BYTES`].
//!
//! This module does not log: it returns warnings ([`FetchedProgram::notes`]) and informational
//! lines ([`FetchedProgram::info`], e.g. `Found 'c/counter' size=902024, used as request
//! program`) for the caller to log with the program's context.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Largest download body, archive entry or decompressed archive accepted (1 GiB).
pub const MAX_PROGRAM_BYTES: u64 = 1 << 30;

/// Where a program was configured to come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Only a `filename`, no `uri`.
    Local,
    /// A `uri` (`http`, `https` or `file`).
    Remote,
}

impl Origin {
    /// `"local"` or `"remote"`, as in the reference's "Program 'X' is loaded (...)" log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Remote => "remote",
        }
    }
}

/// The bytes of a program, ready to boot, and how they were obtained.
#[derive(Debug, Clone)]
pub struct FetchedProgram {
    /// The request (main) program: an ELF (not validated here).
    pub request: Vec<u8>,
    /// The storage program, from `<filename>_storage` or an archive's `*storage` entry.
    pub storage: Option<Vec<u8>>,
    /// `Local` without a `uri`, `Remote` with one.
    pub origin: Origin,
    /// The local file was used instead of a download: no `uri`, a 304, or a network/HTTP
    /// failure with a cached file present (see `notes`).
    pub cached: bool,
    /// Time spent on the download attempt (including a 304 or a failed attempt that fell back
    /// to the cache); `None` without a `uri`.
    pub download_time: Option<Duration>,
    /// The local file holding the request program: `filename`, the default cache path, or the
    /// `file://` source when no `filename` is set.
    pub path: PathBuf,
    /// Warnings to log, e.g. `using cached /tmp/x: network error ...`.
    pub notes: Vec<String>,
    /// Informational lines to log, e.g. `Found 'c/counter' size=902024, used as request
    /// program`.
    pub info: Vec<String>,
}

/// Why a program could not be obtained. Every message names the program.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A local file could not be read (the configured `filename`, a cached file or a `file://`
    /// source).
    #[error("program '{program}': cannot read {}: {source}", path.display())]
    Read {
        /// Program name.
        program: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Neither `uri` nor `filename` is configured.
    #[error("program '{program}': neither 'uri' nor 'filename' is set")]
    NoSource {
        /// Program name.
        program: String,
    },
    /// The `uri` is not `http://`, `https://` or `file://`.
    #[error("program '{program}': unsupported uri '{uri}': {reason}")]
    BadUri {
        /// Program name.
        program: String,
        /// The configured uri.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The download failed (connection, TLS, timeout, truncated body, ...) and there is no
    /// cached file.
    #[error("program '{program}': download of {uri} failed: {reason}")]
    Download {
        /// Program name.
        program: String,
        /// The configured uri.
        uri: String,
        /// The network error.
        reason: String,
    },
    /// The server answered with an error status and there is no cached file.
    #[error("program '{program}': download of {uri} failed: HTTP status {status}")]
    Status {
        /// Program name.
        program: String,
        /// The configured uri.
        uri: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The downloaded (or `file://`) content is not a usable program: not an ELF, a corrupt
    /// archive, or a confusing archive layout.
    #[error("program '{program}': bad content from {uri}: {reason}")]
    Content {
        /// Program name.
        program: String,
        /// The configured uri.
        uri: String,
        /// What is wrong, e.g. `Confusing archive: entries a, b`.
        reason: String,
    },
    /// Writing the downloaded program to its cache file failed.
    #[error("program '{program}': cannot write {}: {source}", path.display())]
    Write {
        /// Program name.
        program: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// `<filename>_storage`: where the storage program that goes with `filename` is kept.
pub fn storage_path(filename: &Path) -> PathBuf {
    let mut s = OsString::from(filename.as_os_str());
    s.push("_storage");
    PathBuf::from(s)
}

/// The cache file used for a program that has a `uri` but no `filename`:
/// `std::env::temp_dir()/edgevm-program-<name>`, with every character of the name outside
/// `[A-Za-z0-9._-]` replaced by `_`.
pub fn default_cache_path(name: &str) -> PathBuf {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::env::temp_dir().join(format!("edgevm-program-{clean}"))
}

/// Obtain program `name` from its `uri` and/or `filename` (see the module documentation for
/// the exact rules). `timeout` bounds connecting and the whole HTTP exchange.
pub fn obtain(
    name: &str,
    uri: Option<&str>,
    filename: Option<&Path>,
    timeout: Duration,
) -> Result<FetchedProgram, FetchError> {
    obtain_pinned(name, uri, filename, None, timeout)
}

/// [`obtain`] with the program's `sha256`/`md5` (only with a `uri`): a cached file with the
/// pinned digest is used without asking the server; a download (or `file://` source) whose
/// request program has another digest is refused before it is written, and there is no
/// fallback to a cache that does not match.
pub fn obtain_pinned(
    name: &str,
    uri: Option<&str>,
    filename: Option<&Path>,
    pin: Option<&Pin>,
    timeout: Duration,
) -> Result<FetchedProgram, FetchError> {
    if let (Some(pin), Some(u)) = (pin, uri) {
        let cache = filename
            .map(Path::to_owned)
            .unwrap_or_else(|| default_cache_path(name));
        if pin.file_matches(&cache) {
            let (request, storage) = read_cached(name, &cache)?;
            return Ok(FetchedProgram {
                request,
                storage,
                origin: Origin::Remote,
                cached: true,
                download_time: None,
                info: vec![format!(
                    "{} has the pinned {pin}: not downloaded from {u}",
                    cache.display()
                )],
                path: cache,
                notes: Vec::new(),
            });
        }
    }
    match uri {
        None => {
            let Some(filename) = filename else {
                return Err(FetchError::NoSource {
                    program: name.to_owned(),
                });
            };
            let (request, storage) = read_cached(name, filename)?;
            Ok(FetchedProgram {
                request,
                storage,
                origin: Origin::Local,
                cached: true,
                download_time: None,
                path: filename.to_owned(),
                notes: Vec::new(),
                info: Vec::new(),
            })
        }
        Some(uri) if has_scheme(uri, "http://") || has_scheme(uri, "https://") => {
            let cache = filename
                .map(Path::to_owned)
                .unwrap_or_else(|| default_cache_path(name));
            obtain_http(name, uri, &cache, pin, timeout)
        }
        Some(uri) if has_scheme(uri, "file://") => obtain_file(name, uri, filename, pin),
        Some(uri) => Err(FetchError::BadUri {
            program: name.to_owned(),
            uri: uri.to_owned(),
            reason: "expected http://, https:// or file://".to_owned(),
        }),
    }
}

fn has_scheme(uri: &str, scheme: &str) -> bool {
    uri.len() >= scheme.len() && uri[..scheme.len()].eq_ignore_ascii_case(scheme)
}

/// Read `filename` and, if present, `<filename>_storage`.
fn read_cached(name: &str, filename: &Path) -> Result<(Vec<u8>, Option<Vec<u8>>), FetchError> {
    let read_err = |path: &Path, source| FetchError::Read {
        program: name.to_owned(),
        path: path.to_owned(),
        source,
    };
    let request = fs::read(filename).map_err(|e| read_err(filename, e))?;
    let sp = storage_path(filename);
    let storage = match fs::read(&sp) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(read_err(&sp, e)),
    };
    Ok((request, storage))
}

/// Outcome of one HTTP attempt.
enum Http {
    NotModified,
    Body {
        body: Vec<u8>,
        last_modified: Option<SystemTime>,
    },
    /// Network problem (message) or error status.
    Failed {
        reason: String,
        status: Option<u16>,
    },
}

fn http_get(uri: &str, if_modified_since: Option<SystemTime>, timeout: Duration) -> Http {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(uri);
    if let Some(t) = if_modified_since {
        req = req.header("If-Modified-Since", httpdate::fmt_http_date(t));
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        Err(e) => {
            return Http::Failed {
                reason: network_error(e, timeout),
                status: None,
            }
        }
    };
    let status = resp.status().as_u16();
    if status == 304 {
        return Http::NotModified;
    }
    if !(200..300).contains(&status) {
        return Http::Failed {
            reason: format!("HTTP status {status}"),
            status: Some(status),
        };
    }
    let last_modified = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    match resp
        .body_mut()
        .with_config()
        .limit(MAX_PROGRAM_BYTES)
        .read_to_vec()
    {
        Ok(body) => Http::Body {
            body,
            last_modified,
        },
        Err(e) => Http::Failed {
            reason: format!("reading the body: {}", network_error(e, timeout)),
            status: None,
        },
    }
}

fn network_error(e: ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out after {timeout:?} ({t} timeout)"),
        ureq::Error::BodyExceedsLimit(n) => {
            format!("body larger than {n} bytes")
        }
        e => format!("network error: {e}"),
    }
}

fn obtain_http(
    name: &str,
    uri: &str,
    cache: &Path,
    pin: Option<&Pin>,
    timeout: Duration,
) -> Result<FetchedProgram, FetchError> {
    // Pinned: the cache did not match (obtain_pinned), so it is neither asked about
    // (If-Modified-Since) nor a fallback.
    let cache_mtime = fs::metadata(cache)
        .ok()
        .filter(|m| m.is_file() && pin.is_none())
        .and_then(|m| m.modified().ok());
    let start = Instant::now();
    let outcome = http_get(uri, cache_mtime, timeout);
    let elapsed = start.elapsed();
    let mut out = FetchedProgram {
        request: Vec::new(),
        storage: None,
        origin: Origin::Remote,
        cached: false,
        download_time: Some(elapsed),
        path: cache.to_owned(),
        notes: Vec::new(),
        info: Vec::new(),
    };
    match outcome {
        Http::NotModified => {
            if cache_mtime.is_none() {
                return Err(FetchError::Download {
                    program: name.to_owned(),
                    uri: uri.to_owned(),
                    reason: format!(
                        "server answered 304 Not Modified but there is no cached {}",
                        cache.display()
                    ),
                });
            }
            let (request, storage) = read_cached(name, cache)?;
            out.request = request;
            out.storage = storage;
            out.cached = true;
        }
        Http::Failed { reason, status } => {
            if cache_mtime.is_none() {
                return Err(match status {
                    Some(status) => FetchError::Status {
                        program: name.to_owned(),
                        uri: uri.to_owned(),
                        status,
                    },
                    None => FetchError::Download {
                        program: name.to_owned(),
                        uri: uri.to_owned(),
                        reason,
                    },
                });
            }
            let (request, storage) = read_cached(name, cache)?;
            out.notes.push(format!(
                "using cached {}: download of {uri} failed: {reason}",
                cache.display()
            ));
            out.request = request;
            out.storage = storage;
            out.cached = true;
        }
        Http::Body {
            body,
            last_modified,
        } => {
            let unpacked = unpack_pinned(name, uri, &body, pin)?;
            store(name, cache, &unpacked, last_modified)?;
            out.info = unpacked.info;
            out.request = unpacked.request;
            out.storage = unpacked.storage;
        }
    }
    Ok(out)
}

fn obtain_file(
    name: &str,
    uri: &str,
    filename: Option<&Path>,
    pin: Option<&Pin>,
) -> Result<FetchedProgram, FetchError> {
    let rest = &uri["file://".len()..];
    let rest = if has_scheme(rest, "localhost/") {
        &rest["localhost".len()..]
    } else {
        rest
    };
    if !rest.starts_with('/') {
        return Err(FetchError::BadUri {
            program: name.to_owned(),
            uri: uri.to_owned(),
            reason: "a file:// uri needs an absolute path (file:///path)".to_owned(),
        });
    }
    let source = PathBuf::from(rest);
    let start = Instant::now();
    let body = fs::read(&source).map_err(|e| FetchError::Read {
        program: name.to_owned(),
        path: source.clone(),
        source: e,
    })?;
    let unpacked = unpack_pinned(name, uri, &body, pin)?;
    let mut path = source.clone();
    if let Some(filename) = filename {
        if !same_file(&source, filename) {
            let mtime = fs::metadata(&source).and_then(|m| m.modified()).ok();
            store(name, filename, &unpacked, mtime)?;
            path = filename.to_owned();
        }
    }
    Ok(FetchedProgram {
        request: unpacked.request,
        storage: unpacked.storage,
        origin: Origin::Remote,
        cached: false,
        download_time: Some(start.elapsed()),
        path,
        notes: Vec::new(),
        info: unpacked.info,
    })
}

/// [`unpack`], then the pin's check on the request program.
fn unpack_pinned(
    name: &str,
    uri: &str,
    body: &[u8],
    pin: Option<&Pin>,
) -> Result<Unpacked, FetchError> {
    let content = |reason| FetchError::Content {
        program: name.to_owned(),
        uri: uri.to_owned(),
        reason,
    };
    let unpacked = unpack(body).map_err(content)?;
    if let Some(pin) = pin {
        pin.check(&unpacked.request)
            .map_err(|why| content(format!("the program does not match: {why}")))?;
    }
    Ok(unpacked)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A program body split into its parts.
#[derive(Debug)]
pub struct Unpacked {
    /// The request program.
    pub request: Vec<u8>,
    /// The storage program, if the body was an archive with a `*storage` entry.
    pub storage: Option<Vec<u8>>,
    /// `Found '<entry>' size=<n>, used as request|storage program` lines for archives.
    pub info: Vec<String>,
}

const ELF_MAGIC: &[u8] = b"\x7fELF";
const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];

fn is_tar(b: &[u8]) -> bool {
    b.len() >= 262 && &b[257..262] == b"ustar"
}

/// Split a program body into request and storage programs. The body is detected by magic:
/// a raw ELF (`\x7fELF`) is the request program; an xz stream (`FD 37 7A 58 5A 00`) is
/// decompressed and must hold a tar archive (or a raw ELF); a tar archive (`ustar` at offset
/// 257) must hold exactly one regular file whose name does not end in `storage` (the request
/// program) and at most one whose name does (the storage program). Directories and other
/// non-file entries are ignored. Errors are human-readable reasons.
pub fn unpack(body: &[u8]) -> Result<Unpacked, String> {
    if body.starts_with(ELF_MAGIC) {
        return Ok(Unpacked {
            request: body.to_vec(),
            storage: None,
            info: Vec::new(),
        });
    }
    if body.starts_with(XZ_MAGIC) {
        let mut data = Vec::new();
        liblzma::read::XzDecoder::new_multi_decoder(body)
            .take(MAX_PROGRAM_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("corrupt .xz data: {e}"))?;
        if data.len() as u64 > MAX_PROGRAM_BYTES {
            return Err(format!(
                ".xz data decompresses to more than {MAX_PROGRAM_BYTES} bytes"
            ));
        }
        if data.starts_with(ELF_MAGIC) {
            return Ok(Unpacked {
                request: data,
                storage: None,
                info: Vec::new(),
            });
        }
        if !is_tar(&data) {
            return Err("the .xz data is neither a tar archive nor an ELF program".to_owned());
        }
        return unpack_tar(&data);
    }
    if is_tar(body) {
        return unpack_tar(body);
    }
    if body.is_empty() {
        return Err("empty body (expected an ELF program or a tar/tar.xz archive)".to_owned());
    }
    let head: Vec<String> = body.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "neither an ELF program nor a tar/tar.xz archive (starts with {})",
        head.join(" ")
    ))
}

fn unpack_tar(data: &[u8]) -> Result<Unpacked, String> {
    let corrupt = |e: io::Error| format!("corrupt tar archive: {e}");
    let mut archive = tar::Archive::new(data);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if entry.size() > MAX_PROGRAM_BYTES {
            return Err(format!(
                "archive entry '{name}' is larger than {MAX_PROGRAM_BYTES} bytes"
            ));
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(corrupt)?;
        files.push((name, bytes));
    }
    let is_storage = |n: &str| n.trim_end_matches('/').ends_with("storage");
    let storage_count = files.iter().filter(|(n, _)| is_storage(n)).count();
    let request_count = files.len() - storage_count;
    if request_count != 1 || storage_count > 1 {
        let names: Vec<String> = files
            .iter()
            .map(|(n, b)| format!("'{n}' ({} bytes)", b.len()))
            .collect();
        return Err(format!(
            "Confusing archive: expected one request program and at most one entry ending in \
             'storage', found {} file entries: [{}]",
            files.len(),
            names.join(", ")
        ));
    }
    let mut out = Unpacked {
        request: Vec::new(),
        storage: None,
        info: Vec::new(),
    };
    for (name, bytes) in files {
        let role = if is_storage(&name) {
            "storage"
        } else {
            "request"
        };
        out.info.push(format!(
            "Found '{name}' size={}, used as {role} program",
            bytes.len()
        ));
        if role == "storage" {
            out.storage = Some(bytes);
        } else {
            out.request = bytes;
        }
    }
    Ok(out)
}

/// Write `u` to `filename` / `<filename>_storage` atomically, storage first; remove a stale
/// storage file when `u` has none.
fn store(
    name: &str,
    filename: &Path,
    u: &Unpacked,
    mtime: Option<SystemTime>,
) -> Result<(), FetchError> {
    let write_err = |path: &Path, source| FetchError::Write {
        program: name.to_owned(),
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = filename.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    }
    let sp = storage_path(filename);
    match &u.storage {
        Some(bytes) => write_atomic(&sp, bytes, mtime).map_err(|e| write_err(&sp, e))?,
        None => match fs::remove_file(&sp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(&sp, e)),
        },
    }
    write_atomic(filename, &u.request, mtime).map_err(|e| write_err(filename, e))
}

/// Write `bytes` to a temporary file next to `path`, set its mtime, then rename it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mtime: Option<SystemTime>) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(t) = mtime {
            f.set_modified(t)?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

mod download;
mod pin;
pub use download::fetch_downloads;
pub use pin::Pin;

#[cfg(test)]
mod tests;
