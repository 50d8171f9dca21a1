//! Run deadlines: one POSIX timer per host thread that signals that same thread.
//!
//! Measured here (kvm-costs-here.md): a timer with SIGEV_THREAD_ID on the thread that is inside
//! KVM_RUN stops the guest ~20-55 µs after its deadline, while a watchdog thread sharing the
//! CPU takes milliseconds. The signal handler sets the running vCPU's
//! `kvm_run.immediate_exit`, so even a signal that arrives just before KVM_RUN makes it return
//! at once.
//!
//! Arming costs ~1-11 µs here (timer_settime; the TSC deadline traps to the outer
//! hypervisor), so it is done lazily: a timer that will already fire before the wanted time is
//! left as it is (a request running 4 ms slices after another one armed 4 ms ago), and a run
//! that ends does not disarm it. A fire that finds no vCPU to stop does nothing; one that
//! stops a vCPU too early is seen by the run loop ([`crate::vm::MainVm`]: the deadline has not
//! passed), which arms again and goes on. So a stream of short requests costs one
//! timer_settime and at most one early exit per slice (4 ms) instead of two syscalls each.
//!
//! The timer belongs to the *thread*, not to a VM: request VMs run on whichever thread picked
//! up the request (the HTTP worker that read it, or a blocking thread after a preemption), and
//! a storage VM runs nested on its caller's thread. [`arm`] points the thread's timer at the
//! vCPU about to run; [`disarm`] (always on the same thread, before the VM may move) stops it
//! and forgets the pointer, so a signal can never write into a vCPU that moved away or was
//! freed.

use std::cell::{Cell, RefCell};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigEvent, SigHandler, SigSet, SigevNotify, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;

/// The signal used to kick a vCPU out of KVM_RUN.
pub const KICK_SIGNAL: Signal = Signal::SIGUSR2;

thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
    static TIMER: RefCell<Option<Timer>> = const { RefCell::new(None) };
    /// When the thread's timer fires next, if it has not yet (it is one-shot).
    static FIRES_AT: Cell<Option<Instant>> = const { Cell::new(None) };
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
            // SA_RESTART: KVM_RUN returns -EINTR whatever the flags (never restarted), while
            // other system calls the signal may land in (a late fire of a lazily armed timer
            // finds the thread anywhere: epoll_wait, a futex, a blocking write) restart
            // transparently instead of failing with EINTR.
            signal::SaFlags::SA_RESTART,
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
/// caller is about to run on this thread) and make sure it fires no later than `after` from
/// now. It may fire earlier (armed for an earlier run on this thread): the run loop then finds
/// its deadline not yet passed and calls this again.
pub fn arm(immediate_exit: *mut u8, after: Duration) -> nix::Result<()> {
    IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
    let now = Instant::now();
    let want = now + after.max(Duration::from_micros(1));
    if FIRES_AT
        .with(|f| f.get())
        .is_some_and(|t| t > now && t <= want)
    {
        return Ok(());
    }
    TIMER.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_none() {
            *t = Some(new_thread_timer()?);
        }
        match t.as_mut() {
            Some(timer) => {
                timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(want - now)),
                    TimerSetTimeFlags::empty(),
                )?;
                FIRES_AT.with(|f| f.set(Some(want)));
                Ok(())
            }
            None => Ok(()),
        }
    })
}

/// Forget the vCPU this thread's timer points at (the VM stops running here). The timer
/// itself stays armed (see the module doc): a later fire finds no vCPU and does nothing.
pub fn disarm() {
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Wait (sleeping, so the signal can come) until `flag` is set; how long it took.
    fn wait_for(flag: &std::sync::atomic::AtomicU8, limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if flag.load(std::sync::atomic::Ordering::SeqCst) != 0 {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    }

    #[test]
    fn lazy_arming_never_fires_late_and_disarm_forgets_the_target() {
        std::thread::spawn(|| {
            let flag = Box::leak(Box::new(std::sync::atomic::AtomicU8::new(0)));
            let p = flag.as_ptr();
            // Armed for 2 s, then for 5 ms: the timer must be brought forward.
            arm(p, Duration::from_secs(2)).unwrap();
            arm(p, Duration::from_millis(5)).unwrap();
            let took = wait_for(flag, Duration::from_secs(1)).expect("fired");
            assert!(took < Duration::from_millis(500), "fired after {took:?}");
            // Armed for 30 ms, then asked for 10 s: left as it is, it fires early (the run
            // loop arms again then).
            flag.store(0, std::sync::atomic::Ordering::SeqCst);
            arm(p, Duration::from_millis(30)).unwrap();
            arm(p, Duration::from_secs(10)).unwrap();
            assert!(wait_for(flag, Duration::from_secs(2)).is_some());
            // Disarmed: a pending fire finds nothing to stop.
            flag.store(0, std::sync::atomic::Ordering::SeqCst);
            arm(p, Duration::from_millis(20)).unwrap();
            disarm();
            assert!(wait_for(flag, Duration::from_millis(200)).is_none());
        })
        .join()
        .unwrap();
    }
}
