//! The request context's `multiprocess*` calls (the SMP workers themselves are in smp.rs).

use std::time::Instant;

use edgevm_abi::api::Call;
use edgevm_abi::guest_abi::io::SMP_VCPU_INFO;
use edgevm_abi::io::VCPU_INFO;
use edgevm_abi::layout;
use edgevm_abi::linux::Output;
use edgevm_kvm::{kvm_regs, MemoryView, Vcpu};

use crate::invoker::Invoker;
use crate::request_vm::{FailureKind, RequestFailure};
use crate::smp::{Smp, WorkerError, MAX_SMP, WORKER_STACK};

/// Smallest stack a `multiprocess_clone` worker may be given.
const MIN_CLONE_STACK: u64 = 4096;

impl<M: MemoryView> Invoker<M> {
    /// Refuse a `multiprocess*` call: -1 and a log line, as the reference.
    fn mp_refuse(&mut self, why: &str) -> u64 {
        self.vm
            .printer
            .log(&format!("multiprocess: {why}; returning -1"));
        u64::MAX
    }

    /// `multiprocess`, `multiprocess_array`, `multiprocess_clone` from a request handler: start
    /// n - 1 workers on extra vCPUs and return 0 at once (-1 and a log line when refused).
    pub(crate) fn multiprocess(&mut self, call: Call) -> u64 {
        let n = match call {
            Call::Multiprocess { n, .. }
            | Call::MultiprocessArray { n, .. }
            | Call::MultiprocessClone { n, .. } => n,
            _ => return u64::MAX,
        };
        let smp = self.vm.opts.smp.min(MAX_SMP);
        if smp == 0 {
            return self.mp_refuse(
                "this program has no extra vCPUs (set \"smp\" in its configuration, up to 16)",
            );
        }
        if n < 2 || n - 1 > u64::from(smp) {
            return self.mp_refuse(&format!(
                "n = {n} vCPUs asked for; this program may use 2 to {} (\"smp\": {smp} extra)",
                smp + 1
            ));
        }
        if self.vm.smp.as_ref().is_some_and(|s| s.active()) {
            return self
                .mp_refuse("the previous call's workers were not waited for (multiprocess_wait)");
        }
        if self.vm.linux.page_tables_pending() {
            return self.mp_refuse("page protections are being changed");
        }
        let workers = (n - 1) as u32;
        let l = self.vm.layout;
        let user = |a: u64| l.is_user(a);
        let main = *self.vm.machine.cpu.regs();
        let base = kvm_regs {
            rip: layout::REQUEST_ENTRY,
            rflags: 0x202,
            r10: self.entry.worker_r10(),
            ..Default::default()
        };
        let mut jobs: Vec<kvm_regs> = Vec::with_capacity(workers as usize);
        match call {
            Call::Multiprocess { func, .. } | Call::MultiprocessArray { func, .. }
                if !user(func.0) =>
            {
                return self.mp_refuse(&format!(
                    "function {:#x} is outside the program's memory",
                    func.0
                ));
            }
            Call::Multiprocess { func, arg, .. } => {
                let Some(stacks) = self.worker_stacks(workers) else {
                    return self.mp_refuse("no memory for the workers' stacks");
                };
                for k in 1..=u64::from(workers) {
                    jobs.push(kvm_regs {
                        r11: func.0,
                        rsp: (stacks + k * WORKER_STACK) & !15,
                        // Up to 4 arguments, as the reference: arg, then RCX, R8, R9.
                        rdi: arg.addr(),
                        rsi: main.rcx,
                        rdx: main.r8,
                        rcx: main.r9,
                        ..base
                    });
                }
            }
            Call::MultiprocessArray {
                func,
                array,
                element_size,
                ..
            } => {
                let Some(stacks) = self.worker_stacks(workers) else {
                    return self.mp_refuse("no memory for the workers' stacks");
                };
                // As the reference: worker k gets (&array[k], element_size); the caller
                // handles element 0.
                let size = element_size & 0xFFFF_FFFF;
                for k in 1..=u64::from(workers) {
                    jobs.push(kvm_regs {
                        r11: func.0,
                        rsp: (stacks + k * WORKER_STACK) & !15,
                        rdi: array.addr().wrapping_add(k.wrapping_mul(size)),
                        rsi: size,
                        ..base
                    });
                }
            }
            Call::MultiprocessClone { stack, .. } => {
                let (lo, size) = (stack.addr(), stack.len);
                let end = size.checked_mul(n).and_then(|l| lo.checked_add(l));
                let outside = |e: u64| !user(e - 1) || (lo < l.tables && e > l.tables);
                if size < MIN_CLONE_STACK || !user(lo) || end.is_none_or(outside) {
                    return self.mp_refuse(&format!(
                        "stacks of {size} bytes x {n} at {lo:#x} are not inside the program's \
                         memory (or under {MIN_CLONE_STACK} bytes each)"
                    ));
                }
                // Workers go on where the call returns, on their own stacks.
                let Ok(ret) = self.vm.machine.mem.read_u64(main.rsp) else {
                    return self.mp_refuse("no return address on the caller's stack");
                };
                if !user(ret) {
                    return self.mp_refuse("the return address is outside the program's memory");
                }
                for k in 1..=u64::from(workers) {
                    // The entry stub calls R11: at the return point RSP is 16-aligned, as
                    // after the call returned. RAX, RBP, R10, R11, R14, R15 are clobbered.
                    jobs.push(kvm_regs {
                        rip: layout::REQUEST_ENTRY,
                        rflags: 0x202,
                        r10: self.entry.worker_r10(),
                        r11: ret,
                        rsp: ((lo + k * size) & !15) - 8,
                        rax: 0,
                        rbp: 0,
                        r14: 0,
                        r15: 0,
                        ..main
                    });
                }
            }
            _ => return u64::MAX,
        }
        if self.vm.linux.page_tables_pending() {
            // The workers' vCPUs cannot re-read changed entries (docs/DESIGN.md, "SMP").
            return self.mp_refuse("page protections are being changed");
        }
        // The vCPUs' special registers: user mode as at the frozen point, the caller's TLS,
        // GS at each vCPU's own vcpuid()/vcpureqid() block.
        let template = match self.entry.user_sregs() {
            Some(s) => s,
            None => match self.vm.machine.cpu.sregs() {
                Ok(s) => s,
                Err(e) => return self.mp_refuse(&e.to_string()),
            },
        };
        let reqid = self.vm.machine.mem.read_u64(VCPU_INFO).unwrap_or(0) >> 32;
        let fs = self.vm.machine.cpu.fs_base();
        let mut sregs = Vec::with_capacity(workers as usize);
        for k in 1..=u64::from(workers) {
            let block = SMP_VCPU_INFO + 8 * k;
            let info = k | (reqid << 32);
            if self
                .vm
                .machine
                .mem
                .write(block, &info.to_le_bytes())
                .is_err()
            {
                return self.mp_refuse("cannot write the vCPU data");
            }
            let mut s = template;
            s.fs.base = fs;
            s.gs.base = block;
            sregs.push(s);
        }
        let deadline = self
            .vm
            .deadline
            .map(|(d, _, _)| d)
            .unwrap_or_else(|| Instant::now() + self.settings.max_request_time);
        let mem = (
            self.vm.machine.mem.host_addr() as usize,
            self.vm.machine.mem.size() as u64,
        );
        let smp = self.vm.smp.get_or_insert_with(|| Box::new(Smp::new()));
        if let Err(e) = smp.ensure(&self.vm.machine.cpu, workers, &template, mem) {
            return self.mp_refuse(&e);
        }
        smp.start(jobs.into_iter().zip(sregs).collect(), deadline);
        0
    }

    /// Stacks for `workers` workers of `multiprocess`/`multiprocess_array` (512 KiB each):
    /// those reserved at boot, else mapped like the program's own `mmap` for this request.
    fn worker_stacks(&mut self, workers: u32) -> Option<u64> {
        if self.vm.smp_stacks != 0 {
            return Some(self.vm.smp_stacks);
        }
        // A program started from a snapshot: map them for this request (the reset unmaps).
        let smp = self.vm.smp.get_or_insert_with(|| Box::new(Smp::new()));
        if let Some((at, count)) = smp.stacks {
            if count >= workers {
                return Some(at);
            }
        }
        let len = u64::from(self.vm.opts.smp.min(MAX_SMP)) * WORKER_STACK;
        let at = self
            .vm
            .linux
            .map_anonymous_huge(len, &mut self.vm.machine.mem)?;
        if let Some(s) = self.vm.smp.as_mut() {
            s.stacks = Some((at, self.vm.opts.smp));
        }
        Some(at)
    }

    /// `multiprocess_wait()` on the main vCPU: Ok(Some(0)) when every worker finished,
    /// Ok(None) when they still run at the end of the time slice (the wait goes on where the
    /// VM resumes), Err when one failed (the request fails).
    pub(crate) fn multiprocess_wait(&mut self) -> Result<Option<u64>, RequestFailure> {
        let in_slice = self.vm.slice_left().is_some();
        let limit = match self.vm.slice_left() {
            Some(s) => s,
            // Workers end by the request's deadline (their own timers); a little more for
            // them to report.
            None => {
                self.vm
                    .time_left()
                    .unwrap_or(self.settings.max_request_time)
                    + std::time::Duration::from_secs(1)
            }
        };
        let Some(smp) = self.vm.smp.as_mut() else {
            return Ok(Some(0));
        };
        match smp.wait(Some(limit)) {
            Ok(Some(stale)) => {
                if stale {
                    self.vm.stale = true;
                }
                Ok(Some(0))
            }
            Ok(None) if in_slice => Ok(None),
            Ok(None) => {
                smp.stop();
                Err(RequestFailure {
                    message: "multiprocess workers did not end by the request's deadline".into(),
                    kind: FailureKind::Timeout,
                })
            }
            Err(e) => Err(self.worker_failure(e)),
        }
    }

    /// The request ends (response, failure or streaming): stop every worker still running.
    /// A worker that failed meanwhile fails the request.
    pub(crate) fn end_workers(&mut self) -> Option<RequestFailure> {
        let smp = self.vm.smp.as_mut()?;
        if !smp.active() {
            return None;
        }
        let failed = match smp.wait(Some(std::time::Duration::ZERO)) {
            Err(e) => Some(e),
            Ok(Some(true)) => {
                self.vm.stale = true;
                None
            }
            Ok(_) => None,
        };
        if smp.stop() {
            self.vm.stale = true;
        }
        failed.map(|e| self.worker_failure(e))
    }

    fn worker_failure(&self, e: WorkerError) -> RequestFailure {
        let message = match e.crash {
            Some(mut c) => {
                c.symbol = self
                    .vm
                    .elf
                    .symbols
                    .lookup(c.rip)
                    .map(|(n, off)| format!("{n}+{off:#x}"));
                format!("multiprocess worker on vCPU {} crashed: {c}", e.vcpu)
            }
            None => format!("multiprocess worker on vCPU {}: {}", e.vcpu, e.message),
        };
        RequestFailure {
            message,
            kind: e.kind,
        }
    }
}
