//! Guest-side API for edgevm programs written in Rust.
//!
//! This is the Rust twin of `guest/kvm_api.h`: the same hypercalls (same
//! numbers, same register convention) and the same structure layouts, with
//! safe wrappers on top. Build guests statically:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!     cargo build --release --target x86_64-unknown-linux-gnu
//! ```
//!
//! A minimal program:
//!
//! ```no_run
//! use edgevm_guest as kvm;
//!
//! fn on_get(_url: &str, _arg: &str) {
//!     kvm::backend_response_str(200, "text/plain", "Hello from Rust!\n");
//! }
//!
//! fn main() {
//!     kvm::on_get(on_get);
//!     kvm::wait_for_requests();
//! }
//! ```
//!
//! # ABI
//!
//! A hypercall is `mov $NUM, %eax; out %eax, $0` with arguments in rdi, rsi,
//! rdx, rcx, r8, r9 and the result in rax (rax:rdx for 16-byte results). The
//! host may clobber every caller-saved register, exactly as for a C call.
//! Handlers registered with the host are called as `extern "C"` functions on
//! a fresh stack in a fresh copy of the VM frozen by [`wait_for_requests`].

//!
//! Call numbers, the I/O-area layout and the structs shared with the host come from
//! `edgevm-guest-abi` (crates/edgevm-guest-abi), the one source of the ABI; see
//! docs/DESIGN.md.

#![cfg(target_arch = "x86_64")]
#![deny(unsafe_op_in_unsafe_fn)]

mod fastpath;
mod handlers;
mod http;
mod raw;
mod services;
mod text;
mod types;

pub use edgevm_guest_abi::nr;
pub use handlers::*;
pub use http::*;
pub use raw::{hypercall, hypercall2r};
pub use services::*;
pub use text::{json_escape, query_param};
pub use types::*;

/// Handler indices for [`register_func`] (`EDGEVM_FUNC_*` in `kvm_api.h`).
pub mod func {
    pub use edgevm_guest_abi::func::*;
    /// The old name of [`SOCKET_PREPARE_PAUSE`].
    pub const SOCKET_PREPARE_FOR_PAUSE: i32 = SOCKET_PREPARE_PAUSE;
}
