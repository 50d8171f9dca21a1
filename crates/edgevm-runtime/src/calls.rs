//! What a context's handler set does with a guest call, and the one fallback every context
//! shares for calls it refuses (see docs/DESIGN.md, "Calls by context"). The handler sets:
//! boot (boot.rs), request (request_vm.rs) and storage (storage/calls.rs); the calls every
//! context shares are served by [`crate::vm::MainVm::run_until_event`] itself.

use edgevm_abi::api::{self, Call};
use edgevm_abi::linux::Output;
use edgevm_kvm::{MemoryView, Vcpu};

use crate::vm::Vm;

/// What a handler set made of one call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow<T> {
    /// Served: this goes to RAX and the guest goes on.
    Return(u64),
    /// Served, and the run loop ends with this.
    End(T),
    /// Not allowed in this context: the shared fallback answers.
    Refuse,
}

impl<C: Vcpu, M: MemoryView> Vm<C, M> {
    /// Carry out a handler set's [`Flow`] for `call`: Some(value) when the loop ends.
    pub(crate) fn apply<T>(&mut self, call: Call, flow: Flow<T>) -> Option<T> {
        match flow {
            Flow::Return(v) => {
                self.machine.cpu.regs_mut().rax = v;
                None
            }
            Flow::End(t) => Some(t),
            Flow::Refuse => {
                self.unsupported_call(call.num());
                None
            }
        }
    }

    /// A number that is no call (or `sys_request`, declared by the reference and served by
    /// nobody): -ENOSYS and a log line, as the reference.
    pub fn unknown_call(&mut self, num: u32) {
        self.printer.log(&format!(
            "kvm_api call {num:#x} ({}) is not implemented; returning -ENOSYS",
            api::name(num)
        ));
        self.machine.cpu.regs_mut().rax = (-(libc::ENOSYS as i64)) as u64;
    }

    /// The shared fallback: answer a call the context does not serve with -1 and a log line.
    pub fn unsupported_call(&mut self, num: u32) {
        self.printer.log(&format!(
            "kvm_api call {} ({num:#x}) is not supported here; returning -1",
            api::name(num)
        ));
        self.machine.cpu.regs_mut().rax = u64::MAX;
    }
}
