//! Unit tests of the runtime's logic without /dev/kvm: VMs over a [`ScriptedVcpu`] and a
//! memfd-backed [`GuestMemory`], and the pure parts (reset policy, storage turn, tasks).

mod boot_calls;
mod hot_pages;
mod run_loop;
mod storage_args;

use edgevm_abi::elf::LoadedElf;
use edgevm_abi::layout::{self, Layout};
use edgevm_abi::linux::{LinuxConfig, LinuxState};
use edgevm_kvm::{kvm_regs, Exit, KvmMachine, MainMemory, ScriptedVcpu};

use crate::vm::{MainVm, VmOptions};

/// Options for a test VM (16 MiB of program memory).
pub(crate) fn options() -> VmOptions {
    let mut o = VmOptions::new("t", "/t".into(), Vec::new());
    o.max_memory = 16 << 20;
    o.address_space = 64 << 20;
    o
}

/// A VM over `cpu` with fresh memory and process state, output captured.
pub(crate) fn vm_with(cpu: ScriptedVcpu, opts: VmOptions) -> MainVm<ScriptedVcpu> {
    let size = opts.memory_size();
    let layout = Layout::new(size, opts.shared_memory).expect("layout");
    let mut mem = MainMemory::new(size as usize).expect("memfd");
    mem.set_protected(layout.protected().to_vec());
    let linux = LinuxState::new(
        layout,
        LinuxConfig {
            max_memory: opts.max_memory,
            exe_path: "/t".into(),
            verbose_syscalls: false,
            state_file: None,
            ..LinuxConfig::default()
        },
        layout::USER_BASE + (1 << 20),
        1 << 20,
    );
    let mut vm = MainVm::assemble(
        KvmMachine { cpu, mem },
        linux,
        LoadedElf::default(),
        layout,
        opts,
    );
    vm.printer.start_capture();
    vm
}

/// A VM over `cpu` with [`options`].
pub(crate) fn vm(cpu: ScriptedVcpu) -> MainVm<ScriptedVcpu> {
    vm_with(cpu, options())
}

/// A script step: a kvm_api hypercall `num(args...)` (SysV registers, `out %eax,$0`).
pub(crate) fn hypercall(num: u32, args: &[u64]) -> impl FnMut(&mut kvm_regs) -> Exit + Send {
    let args = args.to_vec();
    move |r| {
        set_args(r, &args);
        r.rax = u64::from(num);
        Exit::IoOut {
            port: layout::API_PORT,
            value: num,
            size: 4,
        }
    }
}

/// A script step: Linux system call `nr(args...)`.
pub(crate) fn syscall(nr: u64, args: &[u64]) -> impl FnMut(&mut kvm_regs) -> Exit + Send {
    let args = args.to_vec();
    move |r| {
        set_args(r, &args);
        // The kernel ABI's fourth argument is R10.
        r.r10 = args.get(3).copied().unwrap_or(0);
        r.rax = nr;
        r.rcx = 0x40_0000;
        Exit::IoOut {
            port: layout::SYSCALL_PORT,
            value: nr as u32 & 0xFF,
            size: 1,
        }
    }
}

fn set_args(r: &mut kvm_regs, args: &[u64]) {
    let slots = [
        &mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.rcx, &mut r.r8, &mut r.r9,
    ];
    for (slot, v) in slots.into_iter().zip(args) {
        *slot = *v;
    }
}

/// A user address in the test VM's program memory.
pub(crate) const HEAP: u64 = layout::USER_BASE + (2 << 20);
