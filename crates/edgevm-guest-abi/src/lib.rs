//! The edgevm guest ABI, written once: `kvm_api.h` call numbers ([`nr`]), handler indices
//! ([`func`]), the host<->guest I/O-area layout ([`io`]), every `#[repr(C)]` struct host and
//! guest share ([`types`]), the header-table rules both sides apply ([`headers`]) and the
//! decoding of a call into a typed value ([`call`]), and text helpers for programs
//! ([`text`]: query parameters, JSON escaping).
//!
//! `no_std` and dependency-free, so the Rust guest crate (`guest/rust/edgevm-guest`) uses it
//! as is; the host enables the `zerocopy` feature to read and write the structs in guest
//! memory. `guest/kvm_api.h` is checked against it by `tests/header.rs`. See docs/DESIGN.md.

#![no_std]

pub mod call;
pub mod headers;
pub mod io;
pub mod nr;
pub mod text;
pub mod types;

pub use call::{Args, BadCall, Call};
pub use io::Where;
pub use types::*;

/// Handler indices accepted by `register_func()` (`EDGEVM_FUNC_*` in `kvm_api.h`).
pub mod func {
    /// GET/HEAD handler.
    pub const BACKEND_GET: i32 = 1;
    /// POST handler (whole body).
    pub const BACKEND_POST: i32 = 2;
    /// Generic request handler (`struct kvm_request`).
    pub const BACKEND_REQUEST: i32 = 3;
    /// Streaming POST handler.
    pub const BACKEND_STREAM_POST: i32 = 4;
    /// Error handler.
    pub const ON_ERROR: i32 = 5;
    /// Live update: hand over state.
    pub const ON_LIVE_UPDATE: i32 = 6;
    /// Live restore: take over state.
    pub const ON_LIVE_RESTORE: i32 = 7;
    /// Socket prepare-for-pause.
    pub const SOCKET_PREPARE_PAUSE: i32 = 12;

    /// Every index with its `kvm_api.h` name (checked against the header by a test).
    pub const ALL: &[(&str, i32)] = &[
        ("EDGEVM_FUNC_BACKEND_GET", BACKEND_GET),
        ("EDGEVM_FUNC_BACKEND_POST", BACKEND_POST),
        ("EDGEVM_FUNC_BACKEND_REQUEST", BACKEND_REQUEST),
        ("EDGEVM_FUNC_BACKEND_STREAM_POST", BACKEND_STREAM_POST),
        ("EDGEVM_FUNC_ON_ERROR", ON_ERROR),
        ("EDGEVM_FUNC_ON_LIVE_UPDATE", ON_LIVE_UPDATE),
        ("EDGEVM_FUNC_ON_LIVE_RESTORE", ON_LIVE_RESTORE),
        ("EDGEVM_FUNC_SOCKET_PREPARE_PAUSE", SOCKET_PREPARE_PAUSE),
    ];
}
