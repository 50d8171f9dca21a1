//! Run deadlines: one POSIX timer per host thread that signals that same thread.
//!
//! Measured here (kvm-costs-here.md): a timer with SIGEV_THREAD_ID on the thread that is inside
//! KVM_RUN stops the guest ~20-55 µs after its deadline, while a watchdog thread sharing the
//! CPU takes milliseconds. The signal handler sets the running vCPU's
//! `kvm_run.immediate_exit`, so even a signal that arrives just before KVM_RUN makes it return
//! at once; the timer re-fires every 20 ms after the deadline in case one is missed. Arming
//! costs ~1-11 µs, once per run segment.
//!
//! The timer belongs to the *thread*, not to a VM: request VMs run on whichever thread picked
//! up the request (the HTTP worker that read it, or a blocking thread after a preemption), and
//! a storage VM runs nested on its caller's thread. [`arm`] points the thread's timer at the
//! vCPU about to run; [`disarm`] (always on the same thread, before the VM may move) stops it
//! and forgets the pointer, so a signal can never write into a vCPU that moved away or was
//! freed.

use std::cell::{Cell, RefCell};
use std::sync::Once;
use std::time::Duration;

use nix::sys::signal::{self, SigEvent, SigHandler, SigSet, SigevNotify, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;

/// The signal used to kick a vCPU out of KVM_RUN.
pub const KICK_SIGNAL: Signal = Signal::SIGUSR2;

thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
    static TIMER: RefCell<Option<Timer>> = const { RefCell::new(None) };
}

extern "C" fn on_kick(_: libc::c_int) {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer was set by `arm` on this thread and points into the kvm_run
        // mapping of the vCPU this thread is running; `disarm` clears it (on this thread)
        // before that vCPU can move to another thread or be freed.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let sa = signal::SigAction::new(
            SigHandler::Handler(on_kick),
            signal::SaFlags::empty(), // no SA_RESTART: KVM_RUN must return EINTR
            SigSet::empty(),
        );
        // SAFETY: the handler only does an async-signal-safe volatile store.
        unsafe { signal::sigaction(KICK_SIGNAL, &sa) }.expect("install SIGUSR2 handler");
    });
}

fn new_thread_timer() -> nix::Result<Timer> {
    install_handler();
    let mut set = SigSet::empty();
    set.add(KICK_SIGNAL);
    set.thread_unblock()?;
    let tid = nix::unistd::gettid().as_raw();
    Timer::new(
        ClockId::CLOCK_MONOTONIC,
        SigEvent::new(SigevNotify::SigevThreadId {
            signal: KICK_SIGNAL,
            thread_id: tid,
            si_value: 0,
        }),
    )
}

/// Point this thread's timer at `immediate_exit` (the byte in the vCPU's kvm_run that the
/// caller is about to run on this thread) and fire after `after`, then every 20 ms.
pub fn arm(immediate_exit: *mut u8, after: Duration) -> nix::Result<()> {
    TIMER.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_none() {
            *t = Some(new_thread_timer()?);
        }
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        let after = after.max(Duration::from_micros(1));
        match t.as_mut() {
            Some(timer) => timer.set(
                Expiration::IntervalDelayed(
                    TimeSpec::from_duration(after),
                    TimeSpec::from_duration(Duration::from_millis(20)),
                ),
                TimerSetTimeFlags::empty(),
            ),
            None => Ok(()),
        }
    })
}

/// Stop this thread's timer and forget the vCPU it pointed at.
pub fn disarm() {
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    TIMER.with(|t| {
        if let Some(timer) = t.borrow_mut().as_mut() {
            let _ = timer.set(
                Expiration::OneShot(TimeSpec::from_duration(Duration::ZERO)),
                TimerSetTimeFlags::empty(),
            );
        }
    });
}

/// Forget `immediate_exit` if this thread's timer points at it (a vCPU being freed).
pub fn forget(immediate_exit: *mut u8) {
    if IMMEDIATE_EXIT.with(|c| c.get()) == immediate_exit {
        disarm();
    }
}

/// Held by every VM: when the VM is dropped, [`forget`] its vCPU (e.g. after a panic that
/// skipped [`disarm`]).
pub struct Guard(usize);

impl Guard {
    /// A guard for the vCPU whose kvm_run `immediate_exit` byte is at `immediate_exit`.
    pub fn new(immediate_exit: *mut u8) -> Guard {
        Guard(immediate_exit as usize)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        forget(self.0 as *mut u8);
    }
}
