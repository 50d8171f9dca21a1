//! The storage VM's turn: a FIFO lock that serializes every use of the storage VM (see
//! docs/DESIGN.md, "Storage").

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{Core, Job, Served, StorageError};

#[derive(Default)]
pub(super) struct TurnState {
    pub(super) held: bool,
    pub(super) queue: VecDeque<Waiter>,
    pub(super) next_waiter: u64,
}

pub(super) enum Waiter {
    /// A caller blocked (or preempted) until the turn is handed to it.
    Caller { id: u64, wake: Sender<()> },
    /// A job for the storage thread.
    Job(Job),
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
        let mut st = self.core.lock_turn();
        if let Some(i) = st
            .queue
            .iter()
            .position(|w| matches!(w, Waiter::Caller { id, .. } if *id == self.id))
        {
            st.queue.remove(i);
            return;
        }
        // Not in the queue: the turn was handed to us just now. Pass it on.
        drop(st);
        self.core.release();
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
        if !st.held && st.queue.is_empty() {
            st.held = true;
            return Ok(Turn(self.clone()));
        }
        st.next_waiter += 1;
        let id = st.next_waiter;
        let (wake, rx) = crossbeam_channel::bounded(1);
        st.queue.push_back(Waiter::Caller { id, wake });
        Err(Queued {
            core: self.clone(),
            id,
            wake: rx,
            granted: false,
        })
    }

    /// The turn now if it is free, without queueing.
    pub(super) fn try_turn(self: &Arc<Self>) -> Option<Turn> {
        let mut st = self.lock_turn();
        if st.held || !st.queue.is_empty() {
            return None;
        }
        st.held = true;
        Some(Turn(self.clone()))
    }

    /// Queue a job for the storage thread (in its place among the callers).
    pub(super) fn enqueue(&self, job: Job) -> Result<(), StorageError> {
        let mut st = self.lock_turn();
        if !st.held && st.queue.is_empty() {
            st.held = true;
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
        while let Some(w) = st.queue.pop_front() {
            match w {
                Waiter::Caller { wake, .. } => {
                    if wake.send(()).is_ok() {
                        return;
                    }
                }
                Waiter::Job(job) => {
                    if self.jobs.send(job).is_ok() {
                        return;
                    }
                }
            }
        }
        if self.dozing.load(Ordering::Relaxed) && self.left_unfinished() {
            // Nobody comes soon (the storage thread dozes): it finishes the clean-up.
            if self
                .jobs
                .send(Job {
                    call: None,
                    reply: None,
                })
                .is_ok()
            {
                return;
            }
        }
        st.held = false;
    }

    /// Whether the storage VM is in a call nobody waits for (called holding the turn).
    pub(super) fn left_unfinished(&self) -> bool {
        self.served
            .try_lock()
            .is_ok_and(|s| s.open.as_ref().is_some_and(|o| o.orphan))
    }
}
