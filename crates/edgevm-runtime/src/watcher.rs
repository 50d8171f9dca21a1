//! Programs looked at periodically by one background thread: a registry of weak program
//! handles and the lazily started thread that visits the live ones. Idle programs
//! (`idle.rs`: free their request VMs) and failed programs (`retry.rs`: boot them again) each
//! have one.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::pool::Program;

/// How often a watcher looks at its programs.
const PERIOD: Duration = Duration::from_millis(250);

/// One watcher: its thread's name, what is lost when the thread cannot start, and what it
/// does with its programs every [`PERIOD`].
pub(crate) struct Watcher {
    thread: &'static str,
    without_thread: &'static str,
    visit: fn(&'static Watcher),
    list: OnceLock<Mutex<Vec<Weak<Program>>>>,
}

impl Watcher {
    pub(crate) const fn new(
        thread: &'static str,
        without_thread: &'static str,
        visit: fn(&'static Watcher),
    ) -> Watcher {
        Watcher {
            thread,
            without_thread,
            visit,
            list: OnceLock::new(),
        }
    }

    /// The registry; the first use starts the thread.
    fn list(&'static self) -> &'static Mutex<Vec<Weak<Program>>> {
        self.list.get_or_init(|| {
            let r = std::thread::Builder::new()
                .name(self.thread.into())
                .spawn(move || loop {
                    std::thread::sleep(PERIOD);
                    (self.visit)(self);
                });
            if let Err(e) = r {
                tracing::error!("no {} thread ({e}): {}", self.thread, self.without_thread);
            }
            Mutex::new(Vec::new())
        })
    }

    /// Watch `p` (until it is dropped or [`Watcher::forget`] removes it).
    pub(crate) fn add(&'static self, p: &Arc<Program>) {
        self.lock().push(Arc::downgrade(p));
    }

    /// The programs watched that still exist.
    pub(crate) fn live(&'static self) -> Vec<Arc<Program>> {
        let mut w = self.lock();
        w.retain(|p| p.strong_count() > 0);
        w.iter().filter_map(Weak::upgrade).collect()
    }

    /// Stop watching these programs.
    pub(crate) fn forget(&'static self, done: &[*const Program]) {
        if !done.is_empty() {
            self.lock().retain(|p| !done.contains(&p.as_ptr()));
        }
    }

    fn lock(&'static self) -> std::sync::MutexGuard<'static, Vec<Weak<Program>>> {
        self.list().lock().unwrap_or_else(|e| e.into_inner())
    }
}
