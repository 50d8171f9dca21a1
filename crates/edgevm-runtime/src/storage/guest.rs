//! The guest side of storage calls: reading `storage_callv` and `sys_storage_task` arguments
//! from the calling VM and writing the answer back.

use std::time::Duration;

use edgevm_abi::guest_abi::{GuestPtr, VirtBuffer};
use edgevm_abi::io::read_struct;
use edgevm_abi::linux::Output;
use edgevm_kvm::{MemoryView, Vcpu};

use super::{Answer, StorageError, MAX_BUFFERS, MAX_INPUT, MAX_RESULT};
use crate::error::{CallvError, StorageArgsError};
use crate::vm::Vm;

/// hand them to `add`; the return value for RAX (the id, or -1 with a log line).
pub(crate) fn task_hypercall<C: Vcpu, M: MemoryView>(
    vm: &mut Vm<C, M>,
    add: impl FnOnce(u64, Vec<u8>, Duration, Duration) -> Result<u64, StorageError>,
) -> u64 {
    let r = *vm.machine.cpu.regs();
    let (func, data, len, start, period) = (r.rdi, r.rsi, r.rdx, r.rcx, r.r8);
    let result = if len > MAX_INPUT as u64 {
        Err(StorageError::TaskTooLarge(len))
    } else if func == 0 {
        Err(StorageError::NoTaskFunction)
    } else {
        let bytes = if len == 0 {
            Ok(Vec::new())
        } else {
            vm.machine
                .mem
                .read_vec(data, len as usize)
                .map_err(StorageError::TaskData)
        };
        bytes.and_then(|b| {
            add(
                func,
                b,
                Duration::from_millis(start),
                Duration::from_millis(period),
            )
        })
    };
    match result {
        Ok(id) => id,
        Err(e) => {
            vm.printer.log(&format!("storage_task refused: {e}"));
            u64::MAX
        }
    }
}

/// `storage_callv(func, n, bufs, dst, dstlen)`'s arguments (RDI..R8) read from `vm`:
/// Ok(Some((func, inputs, dst, dstlen))), Ok(None) when the call is refused with -1 (as in the
/// reference: more than 64 buffers, or a result buffer that wraps around; logged), Err(what)
/// for bad pointers or too much input.
#[allow(clippy::type_complexity)]
pub(crate) fn read_callv<C: Vcpu, M: MemoryView>(
    vm: &mut Vm<C, M>,
) -> Result<Option<(u64, Vec<Vec<u8>>, u64, u64)>, StorageArgsError> {
    let r = *vm.machine.cpu.regs();
    let (func, n, bufs, dst, dstlen) = (r.rdi, r.rsi, r.rdx, r.rcx, r.r8);
    if n > MAX_BUFFERS || dst.checked_add(dstlen).is_none() {
        vm.printer.log(&format!(
            "storage_callv refused: {n} buffers (at most {MAX_BUFFERS}), result buffer {dst:#x}+{dstlen:#x}"
        ));
        return Ok(None);
    }
    let mut inputs = Vec::with_capacity(n as usize);
    let mut total = 0usize;
    for i in 0..n {
        let d: VirtBuffer =
            read_struct(&vm.machine.mem, GuestPtr::<VirtBuffer>::new(bufs).index(i))?;
        let (p, l) = (d.data.addr(), d.len as usize);
        total = total.saturating_add(l);
        if total > MAX_INPUT {
            return Err(StorageArgsError::TooMuchInput);
        }
        inputs.push(vm.machine.mem.read_vec(p, l)?);
    }
    if dst != 0 && !vm.machine.mem.contains(dst, dstlen as usize) {
        return Err(StorageArgsError::ResultBuffer { dst, len: dstlen });
    }
    Ok(Some((func, inputs, dst, dstlen)))
}

/// Copy a storage call's answer into the caller `vm` and compute storage_callv's return
/// value, as in the reference: with a NULL dst, the length the storage function passed to
/// storage_return(); otherwise that length capped to dstlen, with that many bytes copied
/// (none when it passed NULL data); -1 when it returned without calling storage_return().
/// Err for bad arguments or a refused or failed call (allow-list, crash, max_storage_time),
/// which fails the caller.
pub(crate) fn finish_callv<C: Vcpu, M: MemoryView>(
    vm: &mut Vm<C, M>,
    dst: u64,
    dstlen: u64,
    res: Answer,
) -> Result<u64, CallvError> {
    match res {
        Ok(None) => Ok(u64::MAX),
        Ok(Some(ret)) if dst == 0 => Ok(ret.len),
        Ok(Some(ret)) => {
            let n = ret.data.len().min(dstlen as usize);
            vm.machine
                .mem
                .write(dst, &ret.data[..n])
                .map_err(|e| CallvError::BadArguments(e.into()))?;
            Ok(ret.len.min(dstlen).min(MAX_RESULT))
        }
        Err(e) => Err(CallvError::Failed(e)),
    }
}
