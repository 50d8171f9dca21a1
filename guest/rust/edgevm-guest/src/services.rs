//! Host services: regex, storage, shared memory, memory info, fetch, multiprocessing, logging.

use core::arch::asm;
use core::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::raw::{hc0, hc1, hc2, hc3, hypercall, hypercall2r};
use crate::{nr, CurlFields, CurlOp, CurlOptions, MemInfo, StorageFunc, StorageTaskFunc, VirtBuffer};

// ---------------------------------------------------------------------------
// Regex
// ---------------------------------------------------------------------------

/// [0x10030] Compile a regex; returns a handle (>= 0) or negative.
pub fn regex_compile(pattern: &str) -> i32 {
    // SAFETY: the slice is valid for its length.
    unsafe { hc2(nr::REGEX_COMPILE, pattern.as_ptr() as usize, pattern.len()) as i32 }
}
/// [0x10031] Free a compiled regex.
pub fn regex_free(rgx: i32) {
    // SAFETY: plain integer.
    unsafe { hc1(nr::REGEX_FREE, rgx as usize) };
}
/// [0x10032] Returns > 0 when `text` matches.
pub fn regex_match(rgx: i32, text: &str) -> i32 {
    // SAFETY: the slice is valid for its length.
    unsafe { hc3(nr::REGEX_MATCH, rgx as usize, text.as_ptr() as usize, text.len()) as i32 }
}

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

/// [0x10706] True when called in the storage VM (asks the host).
pub fn sys_is_storage() -> bool {
    // SAFETY: no arguments.
    unsafe { hc0(nr::IS_STORAGE) != 0 }
}

/// [0x10707] Allow `f` to be called in storage (storage VM, during init).
pub fn storage_allow(f: StorageFunc) -> i64 {
    // SAFETY: passes a code address.
    unsafe { hc1(nr::STORAGE_ALLOW, f as usize) as i64 }
}

/// [0x10708] Call `f` in storage with several input buffers. Returns the
/// result length copied into `out`, or None on error.
pub fn storage_callv(f: StorageFunc, inputs: &[&[u8]], out: &mut [u8]) -> Option<usize> {
    let bufs: Vec<VirtBuffer> = inputs.iter().map(|b| VirtBuffer::new(b)).collect();
    // SAFETY: all buffers are valid for the duration of the call.
    let r = unsafe {
        hypercall(
            nr::STORAGE_CALLV,
            f as usize,
            bufs.len(),
            bufs.as_ptr() as usize,
            out.as_mut_ptr() as usize,
            out.len(),
            0,
        )
    } as i64;
    (r >= 0).then_some(r as usize)
}

/// Call `f` in storage with one input buffer.
pub fn storage_call(f: StorageFunc, input: &[u8], out: &mut [u8]) -> Option<usize> {
    storage_callv(f, &[input], out)
}

/// The input buffers of a storage function.
///
/// # Safety
/// `bufs`/`n` must be the arguments the host passed to the storage function.
pub unsafe fn storage_inputs<'a>(n: usize, bufs: *mut VirtBuffer) -> &'a [VirtBuffer] {
    if bufs.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: forwarded to the caller.
        unsafe { core::slice::from_raw_parts(bufs, n) }
    }
}

/// [0x10011] Return `data` from a storage function to the caller.
pub fn storage_return(data: &[u8]) {
    // SAFETY: the slice is valid for its length.
    unsafe { hc2(nr::STORAGE_RETURN, data.as_ptr() as usize, data.len()) };
}
/// Return nothing from a storage function.
pub fn storage_return_nothing() {
    // SAFETY: null/0 means "no data".
    unsafe { hc2(nr::STORAGE_RETURN, 0, 0) };
}
/// [0x10013] Return `data` and never resume the storage function.
pub fn storage_noreturn(data: &[u8]) -> ! {
    // SAFETY: the slice is valid for its length.
    unsafe { hc2(nr::STORAGE_NORETURN, data.as_ptr() as usize, data.len()) };
    std::process::abort()
}

/// [0x10709] Run `task` in storage after `start_ms`, then every `period_ms`.
pub fn storage_task(task: StorageTaskFunc, data: &[u8], start_ms: u64, period_ms: u64) -> i64 {
    // SAFETY: the slice is valid for its length (it is copied).
    unsafe {
        hypercall(
            nr::STORAGE_TASK,
            task as usize,
            data.as_ptr() as usize,
            data.len(),
            start_ms as usize,
            period_ms as usize,
            0,
        ) as i64
    }
}
/// [0x1070A] Stop a scheduled storage task.
pub fn stop_storage_task(id: i64) -> i64 {
    // SAFETY: plain integer.
    unsafe { hc1(nr::STOP_STORAGE_TASK, id as usize) as i64 }
}

// ---------------------------------------------------------------------------
// Shared memory, memory, ephemeral
// ---------------------------------------------------------------------------

/// [0x10700] The shared memory area as (start, end) guest addresses.
pub fn shared_memory_area() -> (u64, u64) {
    // SAFETY: no arguments; the 16-byte result comes back in rax:rdx.
    let (a, b) = unsafe { hypercall2r(nr::SHARED_MEMORY_AREA, 0, 0, 0, 0, 0, 0) };
    (a as u64, b as u64)
}

static SHM_NEXT: AtomicU64 = AtomicU64::new(0);
static SHM_END: AtomicU64 = AtomicU64::new(0);

/// Bump-allocate `size` bytes from shared memory; None when full/absent.
pub fn shm_alloc_bytes(size: usize, align: usize) -> Option<*mut u8> {
    if SHM_NEXT.load(Ordering::Relaxed) == 0 {
        let (start, end) = shared_memory_area();
        SHM_NEXT.store(start, Ordering::Relaxed);
        SHM_END.store(end, Ordering::Relaxed);
    }
    let align = align.max(1) as u64;
    let cur = SHM_NEXT.load(Ordering::Relaxed);
    let p = cur.checked_add(align - 1)? & !(align - 1);
    let next = p.checked_add(size as u64)?;
    if p == 0 || next > SHM_END.load(Ordering::Relaxed) {
        return None;
    }
    SHM_NEXT.store(next, Ordering::Relaxed);
    Some(p as usize as *mut u8)
}

/// Allocate a `T` in shared memory (zero-initialized by the host).
///
/// # Safety
/// An all-zero bit pattern must be a valid `T`; the memory is shared with
/// other VMs, so use atomics for anything written after initialization.
pub unsafe fn shm_alloc<T>() -> Option<&'static mut T> {
    let p = shm_alloc_bytes(core::mem::size_of::<T>(), core::mem::align_of::<T>())?;
    // SAFETY: freshly allocated, aligned, zeroed shared memory.
    Some(unsafe { &mut *(p as *mut T) })
}

/// [0x10703] Choose ephemeral request VMs (init only, needs permission).
pub fn make_ephemeral(ephemeral: bool) -> i32 {
    // SAFETY: plain integer.
    unsafe { hc1(nr::MAKE_EPHEMERAL, ephemeral as usize) as i32 }
}

/// [0x10A00] Memory limits and usage.
pub fn meminfo() -> MemInfo {
    let mut mi = MemInfo { max_memory: 0, max_reqmem: 0, reqmem_upper: 0, reqmem_current: 0 };
    // SAFETY: the host writes one MemInfo.
    unsafe { hc1(nr::GET_MEMINFO, &mut mi as *mut MemInfo as usize) };
    mi
}

// ---------------------------------------------------------------------------
// Fetch, multiprocessing
// ---------------------------------------------------------------------------

/// [0x20000] Raw HTTP fetch.
///
/// # Safety
/// `op` must be valid; `fields` and `opts` may be null.
pub unsafe fn sys_fetch(
    url: &str,
    op: *mut CurlOp,
    fields: *mut CurlFields,
    opts: *mut CurlOptions,
) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe {
        hypercall(
            nr::FETCH,
            url.as_ptr() as usize,
            url.len(),
            op as usize,
            fields as usize,
            opts as usize,
            0,
        ) as i64
    }
}

/// [0x10710] Run `f(arg)` on `n - 1` extra vCPUs (the program's `smp` configuration allows
/// up to 16), each on its own stack, in parallel with the caller; 0, or -1 when refused.
/// The caller (vCPU 0) does its share, then [`multiprocess_wait`]. A worker may only compute
/// over memory (atomics work across vCPUs), call `std::thread::yield_now()` and return: any
/// other system call (allocation, printing, locks that sleep) or host call fails the request
/// (guest/README.md, "Multiprocessing"). `multiprocess_clone` is not offered here: a Rust
/// function cannot go on soundly on another stack.
///
/// # Safety
/// `f` runs concurrently with the caller; `arg` must be safe to share.
pub unsafe fn multiprocess(n: usize, f: extern "C" fn(*mut c_void), arg: *mut c_void) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { hc3(nr::MULTIPROCESS, n, f as usize, arg as usize) as i64 }
}
/// [0x10711] Like [`multiprocess`]: worker k (1..n) is called as
/// `f(array + k * element_size, element_size)` (as the reference); the caller handles
/// element 0.
///
/// # Safety
/// As [`multiprocess`]; `array` must hold `n` elements of `element_size` bytes.
pub unsafe fn multiprocess_array(
    n: usize,
    f: extern "C" fn(*mut c_void, usize),
    array: *mut c_void,
    element_size: usize,
) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe {
        hypercall(
            nr::MULTIPROCESS_ARRAY,
            n,
            f as usize,
            array as usize,
            element_size,
            0,
            0,
        ) as i64
    }
}
/// [0x10713] Wait for all extra vCPUs (0; a failed worker fails the request).
pub fn multiprocess_wait() -> i64 {
    // SAFETY: no arguments.
    unsafe { hc0(nr::MULTIPROCESS_WAIT) as i64 }
}
/// The current vCPU id (%gs:0): 0 on the main vCPU, 1..n-1 on `multiprocess` workers.
pub fn vcpuid() -> i32 {
    let v: i32;
    // SAFETY: the host maps per-vCPU data at %gs.
    unsafe { asm!("mov {0:e}, dword ptr gs:[0]", out(reg) v, options(nostack, readonly)) };
    v
}

// ---------------------------------------------------------------------------
// Logging and debugging
// ---------------------------------------------------------------------------

/// [0x7F000] Log a message.
pub fn sys_log(msg: &str) {
    // SAFETY: the slice is valid for its length.
    unsafe { hc2(nr::LOG, msg.as_ptr() as usize, msg.len()) };
}

/// [0x7FDEB] True for debug programs (asks the host).
pub fn is_debug() -> bool {
    // SAFETY: no arguments.
    unsafe { hc0(nr::IS_DEBUG) != 0 }
}

/// [0x7F7F7] Remote-debugging breakpoint (debug programs only).
pub fn breakpoint() {
    // SAFETY: no arguments.
    unsafe { hc0(nr::BREAKPOINT) };
}

/// `vlogf`-style logging: `edgevm_guest::vlog!("x = {}", x)`.
#[macro_export]
macro_rules! vlog {
    ($($arg:tt)*) => { $crate::sys_log(&::std::format!($($arg)*)) };
}
