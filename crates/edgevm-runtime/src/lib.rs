//! edgevm-runtime: owns the life of a program's VMs — the main VM that boots a program and
//! runs it to `wait_for_requests()`, the pools of request VMs forked from it, the storage VM,
//! shared memory and timeouts. It knows nothing of HTTP: requests arrive as [`GuestRequest`]
//! and leave as [`GuestResponse`].

mod boot;
mod calls;
pub mod debug;
pub mod env;
mod error;
mod fetch_calls;
pub mod histogram;
mod idle;
mod invoker;
pub mod net;
mod options;
pub mod output;
pub mod pool;
mod program_boot;
mod regex_calls;
pub mod remote;
pub mod request;
mod request_calls;
pub mod request_vm;
mod reset;
pub mod retry;
mod runtime;
mod settings;
pub mod smp;
mod smp_calls;
pub mod snapshot;
pub mod spare;
pub mod storage;
pub mod stream;
mod stream_post;
pub mod tcp_server;
pub mod timer;
pub mod vm;
mod watcher;
pub mod websocket;

pub use edgevm_abi::sandbox::PathRule;
pub use request::{GuestRequest, GuestResponse, ProgramHost, ServeError, ServeFuture};
pub use stream::BodyStream;

/// One line for the server's log: whether guests get the vDSO (time without VM exits) and,
/// when not, why (docs/DESIGN.md, "vDSO").
pub fn vdso_status() -> String {
    if edgevm_kvm::vdso::offered() {
        "guest vDSO on: clock_gettime, gettimeofday and time answered without VM exits".into()
    } else {
        match edgevm_kvm::vdso::why_not() {
            Some(why) => format!("guest vDSO off ({why}): every clock read is a system call"),
            None => "guest vDSO off (no KVM): every clock read is a system call".into(),
        }
    }
}

#[cfg(test)]
mod tests;
