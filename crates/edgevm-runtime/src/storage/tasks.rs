//! Scheduled storage tasks (`sys_storage_task` with a start or period). The storage thread
//! itself queues them when due (thread.rs): no thread of their own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use std::time::{Duration, Instant};

use super::{Call, Core, Job, Kind, StorageError, MAX_INPUT, MAX_TIMERS};

/// Scheduled tasks of one storage VM.
pub(super) struct Tasks {
    pub(super) state: Mutex<TaskState>,
    /// Wakes the storage thread when the schedule changes (capacity 1: one pending wake-up
    /// is enough).
    pub(super) wake: Sender<()>,
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
        self.0.notify();
    }
}

impl TaskState {
    /// Schedule `func(data)` to be queued at `due`, then every `period` (zero: once); its id.
    pub(super) fn schedule(
        &mut self,
        func: u64,
        data: Vec<u8>,
        due: Instant,
        period: Duration,
    ) -> Result<u64, StorageError> {
        if self.timers.len() >= MAX_TIMERS {
            return Err(StorageError::TooManyTimers);
        }
        self.next_id += 1;
        let id = self.next_id;
        let data = Arc::new(data);
        self.timers.insert(
            id,
            Timer {
                due,
                period,
                func,
                data,
            },
        );
        Ok(id)
    }

    /// The tasks due at `now` (function and a copy of its data), in id order: one-shot ones
    /// are dropped, periodic ones are due again a period from `now` (a period shorter than a
    /// run does not pile up runs: one is queued per period at most).
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<(u64, Vec<u8>)> {
        let mut due = Vec::new();
        self.timers.retain(|_, t| {
            if t.due > now {
                return true;
            }
            due.push((t.func, t.data.as_ref().clone()));
            t.due = now + t.period;
            !t.period.is_zero()
        });
        due
    }

    /// When the next task is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.timers.values().map(|t| t.due).min()
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
        self.add_with(func, data, start, period, |func, data| {
            core.enqueue(task_job(func, data))
        })
    }

    /// Check the task, then hand a task due now to `now` (id 0) or schedule it (id >= 1).
    fn add_with(
        &self,
        func: u64,
        data: Vec<u8>,
        start: Duration,
        period: Duration,
        now: impl FnOnce(u64, Vec<u8>) -> Result<(), StorageError>,
    ) -> Result<u64, StorageError> {
        if data.len() > MAX_INPUT {
            return Err(StorageError::TaskTooLarge(data.len() as u64));
        }
        if start.is_zero() && period.is_zero() {
            now(func, data)?;
            return Ok(0);
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let id = st.schedule(func, data, Instant::now() + start, period)?;
        drop(st);
        self.notify();
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
        found
    }

    /// Wake the storage thread to look at the schedule again.
    pub(super) fn notify(&self) {
        let _ = self.wake.try_send(());
    }

    /// Queue the tasks due now (called by the storage thread); when the next one is due.
    pub(super) fn queue_due(&self, core: &Core) -> Option<Instant> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (func, data) in st.take_due(Instant::now()) {
            // Only fails once the storage thread is gone (it is the caller).
            let _ = core.enqueue(task_job(func, data));
        }
        st.next_due()
    }
}

/// The storage VM's own `main()` scheduling tasks, before the storage VM (and so its queue)
/// exists: timers are scheduled at once, tasks queued "now" wait in `now` until the queue is
/// there (storage/thread.rs). Ids are the same as later.
pub(crate) struct BootTasks {
    pub(super) tasks: Arc<Tasks>,
    pub(super) now: Vec<(u64, Vec<u8>)>,
}

impl BootTasks {
    /// `sys_storage_task` from the storage VM's `main()`.
    pub(crate) fn add(
        &mut self,
        func: u64,
        data: Vec<u8>,
        start: Duration,
        period: Duration,
    ) -> Result<u64, StorageError> {
        let queue = &mut self.now;
        self.tasks
            .add_with(func, data, start, period, |func, data| {
                queue.push((func, data));
                Ok(())
            })
    }

    /// `stop_storage_task` from the storage VM's `main()`.
    pub(crate) fn stop(&self, id: u64) -> bool {
        self.tasks.stop(id)
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{TaskState, MAX_TIMERS};
    use crate::error::StorageError;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn scheduled_tasks_get_ids_from_one_and_at_most_max_timers() {
        let mut st = TaskState::default();
        let now = Instant::now();
        for i in 1..=MAX_TIMERS as u64 {
            assert_eq!(st.schedule(1, vec![], now, MS).unwrap(), i);
        }
        let e = st.schedule(1, vec![], now, MS).unwrap_err();
        assert!(matches!(e, StorageError::TooManyTimers));
        // A stopped task makes room.
        assert!(st.timers.remove(&3).is_some());
        assert_eq!(st.schedule(1, vec![], now, MS).unwrap(), 16);
    }

    #[test]
    fn a_one_shot_task_runs_once_when_due() {
        let mut st = TaskState::default();
        let t0 = Instant::now();
        st.schedule(7, b"x".to_vec(), t0 + 10 * MS, Duration::ZERO)
            .unwrap();
        assert!(st.take_due(t0).is_empty());
        assert_eq!(st.next_due(), Some(t0 + 10 * MS));
        assert_eq!(st.take_due(t0 + 10 * MS), vec![(7, b"x".to_vec())]);
        assert!(st.take_due(t0 + 100 * MS).is_empty());
        assert_eq!(st.next_due(), None);
    }

    #[test]
    fn a_periodic_task_is_due_again_a_period_after_it_ran_without_piling_up() {
        let mut st = TaskState::default();
        let t0 = Instant::now();
        st.schedule(7, vec![], t0, 10 * MS).unwrap();
        assert_eq!(st.take_due(t0).len(), 1);
        assert_eq!(st.next_due(), Some(t0 + 10 * MS));
        // Late by five periods: one run, not five.
        assert_eq!(st.take_due(t0 + 60 * MS).len(), 1);
        assert_eq!(st.next_due(), Some(t0 + 70 * MS));
    }

    #[test]
    fn due_tasks_come_in_id_order() {
        let mut st = TaskState::default();
        let t0 = Instant::now();
        st.schedule(3, vec![], t0 + 2 * MS, Duration::ZERO).unwrap();
        st.schedule(1, vec![], t0 + MS, Duration::ZERO).unwrap();
        st.schedule(2, vec![], t0 + 50 * MS, Duration::ZERO)
            .unwrap();
        let due: Vec<u64> = st.take_due(t0 + 5 * MS).into_iter().map(|d| d.0).collect();
        assert_eq!(due, vec![3, 1]);
    }
}
