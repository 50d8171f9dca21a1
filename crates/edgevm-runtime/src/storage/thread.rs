//! The storage thread: boots the storage VM, runs the jobs handed to it with the turn (tasks,
//! boot-time calls, live updates) and finishes calls left unfinished when nobody comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use edgevm_abi::linux::Output;

use super::calls::{serve_turn, settle, Started};
use super::tasks::{task_job, Alive, BootTasks, TaskState, Tasks};
use super::turn::{Turn, TurnState};
use super::{describe, program_exits, Core, Job, Kind, Served, StorageError, StorageHandle};
use crate::vm::{BootOutcome, MainVm, VmOptions};

/// Boot the storage VM on its own thread and return a handle once it reached
/// wait_for_requests(). The thread then serves the jobs (tasks, boot-time calls, live
/// updates) and finishes calls left unfinished when nobody else comes.
pub fn start(
    opts: VmOptions,
    max_storage_time: Duration,
    queue_timeout: Duration,
) -> Result<StorageHandle, StorageError> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<Arc<Core>, StorageError>>(1);
    let name = opts.name.clone();
    let (wake, woken) = crossbeam_channel::bounded::<()>(1);
    let tasks = Arc::new(Tasks {
        state: Mutex::new(TaskState::default()),
        wake,
    });
    let tasks2 = tasks.clone();
    std::thread::Builder::new()
        .name(format!("storage:{name}"))
        .spawn(move || {
            // The storage VM's main() may schedule tasks too (as in the reference).
            let mut boot_tasks = BootTasks {
                tasks: tasks2.clone(),
                now: Vec::new(),
            };
            let (mut vm, report) = match MainVm::boot_storage(opts, &mut boot_tasks) {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(StorageError::Boot(e)));
                    return;
                }
            };
            if let BootOutcome::Exited(code) = report.outcome {
                let _ = ready_tx.send(Err(StorageError::BootExited(code)));
                return;
            }
            // The request-entry stub restores FPU state from the FXSAVE area: give it this
            // VM's own.
            let xsave = vm.install_entry_fpu().unwrap_or(false);
            let entry = vm.entry_state(xsave);
            let exits = program_exits(&vm);
            let core = Arc::new(Core {
                turn: Mutex::new(TurnState::default()),
                served: Mutex::new(Served {
                    allowed: vm.storage_allowed.clone(),
                    // In the gap between the frozen frame and the calls' inputs.
                    mailbox: Some(entry.rsp.wrapping_sub(2048) & !63),
                    vm: super::StorageVm(vm),
                    entry,
                    open: None,
                    left_at: Instant::now(),
                }),
                jobs: tx,
                tasks: tasks2,
                budget: max_storage_time,
                next_id: AtomicU64::new(0),
                exits: AtomicU64::new(exits),
                dozing: std::sync::atomic::AtomicBool::new(true),
            });
            for (func, data) in boot_tasks.now {
                if let Err(e) = core.enqueue(task_job(func, data)) {
                    tracing::warn!("a storage task from main() was not queued: {e}");
                }
            }
            let _ = ready_tx.send(Ok(core.clone()));
            serve(core, rx, woken)
        })
        .map_err(|source| StorageError::Thread {
            what: "storage thread",
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(core)) => Ok(StorageHandle {
            core,
            timeout: max_storage_time + queue_timeout,
            remote: None,
            remote_binary: None,
            _alive: Arc::new(Alive(tasks)),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StorageError::BootThreadEnded),
    }
}

/// The storage thread: run the jobs handed to it (with the turn), finish calls left
/// unfinished when nobody comes, and end once every handle is gone. While calls come it
/// looks every 20 ms for a clean-up left behind for 10 ms; after 2 s without a job it dozes
/// (500 ms), and a holder that leaves a clean-up behind hands it the turn instead. It also
/// queues the scheduled tasks when they are due (woken through `woken` when the schedule
/// changes), so a storage program costs one thread.
pub(super) fn serve(core: Arc<Core>, rx: Receiver<Job>, woken: Receiver<()>) {
    let mut active_until = Instant::now();
    loop {
        let next_task = core.tasks.queue_due(&core);
        let now = Instant::now();
        let dozing = now >= active_until;
        core.dozing.store(dozing, Ordering::Relaxed);
        let mut wait = Duration::from_millis(if dozing { 500 } else { 20 });
        if let Some(at) = next_task {
            wait = wait.min(at.saturating_duration_since(now));
        }
        let got = crossbeam_channel::select! {
            recv(rx) -> job => job.map_err(|_| RecvTimeoutError::Disconnected),
            recv(woken) -> _ => {
                if core.tasks.is_stopped() {
                    finish_left_clean_up(&core);
                    return;
                }
                continue;
            }
            default(wait) => Err(RecvTimeoutError::Timeout),
        };
        match got {
            Ok(job) => {
                let turn = Turn(core.clone());
                run_job(&core, job);
                drop(turn);
                active_until = Instant::now() + Duration::from_secs(2);
            }
            Err(RecvTimeoutError::Timeout) => {
                if core.tasks.is_stopped() {
                    // The program is gone: run the last clean-up before the VM goes.
                    finish_left_clean_up(&core);
                    return;
                }
                // A clean-up (or a call) left unfinished, and nobody came since: finish it.
                let stale = core.served.try_lock().is_ok_and(|s| {
                    s.open.is_some() && s.left_at.elapsed() >= Duration::from_millis(10)
                });
                if !stale {
                    continue;
                }
                finish_left_clean_up(&core);
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Finish a clean-up (or call) left unfinished in the storage VM, if nobody holds the turn.
pub(super) fn finish_left_clean_up(core: &Arc<Core>) {
    if let Some(turn) = core.try_turn() {
        run_job(
            core,
            Job {
                call: None,
                reply: None,
            },
        );
        drop(turn);
    }
}

/// Run a job on the storage thread (which holds the turn).
pub(super) fn run_job(core: &Core, job: Job) {
    let Job { call, reply } = job;
    let mut s = core.lock_served();
    let e0 = program_exits(&s.vm);
    if let Some(mut call) = call {
        let task = matches!(call.kind, Kind::Task);
        let func = call.func;
        let r = match call.kind {
            Kind::LiveUpdate | Kind::LiveRestore(_) => {
                let h = s.vm.handlers;
                call.func = if matches!(call.kind, Kind::LiveUpdate) {
                    h.on_live_update
                } else {
                    h.on_live_restore
                };
                if call.func == 0 {
                    None
                } else {
                    Some(call)
                }
            }
            _ => Some(call),
        };
        let r = match r {
            None => Ok(None),
            Some(call) => {
                let mut started = Started::No(call);
                serve_turn(core, &mut s, &mut started, None, true)
                    .unwrap_or(Err(StorageError::Internal("a storage job was preempted")))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(r);
        } else if let (true, Err(e)) = (task, r) {
            let what = describe(&s.vm, func);
            s.vm.printer
                .log(&format!("storage task {what} failed: {e}"));
        }
    }
    // Nobody waits for the clean-up here.
    settle(core, &mut s);
    let exits = program_exits(&s.vm).wrapping_sub(e0);
    drop(s);
    core.exits.fetch_add(exits, Ordering::Relaxed);
}
