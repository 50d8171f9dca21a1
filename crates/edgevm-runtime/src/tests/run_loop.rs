//! The run loop shared by every context ([`MainVm::run_until_event`]): system calls, the calls
//! every context serves, exits that end a run, deadlines and time slices.

use std::time::Duration;

use edgevm_abi::api;
use edgevm_kvm::{Exit, ScriptedVcpu, Vcpu};

use super::{hypercall, syscall, vm, HEAP};
use crate::vm::{Event, RunError};

#[test]
fn exit_group_ends_the_run_with_its_status() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(syscall(39, &[])).then(syscall(231, &[7]));
    let mut vm = vm(cpu);
    assert_eq!(vm.run_until_event().unwrap(), Event::Exited(7));
    // getpid answered through RAX before the exit.
    assert_eq!(vm.machine.cpu.results, vec![1]);
    assert_eq!(vm.linux.syscalls, 2);
}

#[test]
fn a_call_no_context_shares_is_handed_to_the_caller() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::BACKEND_RESPONSE, &[200]));
    let mut vm = vm(cpu);
    let ev = vm.run_until_event().unwrap();
    assert!(
        matches!(
            ev,
            Event::Hypercall(api::Call::BackendResponse { status: 200, .. })
        ),
        "{ev:?}"
    );
}

#[test]
fn the_return_trampoline_is_reported() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::RETURNED, &[]));
    let mut vm = vm(cpu);
    assert_eq!(vm.run_until_event().unwrap(), Event::Returned);
}

#[test]
fn a_triple_fault_is_an_error_naming_rip() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(|r| {
        r.rip = 0x1234;
        Exit::Shutdown
    });
    let mut vm = vm(cpu);
    let e = vm.run_until_event().unwrap_err();
    assert!(matches!(e, RunError::TripleFault { rip: 0x1234 }), "{e}");
}

#[test]
fn an_unexpected_exit_is_an_error_not_a_panic() {
    let mut cpu = ScriptedVcpu::new();
    cpu.exit(Exit::MmioWrite { addr: 0xdead_0000 });
    let mut vm = vm(cpu);
    let e = vm.run_until_event().unwrap_err();
    assert!(matches!(e, RunError::UnexpectedExit { .. }), "{e}");
    assert!(e.to_string().contains("MmioWrite"), "{e}");
}

#[test]
fn is_debug_and_is_storage_answer_from_the_options() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::IS_DEBUG, &[]))
        .then(hypercall(api::IS_STORAGE, &[]))
        .then(hypercall(api::RETURNED, &[]));
    let mut o = super::options();
    o.debug = true;
    let mut vm = super::vm_with(cpu, o);
    assert_eq!(vm.run_until_event().unwrap(), Event::Returned);
    assert_eq!(vm.machine.cpu.results, vec![1, 0]);
}

#[test]
fn register_func_fills_the_handler_table_until_initialization_ends() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::REGISTER_FUNC, &[1, HEAP]))
        .then(hypercall(api::REGISTER_FUNC, &[3, HEAP + 16]))
        .then(hypercall(api::REGISTER_FUNC, &[9, HEAP]))
        // Outside program memory: refused.
        .then(hypercall(api::REGISTER_FUNC, &[2, 0x1000]))
        .then(hypercall(api::RETURNED, &[]));
    let mut vm = vm(cpu);
    vm.run_until_event().unwrap();
    assert_eq!(vm.machine.cpu.results, vec![0, 0, u64::MAX, u64::MAX]);
    assert_eq!((vm.handlers.get, vm.handlers.request), (HEAP, HEAP + 16));
    assert_eq!(vm.handlers.post, 0);

    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::REGISTER_FUNC, &[1, HEAP]))
        .then(hypercall(api::RETURNED, &[]));
    let mut vm = super::vm(cpu);
    vm.initialized = true;
    vm.run_until_event().unwrap();
    assert_eq!(vm.machine.cpu.results, vec![u64::MAX]);
    assert_eq!(vm.handlers.get, 0);
    assert!(vm.printer.captured().contains("only allowed before"));
}

#[test]
fn sys_log_prints_with_a_newline_and_a_bad_pointer_is_refused() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::LOG, &[HEAP, 5]))
        .then(hypercall(api::LOG, &[0x10, 5]))
        .then(hypercall(api::RETURNED, &[]));
    let mut vm = vm(cpu);
    vm.machine.mem.write(HEAP, b"hello").unwrap();
    vm.run_until_event().unwrap();
    assert_eq!(vm.machine.cpu.results, vec![0, u64::MAX]);
    assert!(vm.printer.captured().contains("hello\n"));
}

#[test]
fn get_meminfo_writes_the_limits_and_shared_memory_area_its_bounds() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::GET_MEMINFO, &[HEAP]))
        .then(hypercall(api::SHARED_MEMORY_AREA, &[]))
        .then(hypercall(api::RETURNED, &[]));
    let mut vm = vm(cpu);
    vm.run_until_event().unwrap();
    assert_eq!(vm.machine.mem.read_u64(HEAP).unwrap(), 16 << 20);
    assert_eq!(vm.machine.cpu.results[0], 0);
    assert_eq!(vm.machine.cpu.results[1], vm.layout.shared_start);
    assert_eq!(vm.machine.cpu.regs().rdx, vm.layout.mem_size);
}

#[test]
fn a_passed_deadline_ends_the_run_with_a_timeout() {
    let mut cpu = ScriptedVcpu::new();
    cpu.exit(Exit::Interrupted);
    let mut vm = vm(cpu);
    vm.start_deadline(Duration::ZERO, "request (max_request_time)")
        .unwrap();
    std::thread::sleep(Duration::from_millis(2));
    let e = vm.run_until_event().unwrap_err();
    vm.stop_deadline();
    assert!(
        matches!(e, RunError::Timeout { what, .. } if what == "request (max_request_time)"),
        "{e}"
    );
}

#[test]
fn the_end_of_a_slice_preempts_and_the_run_goes_on_afterwards() {
    let mut cpu = ScriptedVcpu::new();
    cpu.exit(Exit::Interrupted)
        .then(hypercall(api::RETURNED, &[]));
    let mut vm = vm(cpu);
    vm.set_slice(Some(Duration::ZERO));
    vm.start_deadline(Duration::from_secs(60), "run").unwrap();
    std::thread::sleep(Duration::from_millis(1));
    assert_eq!(vm.run_until_event().unwrap(), Event::Preempted);
    // The runtime's own exit, not the program's.
    assert_eq!(vm.timer_exits, 1);
    vm.pause_deadline();
    vm.resume_deadline().unwrap();
    assert_eq!(vm.run_until_event().unwrap(), Event::Returned);
    vm.stop_deadline();
}

#[test]
fn a_sleeping_system_call_in_a_slice_preempts_before_it_runs() {
    let mut cpu = ScriptedVcpu::new();
    // nanosleep(&ts, NULL) with a zero timeout.
    cpu.then(syscall(35, &[HEAP, 0]))
        .then(hypercall(api::RETURNED, &[]));
    let mut vm = vm(cpu);
    vm.set_slice(Some(Duration::from_secs(60)));
    vm.start_deadline(Duration::from_secs(60), "run").unwrap();
    assert_eq!(vm.run_until_event().unwrap(), Event::Preempted);
    assert_eq!(vm.linux.syscalls, 0);
    // Resumed (on any thread): the system call is made first.
    vm.pause_deadline();
    vm.resume_deadline().unwrap();
    assert_eq!(vm.run_until_event().unwrap(), Event::Returned);
    vm.stop_deadline();
    assert_eq!(vm.linux.syscalls, 1);
}

#[test]
fn enter_handler_sets_the_entry_registers_and_puts_moved_bases_back() {
    let mut vm = vm(ScriptedVcpu::new());
    vm.machine.cpu.cpu.fs = 0x7000;
    vm.machine.cpu.cpu.gs = 0x8000;
    let entry = vm.entry_state(false);
    vm.machine.cpu.cpu.fs = 0x1;
    vm.machine.cpu.cpu.gs = 0x2;
    vm.enter_handler(&entry, HEAP, 0x1237, &[1, 2, 3]).unwrap();
    let r = *vm.machine.cpu.regs();
    assert_eq!(r.rip, edgevm_abi::layout::REQUEST_ENTRY);
    assert_eq!((r.r11, r.rsp, r.rdi, r.rsi, r.rdx), (HEAP, 0x1230, 1, 2, 3));
    assert_eq!(
        (vm.machine.cpu.fs_base(), vm.machine.cpu.gs_base()),
        (0x7000, 0x8000)
    );
}
