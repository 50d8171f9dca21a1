//! A program's `download` list: files it needs besides its binary (models, data), fetched in
//! parallel before each boot, as the reference does. Each entry `{uri, filepath, sha256|md5}`:
//!
//! * pinned (`sha256`/`md5`) and `filepath` already has that digest: nothing is fetched;
//! * `http(s)://`: GET, with `If-Modified-Since` (the file's mtime) when not pinned; 304 keeps
//!   the file; a body (pinned: checked first) replaces it atomically, its mtime the response's
//!   `Last-Modified`;
//! * `file://`: the file is copied (checked against the pin first);
//! * a failed download keeps an existing file when the entry is not pinned (a warning);
//!   otherwise the boot fails, naming the entry and why.

use std::fs;
use std::path::Path;
use std::time::Duration;

use edgevm_config::Download;

use super::{has_scheme, http_get, write_atomic, FetchError, Http, Pin};

/// What one entry did: a line for the log, and whether it is a warning.
pub type DownloadNote = (bool, String);

/// Fetch every entry of `list` (in parallel); the first failure fails them all.
pub fn fetch_downloads(
    name: &str,
    list: &[Download],
    timeout: Duration,
) -> Result<Vec<DownloadNote>, FetchError> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let results: Vec<Result<DownloadNote, FetchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = list
            .iter()
            .map(|d| s.spawn(move || one(name, d, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(FetchError::Download {
                        program: name.to_owned(),
                        uri: String::new(),
                        reason: "internal error in the download thread".into(),
                    })
                })
            })
            .collect()
    });
    results.into_iter().collect()
}

fn one(name: &str, d: &Download, timeout: Duration) -> Result<DownloadNote, FetchError> {
    let pin = Pin::from_config(d.sha256.as_deref(), d.md5.as_deref());
    let path = &d.filepath;
    let failed = |reason: String| FetchError::Download {
        program: name.to_owned(),
        uri: d.uri.clone(),
        reason: format!("download to {}: {reason}", path.display()),
    };
    if let Some(p) = &pin {
        if p.file_matches(path) {
            return Ok((
                false,
                format!("download: {} has the pinned {p}", path.display()),
            ));
        }
    }
    let check = |body: &[u8]| match &pin {
        Some(p) => p
            .check(body)
            .map_err(|why| failed(format!("refused: {why}"))),
        None => Ok(()),
    };
    let write = |body: &[u8], mtime| {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
        }
        write_atomic(path, body, mtime).map_err(|e| failed(e.to_string()))
    };
    if has_scheme(&d.uri, "file://") {
        let source = Path::new(&d.uri["file://".len()..]);
        let body = fs::read(source).map_err(|e| failed(format!("{}: {e}", source.display())))?;
        check(&body)?;
        write(&body, fs::metadata(source).and_then(|m| m.modified()).ok())?;
        return Ok((
            false,
            format!("download: {} copied from {}", path.display(), d.uri),
        ));
    }
    let mtime = fs::metadata(path)
        .ok()
        .filter(|m| m.is_file() && pin.is_none())
        .and_then(|m| m.modified().ok());
    match http_get(&d.uri, mtime, timeout) {
        Http::NotModified if mtime.is_some() => {
            Ok((false, format!("download: {} not modified", path.display())))
        }
        Http::NotModified => Err(failed(
            "304 Not Modified for a file that is not there".into(),
        )),
        Http::Failed { reason, .. } if mtime.is_some() => Ok((
            true,
            format!(
                "download: keeping {}: download of {} failed: {reason}",
                path.display(),
                d.uri
            ),
        )),
        Http::Failed { reason, .. } => Err(failed(reason)),
        Http::Body {
            body,
            last_modified,
        } => {
            check(&body)?;
            write(&body, last_modified)?;
            Ok((
                false,
                format!(
                    "download: {} ({} bytes) from {}",
                    path.display(),
                    body.len(),
                    d.uri
                ),
            ))
        }
    }
}
