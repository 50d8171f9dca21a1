//! Spare KVM VMs for snapshot starts (docs/DESIGN.md, "Snapshot files").
//!
//! A program started from its snapshot file is ready in well under a millisecond, less than it
//! takes to make the KVM VM of its first request VM (KVM_CREATE_VM, a vCPU and the memory slot:
//! ~0.6 ms on a quiet machine here, much more under load, because the slot waits for an SRCU
//! grace period). So the server keeps a few such VMs made ahead ([`VmShell::with_slot`]), per
//! memory size of the programs that have a snapshot file, and the first fork of a snapshot
//! start (or of a program whose idle VMs were freed) takes one; a low-priority thread makes a
//! new one right away. `EDGEVM_SPARE_VMS` (default 2, 0: none) is how many per size.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use edgevm_kvm::VmShell;

#[derive(Default)]
struct Spares {
    /// Memory size → VMs made for it.
    ready: HashMap<usize, Vec<VmShell>>,
    /// Sizes a thread is making VMs for now.
    filling: Vec<usize>,
}

fn spares() -> &'static Mutex<Spares> {
    static S: OnceLock<Mutex<Spares>> = OnceLock::new();
    S.get_or_init(Mutex::default)
}

fn lock() -> std::sync::MutexGuard<'static, Spares> {
    spares().lock().unwrap_or_else(|e| e.into_inner())
}

/// How many spare VMs to keep per memory size.
fn target() -> usize {
    crate::env::spare_vms().unwrap_or(2) as usize
}

/// Keep spare VMs for programs of `size` bytes of memory from now on (made in the background).
pub(crate) fn want(size: usize) {
    fill(size);
}

/// A spare VM for a program of `size` bytes, if one is ready (another is made in its place).
pub(crate) fn take(size: usize) -> Option<VmShell> {
    let shell = lock().ready.get_mut(&size).and_then(Vec::pop);
    if shell.is_some() {
        fill(size);
    }
    shell
}

/// How many spare VMs are ready now (all sizes).
pub fn ready() -> usize {
    lock().ready.values().map(Vec::len).sum()
}

/// Start a low-priority thread making VMs for `size` up to the target, unless one runs.
fn fill(size: usize) {
    let n = target();
    {
        let mut s = lock();
        let have = s.ready.get(&size).map_or(0, Vec::len);
        if n == 0 || have >= n || s.filling.contains(&size) {
            return;
        }
        s.filling.push(size);
    }
    let spawned = std::thread::Builder::new()
        .name("spare-vms".into())
        .spawn(move || {
            // Below the request and boot threads' priority (Linux: per-thread nice).
            let tid = nix::unistd::gettid().as_raw() as libc::id_t;
            // SAFETY: plain system call on this thread's own id; failure is harmless.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) };
            loop {
                if lock().ready.get(&size).map_or(0, Vec::len) >= n {
                    break;
                }
                match crate::vm::prepared_shell(size) {
                    Ok(v) => lock().ready.entry(size).or_default().push(v),
                    Err(e) => {
                        tracing::debug!("no spare VM of {size} bytes: {e}");
                        break;
                    }
                }
            }
            lock().filling.retain(|&s| s != size);
        });
    if spawned.is_err() {
        lock().filling.retain(|&s| s != size);
    }
}
