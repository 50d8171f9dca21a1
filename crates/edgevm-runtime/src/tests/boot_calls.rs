//! The boot context's handler set ([`BootCalls`]): what `main()` may call before
//! `wait_for_requests()`, and the shared fallback for what it may not.

use edgevm_abi::api;
use edgevm_kvm::ScriptedVcpu;

use super::{hypercall, options, syscall, vm_with, HEAP};
use crate::boot::BootCalls;
use crate::vm::{BootOutcome, RunError};

fn boot(
    cpu: ScriptedVcpu,
    storage_vm: bool,
    control_ephemeral: bool,
) -> (
    crate::vm::MainVm<ScriptedVcpu>,
    Result<BootOutcome, RunError>,
) {
    let mut o = options();
    o.storage = storage_vm;
    o.control_ephemeral = control_ephemeral;
    let mut vm = vm_with(cpu, o);
    let r = vm.init_loop(&mut BootCalls {
        storage: None,
        own_tasks: None,
    });
    (vm, r)
}

#[test]
fn wait_for_requests_ends_the_boot_and_fixes_the_handler_table() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::REGISTER_FUNC, &[1, HEAP]))
        .then(hypercall(api::WAIT_FOR_REQUESTS, &[]));
    let (vm, r) = boot(cpu, false, false);
    assert_eq!(r.unwrap(), BootOutcome::Ready);
    assert!(vm.initialized);
    assert_eq!(vm.handlers.get, HEAP);
}

#[test]
fn exit_during_boot_is_an_outcome_not_an_error() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(syscall(60, &[3]));
    let (vm, r) = boot(cpu, false, false);
    assert_eq!(r.unwrap(), BootOutcome::Exited(3));
    assert!(!vm.initialized);
}

#[test]
fn storage_allow_is_kept_by_the_storage_vm_and_refused_by_the_main_vm() {
    let script = || {
        let mut cpu = ScriptedVcpu::new();
        cpu.then(hypercall(api::STORAGE_ALLOW, &[HEAP]))
            .then(hypercall(api::WAIT_FOR_REQUESTS, &[]));
        cpu
    };
    let (vm, _) = boot(script(), true, false);
    assert_eq!(vm.storage_allowed, vec![HEAP]);
    assert_eq!(vm.machine.cpu.results, vec![0]);
    let (vm, _) = boot(script(), false, false);
    assert!(vm.storage_allowed.is_empty());
    assert_eq!(vm.machine.cpu.results, vec![u64::MAX]);
}

#[test]
fn make_ephemeral_needs_control_ephemeral() {
    let script = || {
        let mut cpu = ScriptedVcpu::new();
        cpu.then(hypercall(api::MAKE_EPHEMERAL, &[0]))
            .then(hypercall(api::WAIT_FOR_REQUESTS, &[]));
        cpu
    };
    let (vm, _) = boot(script(), false, true);
    assert_eq!(vm.ephemeral_override, Some(false));
    assert_eq!(vm.machine.cpu.results, vec![0]);
    let (mut vm, _) = boot(script(), false, false);
    assert_eq!(vm.ephemeral_override, None);
    assert_eq!(vm.machine.cpu.results, vec![u64::MAX]);
    assert!(vm.printer.captured().contains("control_ephemeral"));
}

#[test]
fn storage_calls_without_a_storage_vm_and_request_calls_fall_back_to_minus_one() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::STORAGE_CALLV, &[HEAP, 0, 0, 0, 0]))
        .then(hypercall(api::STORAGE_TASK, &[HEAP, 0, 0, 0, 0]))
        .then(hypercall(api::BACKEND_RESPONSE, &[200]))
        .then(hypercall(api::WAIT_FOR_REQUESTS, &[]));
    let (mut vm, r) = boot(cpu, false, false);
    assert_eq!(r.unwrap(), BootOutcome::Ready);
    assert_eq!(vm.machine.cpu.results, vec![u64::MAX; 3]);
    let log = vm.printer.captured();
    assert_eq!(
        log.matches("is not supported here; returning -1").count(),
        3,
        "{log}"
    );
}

#[test]
fn returning_through_the_trampoline_or_a_bad_event_loop_pointer_fails_the_boot() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::RETURNED, &[]));
    let (_, r) = boot(cpu, false, false);
    assert!(matches!(r, Err(RunError::ReturnedDuringInit)));
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::WAIT_FOR_REQUESTS_PAUSED, &[]));
    let (_, r) = boot(cpu, false, false);
    let e = r.unwrap_err();
    assert!(matches!(e, RunError::BadPausedRequest(0)), "{e}");
    assert!(e.to_string().contains("wait_for_requests_paused"));
    // A pointer into the supervisor area is refused the same way.
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::WAIT_FOR_REQUESTS_PAUSED, &[0x1000]));
    let (_, r) = boot(cpu, false, false);
    assert!(matches!(r, Err(RunError::BadPausedRequest(0x1000))));
}

#[test]
fn run_init_refuses_a_program_that_outgrew_max_memory() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(api::WAIT_FOR_REQUESTS, &[]));
    let mut o = options();
    o.max_memory = 1 << 20;
    let mut vm = vm_with(cpu, o);
    // The guest wrote 6 MiB it never allocated (above the limit and edgevm's own pages).
    let chunk = vec![1u8; 6 << 20];
    vm.machine.mem.write(HEAP, &chunk).unwrap();
    let e = vm
        .run_init(&mut BootCalls {
            storage: None,
            own_tasks: None,
        })
        .unwrap_err();
    assert!(matches!(e, RunError::MemoryLimit { .. }), "{e}");
}

#[test]
fn unknown_numbers_and_sys_request_return_enosys() {
    let mut cpu = ScriptedVcpu::new();
    cpu.then(hypercall(0x10004, &[]))
        .then(hypercall(api::REQUEST, &[HEAP, 4, 0, 0, 0]))
        .then(hypercall(0x7FFFF, &[]))
        .then(hypercall(api::WAIT_FOR_REQUESTS, &[]));
    let (mut vm, r) = boot(cpu, false, false);
    assert_eq!(r.unwrap(), BootOutcome::Ready);
    let enosys = (-(libc::ENOSYS as i64)) as u64;
    assert_eq!(vm.machine.cpu.results, vec![enosys; 3]);
    assert_eq!(
        vm.printer.captured().matches("returning -ENOSYS").count(),
        3
    );
}
