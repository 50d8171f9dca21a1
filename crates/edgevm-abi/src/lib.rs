//! edgevm-abi: owns the boundary between a guest program and the host.
//!
//! * [`layout`] — the fixed guest-physical layout (identity-mapped), and why it is so.
//! * [`cpu`] — long-mode CPU state, page tables, GDT/TSS/IDT and the user-mode stubs, built
//!   once per program and never rewritten between runs.
//! * [`elf`] — loading a static x86_64 ELF (ET_EXEC or static-pie), its stack (argv, envp,
//!   auxv) and symbols for crash reports.
//! * [`linux`] — emulation of the Linux system calls static glibc, musl, libstdc++ and Rust
//!   programs need; one VM exit per call.
//! * [`sandbox`] — `allowed_paths`: which host files a guest may reach, under which names,
//!   confined by the kernel (openat2 RESOLVE_BENEATH).
//! * [`files`] — open host files and directories behind guest descriptors (the `state` file,
//!   `<filename>.state` on the host, is one of them).
//! * [`api`] — `kvm_api.h` calls decoded into a typed [`api::Call`] (numbers and decoding live
//!   in [`guest_abi`], the `no_std` crate shared with the Rust guest crate).
//! * [`io`] — the I/O area: writing requests, the header calls on guest memory.
//! * [`regex`] — the regex calls' compiled patterns (PCRE2) and Varnish-style substitution.
//! * [`crash`] — turning a CPU exception into a readable report.

pub mod api;
pub mod cpu;
pub mod crash;
pub mod elf;
pub mod errno;
pub mod files;
mod hostnet;
pub mod io;
pub mod layout;
pub mod linux;
mod linux_abi;
mod names;
pub mod paging;
pub mod regex;
pub mod sandbox;
pub mod snapcodec;

pub use edgevm_guest_abi as guest_abi;
pub use names::syscall_name;
