//! The storage VM's turn: a FIFO lock that serializes every use of the storage VM (see
//! docs/DESIGN.md, "Storage").

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{Core, Job, Served, StorageError};

/// Who may use the storage VM now and who waits for it, in order. Its methods are the whole
/// protocol, each one step under [`Core::turn`]'s lock (model-checked in turn_model.rs).
pub(super) struct TurnState<J = Job> {
    /// Somebody has the turn (or it is on its way to the first waiter).
    pub(super) held: bool,
    pub(super) queue: VecDeque<Waiter<J>>,
    pub(super) next_waiter: u64,
}

impl<J> Default for TurnState<J> {
    fn default() -> Self {
        TurnState {
            held: false,
            queue: VecDeque::new(),
            next_waiter: 0,
        }
    }
}

pub(super) enum Waiter<J = Job> {
    /// A caller blocked (or preempted) until the turn is handed to it.
    Caller { id: u64, wake: Sender<()> },
    /// A job for the storage thread.
    Job(J),
}

impl<J> TurnState<J> {
    /// Take the turn if nobody has it or waits for it.
    pub(super) fn try_take(&mut self) -> bool {
        if self.held || !self.queue.is_empty() {
            return false;
        }
        self.held = true;
        true
    }

    /// A place at the end of the queue: its id and where the turn will be handed to it.
    pub(super) fn push_caller(&mut self) -> (u64, Receiver<()>) {
        self.next_waiter += 1;
        let id = self.next_waiter;
        let (wake, rx) = crossbeam_channel::bounded(1);
        self.queue.push_back(Waiter::Caller { id, wake });
        (id, rx)
    }

    /// Leave the queue: false when caller `id` is no longer in it (the turn was handed to it
    /// just now, and it must pass it on).
    pub(super) fn cancel(&mut self, id: u64) -> bool {
        match self
            .queue
            .iter()
            .position(|w| matches!(w, Waiter::Caller { id: i, .. } if *i == id))
        {
            Some(i) => {
                self.queue.remove(i);
                true
            }
            None => false,
        }
    }

    /// Hand the turn to the first waiter that takes it (`send_job` gives a job to the storage
    /// thread, false if it is gone), else to `idle`'s job, else free it.
    pub(super) fn hand_over(
        &mut self,
        mut send_job: impl FnMut(J) -> bool,
        idle: impl FnOnce() -> Option<J>,
    ) {
        while let Some(w) = self.queue.pop_front() {
            let taken = match w {
                Waiter::Caller { wake, .. } => wake.send(()).is_ok(),
                Waiter::Job(job) => send_job(job),
            };
            if taken {
                return;
            }
        }
        if let Some(job) = idle() {
            if send_job(job) {
                return;
            }
        }
        self.held = false;
    }
}

/// The turn: held by whoever has this; handed to the next waiter when dropped.
pub(super) struct Turn(pub(super) Arc<Core>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A place in the queue for the turn.
pub(super) struct Queued {
    pub(super) core: Arc<Core>,
    pub(super) id: u64,
    pub(super) wake: Receiver<()>,
    /// Handed over (and taken by [`Queued::wait_up_to`]).
    pub(super) granted: bool,
}

impl Queued {
    /// The turn, if it is handed over within `d`.
    pub(super) fn wait_up_to(&mut self, d: Duration) -> Option<Turn> {
        match self.wake.recv_timeout(d) {
            Ok(()) => {
                self.granted = true;
                Some(Turn(self.core.clone()))
            }
            Err(_) => None,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        if !self.core.lock_turn().cancel(self.id) {
            // Not in the queue: the turn was handed to us just now. Pass it on.
            self.core.release();
        }
    }
}

impl Core {
    pub(super) fn lock_turn(&self) -> MutexGuard<'_, TurnState> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lock_served(&self) -> MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The turn now if nobody has it or waits for it; else a place at the end of the queue.
    pub(super) fn take_turn(self: &Arc<Self>) -> Result<Turn, Queued> {
        let mut st = self.lock_turn();
        if st.try_take() {
            return Ok(Turn(self.clone()));
        }
        let (id, wake) = st.push_caller();
        Err(Queued {
            core: self.clone(),
            id,
            wake,
            granted: false,
        })
    }

    /// The turn now if it is free, without queueing.
    pub(super) fn try_turn(self: &Arc<Self>) -> Option<Turn> {
        self.lock_turn().try_take().then(|| Turn(self.clone()))
    }

    /// Queue a job for the storage thread (in its place among the callers).
    pub(super) fn enqueue(&self, job: Job) -> Result<(), StorageError> {
        let mut st = self.lock_turn();
        if st.try_take() {
            drop(st);
            return self.jobs.send(job).map_err(|_| {
                self.release();
                StorageError::Gone
            });
        }
        st.queue.push_back(Waiter::Job(job));
        Ok(())
    }

    /// Hand the turn to the next waiter, or free it.
    pub(super) fn release(&self) {
        let mut st = self.lock_turn();
        st.hand_over(
            |job| self.jobs.send(job).is_ok(),
            || {
                // Nobody comes soon (the storage thread dozes): it finishes the clean-up.
                (self.dozing.load(Ordering::Relaxed) && self.left_unfinished()).then_some(Job {
                    call: None,
                    reply: None,
                })
            },
        );
    }

    /// Whether the storage VM is in a call nobody waits for (called holding the turn).
    pub(super) fn left_unfinished(&self) -> bool {
        self.served
            .try_lock()
            .is_ok_and(|s| s.open.as_ref().is_some_and(|o| o.orphan))
    }
}
