//! `kvm_api.h` calls: the numbers and the typed decoding live in `edgevm-guest-abi` (shared
//! with the Rust guest crate); this module adds the host's view of the registers.

pub use edgevm_guest_abi::call::{Args, BadCall, Buf, Call, Func};
pub use edgevm_guest_abi::nr::*;

use edgevm_kvm::kvm_regs;

/// The argument registers of a call the guest made (rdi, rsi, rdx, rcx, r8, r9).
pub fn args(r: &kvm_regs) -> Args {
    Args([r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9])
}

/// Decode the call `num` the guest made with registers `r`.
pub fn decode(num: u32, r: &kvm_regs) -> Result<Call, BadCall> {
    Call::decode(num, &args(r))
}
