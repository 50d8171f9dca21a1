//! A model check of the turn protocol ([`TurnState`]): every interleaving of a few callers,
//! a job producer and the storage thread is run (stateless search with replay, as loom does,
//! at the granularity of the turn lock: each step below is one critical section of the real
//! code). After every step exactly one party may hold the turn — a caller, the storage thread,
//! or a hand-over in flight (a wake-up or job sent but not received yet) — iff `held`; at the
//! end nobody waits forever and the turn is free; callers are woken in queue order.

use crossbeam_channel::{Receiver, Sender};

use super::turn::TurnState;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Caller: take the turn or queue (`Core::take_turn`).
    Take(usize),
    /// Caller: the wake-up arrived (`Queued::wait_up_to`).
    Woken(usize),
    /// Caller: give up its place (`Queued::drop`, first critical section).
    GiveUp(usize),
    /// Caller: hand the turn on (`Turn::drop`, or `Queued::drop` when it was handed over).
    Release(usize),
    /// Producer: queue a job (`Core::enqueue`).
    Enqueue,
    /// Storage thread: receive a job (it has the turn).
    Receive,
    /// Storage thread: done with the job.
    StorageRelease,
}

enum Caller {
    Start,
    Queued {
        id: u64,
        rx: Receiver<()>,
    },
    /// Gave up, found the turn handed to it: passes it on next.
    Releasing,
    Holding,
    Done,
}

struct World {
    turn: TurnState<u32>,
    callers: Vec<Caller>,
    may_give_up: Vec<bool>,
    jobs: (Sender<u32>, Receiver<u32>),
    jobs_left: u32,
    running: bool,
    /// The storage thread's release offers an idle job (a clean-up left) this many times.
    idle_jobs: u32,
    /// Ids of woken callers, in order.
    woken: Vec<u64>,
}

impl World {
    fn new(may_give_up: &[bool], jobs: u32, idle_jobs: u32) -> Self {
        World {
            turn: TurnState::default(),
            callers: may_give_up.iter().map(|_| Caller::Start).collect(),
            may_give_up: may_give_up.to_vec(),
            jobs: crossbeam_channel::unbounded(),
            jobs_left: jobs,
            running: false,
            idle_jobs,
            woken: Vec::new(),
        }
    }

    fn enabled(&self) -> Vec<Action> {
        let mut v = Vec::new();
        for (i, c) in self.callers.iter().enumerate() {
            match c {
                Caller::Start => v.push(Action::Take(i)),
                Caller::Queued { rx, .. } => {
                    if !rx.is_empty() {
                        v.push(Action::Woken(i));
                    }
                    if self.may_give_up[i] {
                        v.push(Action::GiveUp(i));
                    }
                }
                Caller::Releasing | Caller::Holding => v.push(Action::Release(i)),
                Caller::Done => {}
            }
        }
        if self.jobs_left > 0 {
            v.push(Action::Enqueue);
        }
        if self.running {
            v.push(Action::StorageRelease);
        } else if !self.jobs.1.is_empty() {
            v.push(Action::Receive);
        }
        v
    }

    fn release(&mut self) {
        let tx = self.jobs.0.clone();
        let idle = &mut self.idle_jobs;
        self.turn.hand_over(
            |j| tx.send(j).is_ok(),
            || {
                (*idle > 0).then(|| {
                    *idle -= 1;
                    99
                })
            },
        );
    }

    fn step(&mut self, a: Action) {
        match a {
            Action::Take(i) => {
                self.callers[i] = if self.turn.try_take() {
                    Caller::Holding
                } else {
                    let (id, rx) = self.turn.push_caller();
                    Caller::Queued { id, rx }
                };
            }
            Action::Woken(i) => {
                if let Caller::Queued { id, rx } = &self.callers[i] {
                    assert!(rx.try_recv().is_ok());
                    self.woken.push(*id);
                }
                self.callers[i] = Caller::Holding;
            }
            Action::GiveUp(i) => {
                let Caller::Queued { id, .. } = &self.callers[i] else {
                    unreachable!()
                };
                let left = self.turn.cancel(*id);
                self.callers[i] = if left {
                    Caller::Done
                } else {
                    Caller::Releasing
                };
            }
            Action::Release(i) => {
                self.release();
                self.callers[i] = Caller::Done;
            }
            Action::Enqueue => {
                self.jobs_left -= 1;
                if self.turn.try_take() {
                    self.jobs.0.send(1).unwrap();
                } else {
                    self.turn.queue.push_back(super::turn::Waiter::Job(1));
                }
            }
            Action::Receive => {
                self.jobs.1.try_recv().unwrap();
                self.running = true;
            }
            Action::StorageRelease => {
                self.running = false;
                self.release();
            }
        }
    }

    /// Parties holding the turn (a hand-over in flight counts for its receiver).
    fn holders(&self) -> usize {
        let callers = self
            .callers
            .iter()
            .filter(|c| match c {
                Caller::Holding | Caller::Releasing => true,
                Caller::Queued { rx, .. } => !rx.is_empty(),
                _ => false,
            })
            .count();
        callers + usize::from(self.running) + self.jobs.1.len()
    }

    fn check(&self, trace: &[Action]) {
        let n = self.holders();
        assert!(
            n <= 1,
            "two holders of the turn after {} steps",
            trace.len()
        );
        assert_eq!(
            n == 1,
            self.turn.held,
            "held flag out of step with the holders"
        );
        assert!(
            self.woken.windows(2).all(|w| w[0] < w[1]),
            "callers woken out of queue order: {:?}",
            self.woken
        );
    }

    fn check_end(&self) {
        for c in &self.callers {
            assert!(
                matches!(c, Caller::Done),
                "a caller waits forever (lost wake-up)"
            );
        }
        assert!(!self.turn.held && self.turn.queue.is_empty() && !self.running);
    }
}

/// Run every interleaving; the number of complete runs.
fn explore(may_give_up: &[bool], jobs: u32, idle_jobs: u32) -> u64 {
    let mut runs = 0;
    let mut stack: Vec<Vec<Action>> = vec![Vec::new()];
    while let Some(prefix) = stack.pop() {
        let mut w = World::new(may_give_up, jobs, idle_jobs);
        for &a in &prefix {
            w.step(a);
        }
        w.check(&prefix);
        let next = w.enabled();
        if next.is_empty() {
            w.check_end();
            runs += 1;
            continue;
        }
        for a in next {
            let mut p = prefix.clone();
            p.push(a);
            stack.push(p);
        }
    }
    runs
}

#[test]
fn three_callers_and_two_jobs_share_the_turn_in_every_interleaving() {
    let runs = explore(&[false, false, false], 2, 0);
    assert!(runs > 10_000, "{runs}");
}

#[test]
fn callers_that_give_up_never_lose_the_turn_or_a_wake_up() {
    let runs = explore(&[true, false, true, true], 0, 0);
    assert!(runs > 5_000, "{runs}");
}

#[test]
fn the_idle_clean_up_job_is_handed_the_turn_and_gives_it_back() {
    let runs = explore(&[true, false], 1, 1);
    assert!(runs > 100, "{runs}");
}
