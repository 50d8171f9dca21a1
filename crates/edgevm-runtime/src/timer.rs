//! Per-vCPU timeouts: a POSIX timer that signals the vCPU's own thread.
//!
//! Measured here (kvm-costs-here.md): a timer with SIGEV_THREAD_ID on the vCPU thread stops the
//! guest ~20-55 µs after its deadline, while a watchdog thread sharing the CPU takes
//! milliseconds. The signal handler sets `kvm_run.immediate_exit`, so even a signal that
//! arrives just before KVM_RUN makes it return at once; the timer re-fires every 20 ms after the
//! deadline in case one is missed. Arming costs ~1-11 µs, once per run.

use std::cell::Cell;
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
}

extern "C" fn on_kick(_: libc::c_int) {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer was registered by this thread's VcpuTimer and points into the
        // vCPU's kvm_run mapping, which outlives the registration (cleared in Drop).
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

/// A timer bound to the current thread and one vCPU.
pub struct VcpuTimer {
    timer: Timer,
}

impl VcpuTimer {
    /// Create a timer for the calling thread; `immediate_exit` is the vCPU's
    /// `kvm_run.immediate_exit` byte (valid while this timer lives).
    pub fn new(immediate_exit: *mut u8) -> nix::Result<Self> {
        install_handler();
        let mut set = SigSet::empty();
        set.add(KICK_SIGNAL);
        set.thread_unblock()?;
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        let tid = nix::unistd::gettid().as_raw();
        let timer = Timer::new(
            ClockId::CLOCK_MONOTONIC,
            SigEvent::new(SigevNotify::SigevThreadId {
                signal: KICK_SIGNAL,
                thread_id: tid,
                si_value: 0,
            }),
        )?;
        Ok(VcpuTimer { timer })
    }

    /// Fire after `budget`, then every 20 ms until disarmed.
    pub fn arm(&mut self, budget: Duration) -> nix::Result<()> {
        let budget = budget.max(Duration::from_micros(1));
        self.timer.set(
            Expiration::IntervalDelayed(
                TimeSpec::from_duration(budget),
                TimeSpec::from_duration(Duration::from_millis(20)),
            ),
            TimerSetTimeFlags::empty(),
        )
    }

    /// Stop the timer.
    pub fn disarm(&mut self) -> nix::Result<()> {
        self.timer.set(
            Expiration::OneShot(TimeSpec::from_duration(Duration::ZERO)),
            TimerSetTimeFlags::empty(),
        )
    }
}

impl Drop for VcpuTimer {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}
