//! The guest side of storage calls: `storage_callv` and `sys_storage_task` arguments read
//! from the calling VM, and the answer written back.

use std::time::Duration;

use edgevm_kvm::{ScriptedVcpu, Vcpu};

use super::{vm, HEAP};
use crate::error::{CallvError, StorageArgsError, StorageError};
use crate::storage::{finish_callv, read_callv, task_hypercall, Returned, MAX_INPUT};

fn set(vm: &mut crate::vm::MainVm<ScriptedVcpu>, args: [u64; 5]) {
    let r = vm.machine.cpu.regs_mut();
    (r.rdi, r.rsi, r.rdx, r.rcx, r.r8) = (args[0], args[1], args[2], args[3], args[4]);
}

/// Two input buffers ("ab", "cde") described by a virtbuffer array at HEAP.
fn two_buffers(vm: &mut crate::vm::MainVm<ScriptedVcpu>) {
    let mem = &mut vm.machine.mem;
    mem.write(HEAP + 0x100, b"ab").unwrap();
    mem.write(HEAP + 0x200, b"cde").unwrap();
    for (i, (p, l)) in [(HEAP + 0x100, 2u64), (HEAP + 0x200, 3)]
        .into_iter()
        .enumerate()
    {
        mem.write(HEAP + 16 * i as u64, &p.to_le_bytes()).unwrap();
        mem.write(HEAP + 16 * i as u64 + 8, &l.to_le_bytes())
            .unwrap();
    }
}

#[test]
fn storage_callv_arguments_are_read_buffer_by_buffer() {
    let mut vm = vm(ScriptedVcpu::new());
    two_buffers(&mut vm);
    set(&mut vm, [0x55, 2, HEAP, HEAP + 0x1000, 64]);
    let (func, inputs, dst, dstlen) = read_callv(&mut vm).unwrap().unwrap();
    assert_eq!((func, dst, dstlen), (0x55, HEAP + 0x1000, 64));
    assert_eq!(inputs, vec![b"ab".to_vec(), b"cde".to_vec()]);
}

#[test]
fn storage_callv_with_too_many_buffers_or_a_wrapping_result_is_refused_with_minus_one() {
    let mut vm = vm(ScriptedVcpu::new());
    set(&mut vm, [0x55, 65, HEAP, 0, 0]);
    assert!(read_callv(&mut vm).unwrap().is_none());
    set(&mut vm, [0x55, 0, HEAP, u64::MAX - 4, 16]);
    assert!(read_callv(&mut vm).unwrap().is_none());
    assert_eq!(
        vm.printer
            .captured()
            .matches("storage_callv refused")
            .count(),
        2
    );
}

#[test]
fn storage_callv_with_bad_pointers_or_too_much_input_fails_the_caller() {
    let mut vm = vm(ScriptedVcpu::new());
    set(&mut vm, [0x55, 1, 0x10, 0, 0]);
    assert!(matches!(
        read_callv(&mut vm),
        Err(StorageArgsError::Memory(_))
    ));
    let mem = &mut vm.machine.mem;
    mem.write(HEAP, &HEAP.to_le_bytes()).unwrap();
    mem.write(HEAP + 8, &(MAX_INPUT as u64 + 1).to_le_bytes())
        .unwrap();
    set(&mut vm, [0x55, 1, HEAP, 0, 0]);
    assert!(matches!(
        read_callv(&mut vm),
        Err(StorageArgsError::TooMuchInput)
    ));
    set(&mut vm, [0x55, 0, HEAP, 1 << 40, 16]);
    let e = read_callv(&mut vm).unwrap_err();
    assert!(matches!(e, StorageArgsError::ResultBuffer { .. }));
    assert!(CallvError::BadArguments(e)
        .to_string()
        .starts_with("bad arguments passed to storage_callv: result buffer"));
}

#[test]
fn the_answer_is_copied_up_to_dstlen_and_its_length_returned() {
    let mut vm = vm(ScriptedVcpu::new());
    let ret = |len| {
        Ok(Some(Returned {
            data: b"hello world".to_vec(),
            len,
        }))
    };
    assert_eq!(finish_callv(&mut vm, HEAP, 5, ret(11)).unwrap(), 5);
    assert_eq!(vm.machine.mem.read_vec(HEAP, 6).unwrap(), b"hello\0");
    // A NULL destination asks for the length only.
    assert_eq!(finish_callv(&mut vm, 0, 0, ret(11)).unwrap(), 11);
    // Returned without storage_return: -1.
    assert_eq!(finish_callv(&mut vm, HEAP, 5, Ok(None)).unwrap(), u64::MAX);
    let e = finish_callv(&mut vm, HEAP, 5, Err(StorageError::Gone)).unwrap_err();
    assert_eq!(e.to_string(), "storage call failed: the storage VM is gone");
    let e = finish_callv(&mut vm, 0x10, 5, ret(11)).unwrap_err();
    assert!(matches!(e, CallvError::BadArguments(_)));
}

#[test]
fn storage_task_arguments_are_read_and_refusals_logged() {
    let mut vm = vm(ScriptedVcpu::new());
    vm.machine.mem.write(HEAP, b"data").unwrap();
    set(&mut vm, [0x77, HEAP, 4, 1500, 250]);
    let mut seen = None;
    let id = task_hypercall(&mut vm, |f, d, start, period| {
        seen = Some((f, d, start, period));
        Ok(3)
    });
    assert_eq!(id, 3);
    assert_eq!(
        seen,
        Some((
            0x77,
            b"data".to_vec(),
            Duration::from_millis(1500),
            Duration::from_millis(250)
        ))
    );
    for args in [
        [0, HEAP, 4, 0, 0],
        [0x77, HEAP, MAX_INPUT as u64 + 1, 0, 0],
        [0x77, 0x10, 4, 0, 0],
    ] {
        set(&mut vm, args);
        assert_eq!(task_hypercall(&mut vm, |_, _, _, _| Ok(0)), u64::MAX);
    }
    set(&mut vm, [0x77, HEAP, 0, 0, 0]);
    let r = task_hypercall(&mut vm, |_, _, _, _| Err(StorageError::TooManyTimers));
    assert_eq!(r, u64::MAX);
    let log = vm.printer.captured();
    assert_eq!(log.matches("storage_task refused").count(), 4, "{log}");
    assert!(log.contains("no task function"));
    assert!(log.contains("scheduled tasks already"));
}
