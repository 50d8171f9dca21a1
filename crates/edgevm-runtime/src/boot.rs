//! Booting a program's main VM: load it and run `main()` to `wait_for_requests()` (or exit),
//! serving the calls the boot context allows (see docs/DESIGN.md, "Calls by context").

use std::time::Instant;

use edgevm_abi::api::Call;
use edgevm_abi::layout;
use edgevm_abi::linux::Output;
use edgevm_kvm::Vcpu;

use crate::calls::Flow;
use crate::error::CallvError;
use crate::storage::{finish_callv, read_callv, task_hypercall, BootTasks, StorageHandle};
use crate::vm::{BootOutcome, BootReport, Event, MainVm, RunError, VmOptions};

impl MainVm {
    /// Load and run the program until it exits or calls wait_for_requests().
    pub fn boot(opts: VmOptions) -> Result<(MainVm, BootReport), RunError> {
        MainVm::boot_with_storage(opts, None)
    }

    /// [`MainVm::boot`] for a program with a storage VM: its `main()` may already call
    /// storage (`storage_call`, `storage_task`), as in the reference.
    pub fn boot_with_storage(
        opts: VmOptions,
        storage: Option<StorageHandle>,
    ) -> Result<(MainVm, BootReport), RunError> {
        MainVm::boot_with(
            opts,
            &mut BootCalls {
                storage,
                own_tasks: None,
            },
        )
    }

    /// Boot a storage VM: its `main()` may schedule storage tasks into `tasks`.
    pub(crate) fn boot_storage(
        opts: VmOptions,
        tasks: &mut BootTasks,
    ) -> Result<(MainVm, BootReport), RunError> {
        let mut calls = BootCalls {
            storage: None,
            own_tasks: Some(tasks),
        };
        MainVm::boot_with(opts, &mut calls)
    }

    fn boot_with(opts: VmOptions, calls: &mut BootCalls) -> Result<(MainVm, BootReport), RunError> {
        let t0 = Instant::now();
        let mut vm = MainVm::load(opts)?;
        let load_time = t0.elapsed();
        if vm.opts.verbose {
            vm.printer.log(&format!(
                "loaded {} program: entry {:#x}, {} KiB image, {} MiB address space, {} symbols",
                vm.elf.kind.as_str(),
                vm.elf.entry,
                vm.elf.image_bytes >> 10,
                vm.layout.mem_size >> 20,
                vm.elf.symbols.len()
            ));
        }
        let t1 = Instant::now();
        if vm.opts.gdb.as_ref().is_some_and(|g| g.at_entry) {
            crate::debug::stop_at_entry(&mut vm)?;
        }
        let outcome = vm.run_init(calls)?;
        if vm.opts.verbose_pagetables && outcome == BootOutcome::Ready {
            // The page protections after initialization (glossary: verbose_pagetables).
            for line in edgevm_abi::paging::describe(&vm.machine.mem, &vm.layout) {
                vm.printer.log(&line);
            }
        }
        let report = BootReport {
            outcome,
            load_time,
            init_time: t1.elapsed(),
            exits: vm.machine.cpu.exit_count(),
            syscalls: vm.linux.syscalls,
        };
        vm.printer.flush();
        Ok((vm, report))
    }
}

impl<C: Vcpu> MainVm<C> {
    pub(crate) fn run_init(&mut self, calls: &mut BootCalls<'_>) -> Result<BootOutcome, RunError> {
        self.start_deadline(
            self.opts.max_boot_time,
            "program initialization (max_boot_time)",
        )?;
        let r = self.init_loop(calls);
        crate::debug::end(self, r.is_err());
        self.stop_deadline();
        let r = r?;
        // The guest can write to memory it never allocated; make sure the host did not grow
        // past the limit (pages actually backed, all views of this memory).
        let backed = self.machine.mem.backing_bytes();
        let limit = self.opts.max_memory + layout::USER_BASE + layout::TABLES_SIZE;
        if backed > limit {
            return Err(RunError::MemoryLimit {
                used: backed,
                limit: self.opts.max_memory,
            });
        }
        Ok(r)
    }

    pub(crate) fn init_loop(&mut self, calls: &mut BootCalls<'_>) -> Result<BootOutcome, RunError> {
        loop {
            match self.run_until_event()? {
                // Boot runs without a time slice.
                Event::Preempted => {}
                // Only TCP server systems have connection numbers.
                Event::ConnCall { .. } => {
                    return Err(RunError::Emulation(
                        "internal error: a connection call during initialization".into(),
                    ))
                }
                Event::Exited(code) => return Ok(BootOutcome::Exited(code)),
                Event::Returned => return Err(RunError::ReturnedDuringInit),
                // Only request VMs call the storage program remotely (crate::remote).
                Event::RemoteCall(c) => {
                    return Err(RunError::Emulation(format!(
                        "remote storage call to {:#x} during initialization (only requests can make them)",
                        c.func
                    )))
                }
                Event::Hypercall(call) => {
                    let flow = calls.call(self, call)?;
                    if let Some(outcome) = self.apply(call, flow) {
                        return Ok(outcome);
                    }
                }
            }
        }
    }
}

/// The boot context's handler set: the calls `main()` may make before `wait_for_requests()`
/// besides the ones every context shares ([`MainVm::run_until_event`]). Anything else is
/// refused by the shared fallback.
pub(crate) struct BootCalls<'a> {
    /// The storage VM, for storage calls made during initialization.
    pub(crate) storage: Option<StorageHandle>,
    /// Booting a storage VM: where its own tasks go.
    pub(crate) own_tasks: Option<&'a mut BootTasks>,
}

impl BootCalls<'_> {
    pub(crate) fn call<C: Vcpu>(
        &mut self,
        vm: &mut MainVm<C>,
        call: Call,
    ) -> Result<Flow<BootOutcome>, RunError> {
        Ok(match call {
            Call::WaitForRequests => {
                vm.initialized = true;
                Flow::End(BootOutcome::Ready)
            }
            Call::WaitForRequestsPaused { req } => {
                // Event-loop programs: frozen at the paused point, each request resumes it
                // there with `*req` filled in (request_vm.rs).
                vm.pause_at_wait(req.addr(), true)?;
                vm.initialized = true;
                Flow::End(BootOutcome::Ready)
            }
            Call::StorageAllow { func } => {
                // As in the reference: only the storage VM keeps an allow-list (0); the
                // main VM's calls are refused (-1).
                if vm.opts.storage {
                    vm.storage_allowed.push(func.0);
                    Flow::Return(0)
                } else {
                    Flow::Return(u64::MAX)
                }
            }
            Call::StorageCallv { .. } => match &self.storage {
                Some(st) => Flow::Return(storage_call(vm, st)?),
                None => Flow::Refuse,
            },
            Call::StorageTask { .. } => match (&self.storage, &mut self.own_tasks) {
                (Some(st), _) => Flow::Return(task_hypercall(vm, |f, d, a, b| st.task(f, d, a, b))),
                (None, Some(t)) => Flow::Return(task_hypercall(vm, |f, d, a, b| t.add(f, d, a, b))),
                (None, None) => Flow::Refuse,
            },
            Call::StopStorageTask { id } => match (&self.storage, &self.own_tasks) {
                (Some(st), _) => Flow::Return(u64::from(st.stop_task(id))),
                (None, Some(t)) => Flow::Return(u64::from(t.stop(id))),
                (None, None) => Flow::Refuse,
            },
            Call::MakeEphemeral { ephemeral: on } => {
                if vm.opts.control_ephemeral {
                    vm.ephemeral_override = Some(on);
                    Flow::Return(0)
                } else {
                    vm.printer.log(
                        "sys_make_ephemeral() refused: enable control_ephemeral in the program's configuration",
                    );
                    Flow::Return(u64::MAX)
                }
            }
            call @ Call::Fetch { .. } => Flow::Return(vm.fetch_hypercall(call)),
            _ => Flow::Refuse,
        })
    }
}

/// `storage_callv` from the main VM's `main()`: a failed call fails the boot.
fn storage_call<C: Vcpu>(vm: &mut MainVm<C>, st: &StorageHandle) -> Result<u64, RunError> {
    let Some((func, inputs, dst, dstlen)) = read_callv(vm).map_err(CallvError::BadArguments)?
    else {
        return Ok(u64::MAX);
    };
    let res = st.call(func, inputs, dstlen, vm.time_left());
    Ok(finish_callv(vm, dst, dstlen, res)?)
}
