//! Scheduled storage tasks (`sys_storage_task` with a start or period) and their scheduler
//! thread.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Call, Core, Job, Kind, StorageError, MAX_INPUT, MAX_TIMERS};

/// Scheduled tasks of one storage VM.
pub(super) struct Tasks {
    pub(super) state: Mutex<TaskState>,
    pub(super) changed: Condvar,
}

#[derive(Default)]
pub(super) struct TaskState {
    pub(super) next_id: u64,
    pub(super) timers: BTreeMap<u64, Timer>,
    pub(super) stopped: bool,
}

pub(super) struct Timer {
    pub(super) due: Instant,
    pub(super) period: Duration,
    pub(super) func: u64,
    pub(super) data: Arc<Vec<u8>>,
}

pub(super) struct Alive(pub(super) Arc<Tasks>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stopped = true;
        self.0.changed.notify_all();
    }
}

impl Tasks {
    pub(super) fn is_stopped(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stopped
    }

    /// Queue `func(data)` now (id 0) or schedule it (id >= 1); Err(why) if refused.
    pub(super) fn add(
        &self,
        core: &Core,
        func: u64,
        data: Vec<u8>,
        start: Duration,
        period: Duration,
    ) -> Result<u64, StorageError> {
        if data.len() > MAX_INPUT {
            return Err(StorageError::TaskTooLarge(data.len() as u64));
        }
        if start.is_zero() && period.is_zero() {
            core.enqueue(task_job(func, data))?;
            return Ok(0);
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.timers.len() >= MAX_TIMERS {
            return Err(StorageError::TooManyTimers);
        }
        st.next_id += 1;
        let id = st.next_id;
        st.timers.insert(
            id,
            Timer {
                due: Instant::now() + start,
                period,
                func,
                data: Arc::new(data),
            },
        );
        drop(st);
        self.changed.notify_all();
        Ok(id)
    }

    pub(super) fn stop(&self, id: u64) -> bool {
        let found = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .timers
            .remove(&id)
            .is_some();
        self.changed.notify_all();
        found
    }

    /// The scheduler thread: queue due tasks until the last handle is gone.
    pub(super) fn run(self: Arc<Self>, core: Arc<Core>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.stopped {
                return;
            }
            let now = Instant::now();
            let due: Vec<u64> = st
                .timers
                .iter()
                .filter(|(_, t)| t.due <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                let Some(t) = st.timers.get_mut(&id) else {
                    continue;
                };
                let job = task_job(t.func, t.data.as_ref().clone());
                if t.period.is_zero() {
                    st.timers.remove(&id);
                } else {
                    // The next run counts from this one; a period shorter than a run does not
                    // pile up runs (one is queued per period at most).
                    t.due = now + t.period;
                }
                if core.enqueue(job).is_err() {
                    return;
                }
            }
            let next = st.timers.values().map(|t| t.due).min();
            st = match next {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    self.changed
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

pub(super) fn task_job(func: u64, data: Vec<u8>) -> Job {
    Job {
        call: Some(Call {
            kind: Kind::Task,
            func,
            inputs: vec![data],
            dstlen: 0,
        }),
        reply: None,
    }
}
