//! The bodies of edgevm's fuzz targets, as plain functions of `&[u8]`.
//!
//! `fuzz/` (a cargo-fuzz crate, its own workspace) calls each function from a one-line
//! `fuzz_target!`; the tests of this crate replay every file of `fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/` through the same function, so `cargo test --workspace` catches
//! a regression without cargo-fuzz or a nightly compiler. See docs/SECURITY.md.
//!
//! | target | what it drives | invariants checked besides "no panic" |
//! |---|---|---|
//! | [`config`] | `edgevm_config::Config::from_sources`, `render_check` | valid programs are within their documented ranges |
//! | [`elf`] | `edgevm_abi::elf::load` and `setup_stack` into real guest memory | segments and stack stay in user memory; supervisor pages untouched |
//! | [`syscalls`] | `edgevm_abi::linux::LinuxState::handle` with random registers and guest memory before each call | memory accounting within `max_memory`; the return path; mmap/brk results inside the heap/mmap area; supervisor pages untouched |
//! | [`api`] | the host side of the request API on the I/O area (`edgevm_abi::io`: request writing, `http_append/set/unset/find`, response header validation) and crash decoding, with random I/O-area contents | fields handed back are valid; host writes stay inside the I/O area |
//! | [`websocket`] | the WebSocket handshake and frame decoder of the TCP server mode (`edgevm_runtime::websocket`), with the client's bytes cut into reads | the handshake takes only what it got and answers HTTP/1.1; messages within `max_message`, text messages UTF-8; at most one frame held; failures close with 1002/1007/1008/1009 |
//! | [`http`] | raw bytes into the HTTP front (`edgevm_server::http::serve_io`, the same hyper stack and routing as `edgevm serve`) over an in-memory stream | the server answers or closes, never panics or hangs |

#![warn(missing_docs)]

mod api;
mod config;
mod elf;
mod http;
mod input;
mod syscalls;
mod websocket;

/// The host structures below user memory that no guest action may change: GDT, TSS, IDT,
/// stubs, exception stack and top-level page tables (`[0, IO_AREA)`), and the first page
/// directories (fuzzed memories are 32 MiB: one directory; the rest of the page-table area
/// stays zero and unmapped).
pub(crate) fn supervisor_bytes(
    mem: &edgevm_kvm::GuestMemory,
    l: &edgevm_abi::layout::Layout,
) -> Vec<u8> {
    use edgevm_abi::layout::IO_AREA;
    let mut v = vec![0u8; IO_AREA as usize + 2 * 4096];
    let (low, pd) = v.split_at_mut(IO_AREA as usize);
    mem.read_raw(0, low).expect("read");
    mem.read_raw(l.tables, pd).expect("read");
    v
}

/// The supervisor bytes no system call may change even when it changes page protections:
/// GDT, TSS, IDT, stubs, FXSAVE image, exception stacks, PML4, PDPT and the low page table
/// (`[0, PT_GUARD)`). Page directories, the guard page table and the pool change with
/// `mprotect`; [`page_tables_sound`] checks those.
pub(crate) fn fixed_supervisor_bytes(mem: &edgevm_kvm::GuestMemory) -> Vec<u8> {
    let mut v = vec![0u8; edgevm_abi::layout::PT_GUARD as usize];
    mem.read_raw(0, &mut v).expect("read");
    v
}

/// The page tables still identity-map user memory only: every present entry of a user region
/// maps its own address, user-accessible, through a page table that is the guard table or a
/// supervisor pool page; the NULL region's table is the low one; the guard page is absent;
/// the page-table area is one supervisor 2 MiB leaf.
pub(crate) fn page_tables_sound(
    mem: &edgevm_kvm::GuestMemory,
    l: &edgevm_abi::layout::Layout,
) -> bool {
    use edgevm_abi::layout::{PT_GUARD, PT_LOW, TABLES_SIZE};
    use edgevm_abi::paging::{P, PS, US};
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    const MB2: u64 = 2 << 20;
    let mut region = 0;
    while region < l.mem_size {
        let pde = mem.read_raw_u64(l.tables + 8 * (region / MB2));
        let tables = l.tables..l.tables + TABLES_SIZE;
        if region == 0 {
            if pde & ADDR != PT_LOW {
                return false;
            }
        } else if tables.contains(&region) {
            if pde & (P | PS | US) != P | PS || pde & ADDR != region {
                return false;
            }
        } else if pde & P != 0 {
            if pde & PS != 0 {
                if pde & ADDR & !(MB2 - 1) != region || pde & US == 0 {
                    return false;
                }
            } else {
                let pt = pde & ADDR;
                if pt != PT_GUARD && !(tables.contains(&pt) || (0x16000..0x20000).contains(&pt)) {
                    return false;
                }
                for i in 0..512u64 {
                    let e = mem.read_raw_u64(pt + 8 * i);
                    let a = region + i * 4096;
                    if e & P != 0 && (e & ADDR != a || e & US == 0 || a == l.guard_page) {
                        return false;
                    }
                }
            }
        }
        region += MB2;
    }
    true
}

pub use api::api;
pub use config::config;
pub use elf::elf;
pub use http::http;
pub use syscalls::syscalls;
pub use websocket::websocket;

/// A fuzz target: any input must be handled without a panic.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("elf", elf),
    ("syscalls", syscalls),
    ("api", api),
    ("http", http),
    ("websocket", websocket),
];
