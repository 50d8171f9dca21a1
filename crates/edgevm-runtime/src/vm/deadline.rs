//! A VM's run deadline and time slice: when this thread's timer must stop the guest
//! (crate::timer), and the error a timeout becomes.

use super::*;
use std::time::{Duration, Instant};

use edgevm_kvm::{MemoryView, Vcpu};

use crate::timer;

pub use crate::error::RunError;

impl<C: Vcpu, M: MemoryView> Vm<C, M> {
    /// Start the run deadline (`budget` from now) and arm this thread's timer for it (or for
    /// the end of the time slice, if one is set and comes first).
    pub fn start_deadline(&mut self, budget: Duration, what: &'static str) -> Result<(), RunError> {
        let deadline = Instant::now() + budget;
        self.deadline = Some((deadline, budget, what));
        self.linux.deadline = Some(deadline);
        self.arm_timer()
    }

    /// Give the next run a time slice: once `slice` has passed (and the deadline has not),
    /// [`MainVm::run_until_event`] stops the guest and returns [`Event::Preempted`], so the
    /// caller can move the VM to another thread and [`MainVm::resume_deadline`] there. Set it
    /// before [`MainVm::start_deadline`].
    pub fn set_slice(&mut self, slice: Option<Duration>) {
        self.slice_end = slice.map(|s| Instant::now() + s);
    }

    /// (Re-)arm this thread's timer for the deadline, or for the end of the time slice if that
    /// comes first (e.g. after another VM, the storage VM, ran on this thread).
    pub(crate) fn arm_timer(&mut self) -> Result<(), RunError> {
        let Some((deadline, _, _)) = self.deadline else {
            return Ok(());
        };
        let now = Instant::now();
        let mut at = deadline;
        if let Some(s) = self.slice_end {
            at = at.min(s);
        }
        if let Some(s) = self.thread_slice {
            at = at.min(s);
        }
        if let Some(t) = self.linux.next_timer() {
            at = at.min(t);
        }
        let p = self.machine.cpu.immediate_exit_ptr();
        timer::arm(p, at.saturating_duration_since(now)).map_err(RunError::Timer)
    }

    /// Stop this thread's timer but keep the deadline: the VM is about to move to another
    /// thread (preemption) or to wait while another VM runs on this thread (a storage call).
    pub fn pause_deadline(&mut self) {
        timer::disarm();
        self.machine.cpu.clear_immediate_exit();
    }

    /// Re-arm the deadline kept by [`MainVm::pause_deadline`] on the current thread (already
    /// passed: it fires at once). The time slice is over.
    pub fn resume_deadline(&mut self) -> Result<(), RunError> {
        self.slice_end = None;
        self.arm_timer()
    }

    /// Time left in the current time slice (None: no slice, the caller may block).
    pub fn slice_left(&self) -> Option<Duration> {
        self.slice_end
            .map(|s| s.saturating_duration_since(Instant::now()))
    }

    /// Time left before the current run's deadline (None without a deadline).
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|(d, _, _)| d.saturating_duration_since(Instant::now()))
    }

    /// Disarm the run timer and forget the deadline.
    pub fn stop_deadline(&mut self) {
        timer::disarm();
        self.deadline = None;
        self.slice_end = None;
        self.thread_slice = None;
        self.linux.deadline = None;
        self.machine.cpu.clear_immediate_exit();
    }

    pub(crate) fn timeout_error(&self) -> RunError {
        let (_, limit, what) = self
            .deadline
            .unwrap_or((Instant::now(), Duration::ZERO, "run"));
        RunError::Timeout { what, limit }
    }
}
