//! Raw hypercalls: `mov $NUM, %eax; out %eax, $0` with SysV argument registers.

use core::arch::asm;

/// Raw hypercall with up to six arguments; returns (rax, rdx).
///
/// # Safety
/// The arguments are passed to the host unchecked: pointers must be valid for
/// what the specific hypercall does with them.
#[inline(always)]
pub unsafe fn hypercall2r(
    num: u32,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
) -> (usize, usize) {
    let rax: usize;
    let rdx: usize;
    // SAFETY: the caller guarantees the arguments are valid for this call.
    // The host follows the SysV call convention: it may clobber every
    // caller-saved register and read/write guest memory (no `nomem`). The
    // stack is left alone, but we do not claim `nostack` so the compiler
    // keeps no live data in the red zone across the exit.
    unsafe {
        asm!(
            "out 0, eax",
            inlateout("rax") num as usize => rax,
            inlateout("rdi") a0 => _,
            inlateout("rsi") a1 => _,
            inlateout("rdx") a2 => rdx,
            inlateout("rcx") a3 => _,
            inlateout("r8") a4 => _,
            inlateout("r9") a5 => _,
            lateout("r10") _,
            lateout("r11") _,
        );
    }
    (rax, rdx)
}

/// Raw hypercall with up to six arguments; returns rax.
///
/// # Safety
/// See [`hypercall2r`].
#[inline(always)]
pub unsafe fn hypercall(
    num: u32,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall2r(num, a0, a1, a2, a3, a4, a5).0 }
}

#[inline(always)]
pub(crate) unsafe fn hc0(num: u32) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall(num, 0, 0, 0, 0, 0, 0) }
}
#[inline(always)]
pub(crate) unsafe fn hc1(num: u32, a0: usize) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall(num, a0, 0, 0, 0, 0, 0) }
}
#[inline(always)]
pub(crate) unsafe fn hc2(num: u32, a0: usize, a1: usize) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall(num, a0, a1, 0, 0, 0, 0) }
}
#[inline(always)]
pub(crate) unsafe fn hc3(num: u32, a0: usize, a1: usize, a2: usize) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall(num, a0, a1, a2, 0, 0, 0) }
}

