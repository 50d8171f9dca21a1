//! vCPUs without KVM for unit tests of the layers above: [`FakeVcpu`] only holds registers,
//! [`ScriptedVcpu`] also plays a script of exits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::{kvm_regs, kvm_sregs, Exit, KvmError, Vcpu};

/// A vCPU that only holds registers, for unit tests and fuzzing of the layers above without
/// /dev/kvm: system call emulation and crash decoding read their arguments from it and write
/// results back, exactly as with KVM's sync_regs. `run` returns [`Exit::Hlt`].
#[derive(Debug, Default, Clone)]
pub struct FakeVcpu {
    /// General registers.
    pub regs: kvm_regs,
    /// FS base.
    pub fs: u64,
    /// GS base.
    pub gs: u64,
    /// CS.DPL that `sregs` reports: 3 at a system call under kvm_pvm, 0 on hardware KVM.
    pub dpl: u8,
    /// CR2 that `sregs` reports (the faulting address of a page fault).
    pub cr2: u64,
}

impl Vcpu for FakeVcpu {
    fn run(&mut self) -> Result<Exit, KvmError> {
        Ok(Exit::Hlt)
    }
    fn regs(&self) -> &kvm_regs {
        &self.regs
    }
    fn regs_mut(&mut self) -> &mut kvm_regs {
        &mut self.regs
    }
    fn sregs(&mut self) -> Result<kvm_sregs, KvmError> {
        let mut s = kvm_sregs::default();
        s.cs.dpl = self.dpl;
        s.cr2 = self.cr2;
        Ok(s)
    }
    fn set_fs_base(&mut self, base: u64) -> Result<(), KvmError> {
        self.fs = base;
        Ok(())
    }
    fn fs_base(&self) -> u64 {
        self.fs
    }
    fn set_gs_base(&mut self, base: u64) -> Result<(), KvmError> {
        self.gs = base;
        Ok(())
    }
    fn gs_base(&self) -> u64 {
        self.gs
    }
}

/// What the "guest" does between two exits: change the registers (as guest code would),
/// then exit.
pub type Step = Box<dyn FnMut(&mut kvm_regs) -> Exit + Send>;

/// A vCPU that plays a script: each [`Vcpu::run`] takes the next step, lets it change the
/// registers and returns its exit. When the script is over, `run` returns
/// `Exit::Other("end of script")`. It counts exits and records the register state at each
/// exit, so tests can check what the host wrote back (RAX of a call, ...).
pub struct ScriptedVcpu {
    /// Registers and segment bases.
    pub cpu: FakeVcpu,
    steps: VecDeque<Step>,
    exits: u64,
    /// Set by the run timer's signal handler (through [`Vcpu::immediate_exit_ptr`]).
    immediate_exit: Box<AtomicU8>,
    /// RAX as the host left it before each run after the first (the results of calls).
    pub results: Vec<u64>,
    /// Special registers set through [`Vcpu::set_sregs`].
    pub sregs_set: u32,
}

impl Default for ScriptedVcpu {
    fn default() -> Self {
        ScriptedVcpu::new()
    }
}

impl ScriptedVcpu {
    /// An empty script.
    pub fn new() -> Self {
        ScriptedVcpu {
            cpu: FakeVcpu::default(),
            steps: VecDeque::new(),
            exits: 0,
            immediate_exit: Box::new(AtomicU8::new(0)),
            results: Vec::new(),
            sregs_set: 0,
        }
    }

    /// Add a step to the script.
    pub fn then(&mut self, step: impl FnMut(&mut kvm_regs) -> Exit + Send + 'static) -> &mut Self {
        self.steps.push_back(Box::new(step));
        self
    }

    /// Add an exit that changes no register.
    pub fn exit(&mut self, exit: Exit) -> &mut Self {
        self.then(move |_| exit.clone())
    }

    /// Steps not played yet.
    pub fn left(&self) -> usize {
        self.steps.len()
    }
}

impl Vcpu for ScriptedVcpu {
    fn run(&mut self) -> Result<Exit, KvmError> {
        if self.exits > 0 {
            self.results.push(self.cpu.regs.rax);
        }
        self.exits += 1;
        if self.immediate_exit.load(Ordering::Relaxed) != 0 {
            return Ok(Exit::Interrupted);
        }
        Ok(match self.steps.pop_front() {
            Some(mut step) => step(&mut self.cpu.regs),
            None => Exit::Other("end of script".into()),
        })
    }
    fn regs(&self) -> &kvm_regs {
        &self.cpu.regs
    }
    fn regs_mut(&mut self) -> &mut kvm_regs {
        &mut self.cpu.regs
    }
    fn sregs(&mut self) -> Result<kvm_sregs, KvmError> {
        self.cpu.sregs()
    }
    fn set_fs_base(&mut self, base: u64) -> Result<(), KvmError> {
        self.cpu.set_fs_base(base)
    }
    fn fs_base(&self) -> u64 {
        self.cpu.fs
    }
    fn set_gs_base(&mut self, base: u64) -> Result<(), KvmError> {
        self.cpu.set_gs_base(base)
    }
    fn gs_base(&self) -> u64 {
        self.cpu.gs
    }
    fn exit_count(&self) -> u64 {
        self.exits
    }
    fn immediate_exit_ptr(&mut self) -> *mut u8 {
        self.immediate_exit.as_ptr()
    }
    fn clear_immediate_exit(&mut self) {
        self.immediate_exit.store(0, Ordering::Relaxed);
    }
    fn set_sregs(&mut self, _s: &kvm_sregs) -> Result<(), KvmError> {
        self.sregs_set += 1;
        Ok(())
    }
}
