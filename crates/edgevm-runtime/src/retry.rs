//! A program that failed to boot is tried again: after a back-off (1 s, doubling at each
//! failure in a row, at most 60 s), and at once when its file changes (size, time, inode),
//! e.g. after a rebuild. One watcher thread (`edgevm-retry`, shared by all programs) looks at
//! the failed programs four times a second; a program that is not failed is not watched.
//!
//! Not retried: programs the configuration refused (registered failed by
//! [`crate::pool::Runtime::add_failed`], never booted: fix the configuration and restart) and
//! a live update's candidate (the update was refused; the old
//! program keeps serving). Requests to a failed program get 503 at once, as before; while a
//! retry boots, they wait for it as for any boot.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::pool::{Program, State};
use crate::watcher::Watcher;

/// The first back-off after a failure.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// What identifies a version of a program's file: (length, modification time, inode).
/// None when the file does not exist (or the program has none).
pub(crate) type FileStamp = Option<(u64, Option<SystemTime>, u64)>;

/// The stamp of `path` now.
pub(crate) fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    if path.as_os_str().is_empty() {
        return None;
    }
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok(), m.ino()))
}

/// A program's boot failures and its next retry.
#[derive(Debug, Default)]
pub(crate) struct Retry {
    inner: Mutex<RetryState>,
}

#[derive(Debug, Default)]
struct RetryState {
    /// Failed boots in a row (0 once a boot succeeds).
    in_a_row: u32,
    /// Failed boots since the server started.
    total: u64,
    /// The file's stamp when the last boot began.
    stamp: FileStamp,
    /// When the next retry is due (None: not scheduled).
    due: Option<Instant>,
    /// The last failure's message (a retry failing the same way is logged at debug level).
    last: String,
}

/// The back-off after `n` failures in a row (n >= 1).
pub fn backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// What the stats say about a program's failures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RetryInfo {
    /// Failed boots since the server started.
    pub boot_failures: u64,
    /// Failed boots in a row (0 once it booted).
    pub failures_in_a_row: u32,
    /// Time until the next retry, when one is scheduled (it also comes at once when the
    /// program's file changes).
    pub retry_in: Option<Duration>,
}

impl Retry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RetryState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A boot begins: remember the file it reads.
    pub(crate) fn begin(&self, path: &Path) {
        let mut r = self.lock();
        r.stamp = stamp(path);
        r.due = None;
    }

    /// The boot succeeded.
    pub(crate) fn succeeded(&self) {
        let mut r = self.lock();
        r.in_a_row = 0;
        r.due = None;
    }

    /// The boot failed: schedule the next try. Returns the back-off.
    fn failed(&self) -> Duration {
        let mut r = self.lock();
        r.in_a_row = r.in_a_row.saturating_add(1);
        r.total += 1;
        let wait = backoff(r.in_a_row);
        r.due = Some(Instant::now() + wait);
        wait
    }

    /// Whether `why` repeats the failure before it (then not worth an error line again).
    pub(crate) fn repeated(&self, why: &str) -> bool {
        let mut r = self.lock();
        let same = r.in_a_row > 1 && r.last == why;
        if !same {
            r.last = why.to_string();
        }
        same
    }

    /// Whether a retry is due now: its time came, or the file changed since the last boot.
    fn due(&self, path: &Path) -> bool {
        let r = self.lock();
        match r.due {
            None => false,
            Some(t) => Instant::now() >= t || stamp(path) != r.stamp,
        }
    }

    /// For the stats.
    pub(crate) fn info(&self) -> RetryInfo {
        let r = self.lock();
        RetryInfo {
            boot_failures: r.total,
            failures_in_a_row: r.in_a_row,
            retry_in: r.due.map(|t| t.saturating_duration_since(Instant::now())),
        }
    }
}

/// The failed programs (looked at, with their files, four times a second).
static FAILED: Watcher = Watcher::new("edgevm-retry", "failed programs stay failed", |w| {
    let (mut done, mut due) = (Vec::new(), Vec::new());
    for p in w.live() {
        if !p.is_failed() {
            // No longer failed: not ours any more.
            done.push(Arc::as_ptr(&p));
        } else if p.retry.due(&p.settings.vm.program_path) {
            done.push(Arc::as_ptr(&p));
            due.push(p);
        }
    }
    // Before the retries: one that fails at once puts its program back in the list.
    w.forget(&done);
    for p in due {
        p.retry_boot();
    }
});

impl Program {
    fn is_failed(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Failed(_)
        )
    }

    /// The boot failed (not a live update's candidate): schedule a retry unless the program
    /// was replaced meanwhile.
    pub(crate) fn schedule_retry(self: &Arc<Self>) -> Option<Duration> {
        if self.candidate.load(std::sync::atomic::Ordering::Acquire)
            || self.retired.load(std::sync::atomic::Ordering::SeqCst)
        {
            return None;
        }
        let wait = self.retry.failed();
        FAILED.add(self);
        Some(wait)
    }

    /// Boot again (the program is failed).
    fn retry_boot(self: &Arc<Self>) {
        let path = &self.settings.vm.program_path;
        if stamp(path) != self.retry.lock().stamp {
            tracing::info!("Program '{}': booting again (its file changed)", self.name);
        } else {
            tracing::debug!(
                "Program '{}': booting again (retry after a failure)",
                self.name
            );
        }
        self.start_from_failed();
    }

    /// The retry state, for the stats: failures and when the next retry comes.
    pub fn retry_info(&self) -> RetryInfo {
        self.retry.info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(6), Duration::from_secs(32));
        assert_eq!(backoff(7), RETRY_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn a_changed_file_makes_the_retry_due_at_once() {
        let dir = std::env::temp_dir().join(format!("edgevm-retry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("prog");
        let _ = std::fs::remove_file(&f);
        let r = Retry::default();
        r.begin(&f);
        assert!(!r.due(&f), "not scheduled: not due");
        let wait = r.failed();
        assert_eq!(wait, RETRY_FIRST);
        assert!(!r.due(&f), "file unchanged and back-off not over");
        let info = r.info();
        assert_eq!((info.boot_failures, info.failures_in_a_row), (1, 1));
        assert!(info.retry_in.is_some_and(|d| d <= RETRY_FIRST));
        std::fs::write(&f, b"new").unwrap();
        assert!(r.due(&f), "the file appeared");
        r.begin(&f);
        assert_eq!(r.failed(), Duration::from_secs(2));
        assert!(!r.due(&f));
        std::fs::write(&f, b"newer").unwrap();
        assert!(r.due(&f), "the file changed");
        r.begin(&f);
        r.succeeded();
        let info = r.info();
        assert_eq!(
            (info.boot_failures, info.failures_in_a_row, info.retry_in),
            (2, 0, None)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
