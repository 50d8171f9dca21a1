//! Guest memory layout. Guest-virtual == guest-physical (identity map), so a guest pointer is
//! an offset into [`edgevm_kvm::GuestMemory`] and the host never walks page tables.
//!
//! ```text
//! 0x0000_0000  not present (NULL dereferences fault)
//! 0x0000_1000  GDT                      (supervisor)
//! 0x0000_2000  TSS + I/O permission map (supervisor)
//! 0x0000_3000  IDT                      (supervisor)
//! 0x0000_4000  exception stubs, CPL0    (supervisor)
//! 0x0000_5000  user stubs: syscall entry, request entry, return trampoline (user, read-only)
//! 0x0000_6000  frozen FXSAVE image      (user, read-only)
//! 0x0000_7000  page-table routine stack, IST1 = 0x8000 (supervisor)
//! 0x0000_8000  exception stack, RSP0 = 0x10000 (supervisor)
//! 0x0001_0000  PML4, PDPT, low PT, guard PT    (supervisor)
//! 0x0001_4000  page-table batch, 2 pages (supervisor)
//! 0x0001_6000  page-table pool for split 2 MiB regions (supervisor)
//! 0x0001_E000  page directory and page table mapping the vDSO (supervisor)
//! 0x0002_0000  host<->guest I/O area    (user)
//! 0x0010_0000  user memory (USER_BASE): ELF, brk heap ->  <- mmap | request body | guard |
//!              stack | page tables | shared
//! ```
//!
//! The page tables at the top of the private memory ([`Layout::tables`], 2 MiB, supervisor):
//! the page directories, one per GiB, then the page-table pool. Everything edgevm keeps for
//! itself is below the I/O area or there, so a program may be linked as low as
//! [`USER_BASE`], as low as the reference's loader accepts.
//!
//! Page-table pages are supervisor-only, so guest code at CPL3 can never change them, and they
//! are written with Accessed/Dirty preset, so the CPU never writes them. Protection changes
//! after boot: [`crate::paging`].

/// GDT.
pub const GDT: u64 = 0x1000;
/// TSS (with the I/O bitmap right after the 0x68-byte TSS).
pub const TSS: u64 = 0x2000;
/// TSS limit: 0x68 bytes of TSS, 32 bytes of I/O bitmap (ports 0-255), one 0xFF terminator.
pub const TSS_LIMIT: u32 = 0x88;
/// IDT.
pub const IDT: u64 = 0x3000;
/// Exception stubs (CPL0), 16 bytes each.
pub const EXC_STUBS: u64 = 0x4000;
/// `iretq` (CPL0), after the 32 exception stubs: a debugger resumes a program stopped in an
/// exception stub here, with RSP at the exception frame.
pub const DEBUG_IRET: u64 = EXC_STUBS + 32 * 16;
/// User-executable stub page.
pub const USER_STUBS: u64 = 0x5000;
/// SYSCALL entry (LSTAR): `out %al,$SYSCALL_PORT; sysretq`.
pub const SYSCALL_ENTRY: u64 = USER_STUBS;
/// Request entry trampoline (restores FPU state, calls the handler).
pub const REQUEST_ENTRY: u64 = USER_STUBS + 0x40;
/// Return trampoline: a handler that returns lands here and reports "returned".
pub const RETURN_TRAMPOLINE: u64 = USER_STUBS + 0x80;
/// Where a streaming callback (`begin_streaming_response`) returns: keeps the callback's RAX
/// (the `data` of its `struct streaming_content`) in RSI and reports the return like
/// [`RETURN_TRAMPOLINE`] (RDX, its `len`, is left as the callback returned it).
pub const STREAM_RETURN: u64 = USER_STUBS + 0xA0;
/// A handler call that keeps the handler's return value: the request entry stub calls this
/// stub, which calls the function in RBX (stack aligned as for any call), moves RAX to RSI,
/// zeroes RBX (the chain stub's "no mailbox") and returns to the entry stub, which reports the
/// return (`set_backend_stream_post` handlers return the bytes they consumed).
pub const CALL_KEEP: u64 = USER_STUBS + 0xA8;
/// Where every program starts: edgevm's start probe (one system call), then a jump to the ELF
/// entry point stored at [`ENTRY_SLOT`].
pub const PROGRAM_START: u64 = USER_STUBS + 0xC0;
/// The program's ELF entry point (8 bytes, written at load).
pub const ENTRY_SLOT: u64 = USER_STUBS + 0xF8;
/// Where a handler that returned goes from the request entry stub: the next storage call
/// chained by the host (RBX points at its mailbox), else [`RETURN_TRAMPOLINE`].
pub const CHAIN_STUB: u64 = USER_STUBS + 0x100;
/// Where an event-loop program (`wait_for_requests_paused`) resumes from the frozen state:
/// the request entry stub calls this trampoline, which loads RSP, R12, R13 and RIP of the
/// paused point from [`edgevm_guest_abi::io::PAUSED_RESUME`] (see `cpu::paused_resume_stub`).
pub const PAUSED_ENTRY: u64 = USER_STUBS + 0x180;
/// Where the host sends the guest when page-table entries changed: a `ud2` whose #UD the
/// CPL0 page-table routine takes (see [`crate::paging`]). A software interrupt would be the
/// usual way in, but kvm_pvm answers `int $n` from CPL3 with #UD.
pub const PT_TRIGGER: u64 = USER_STUBS + 0x1C0;
/// The CPL0 page-table routine (`cpu::pt_apply_handler`), after the exception stubs: the
/// #UD gate (on its own IST stack) leads there.
pub const PT_HANDLER: u64 = EXC_STUBS + 0x240;
/// Top of the page-table routine's stack (TSS.IST1; the page below it).
pub const PT_STACK_TOP: u64 = 0x8000;
/// The page-table batch (2 pages): count, return RIP, then (address, qwords) pairs.
pub const PT_BATCH: u64 = 0x14000;
/// Most pairs a batch holds.
pub const PT_BATCH_MAX: usize = (0x2000 - 16) / 16;
/// First low page of the page-table pool (up to the I/O area; see `paging::pool_page`).
pub const PT_POOL_LOW: u64 = 0x16000;
/// The page directory of the last GiB below 512 GiB, where the vDSO is mapped
/// (`edgevm_kvm::vdso`; the PDPT entry `edgevm_kvm::vdso::PDPT_INDEX` points here). The
/// low page-table pool ends here.
pub const VDSO_PD: u64 = 0x1E000;
/// The page table mapping the vDSO's pages (its code and data page, memory slot 1).
pub const VDSO_PT: u64 = 0x1F000;
/// Frozen FXSAVE area, 512 bytes, 16-byte aligned.
pub const FXSAVE_AREA: u64 = 0x6000;
/// Top of the exception stack (TSS.RSP0).
pub const EXC_STACK_TOP: u64 = 0x10000;
/// PML4.
pub const PML4: u64 = 0x10000;
/// PDPT (covers 512 GiB).
pub const PDPT: u64 = 0x11000;
/// Page table for the first 2 MiB.
pub const PT_LOW: u64 = 0x12000;
/// Page table for the 2 MiB region holding the stack guard page.
pub const PT_GUARD: u64 = 0x13000;
/// Host<->guest I/O area (request data, response headers).
pub const IO_AREA: u64 = 0x20000;
/// Size of the I/O area (it ends where user memory begins).
pub const IO_AREA_SIZE: u64 = USER_BASE - IO_AREA;
/// Lowest user address: the lowest address an ELF segment may start at. The reference's
/// loader refuses segments below 0x100000 too (its own pages are below it); edgevm's I/O
/// area, which is guest ABI (`EDGEVM_IO_BASE`), ends there.
pub const USER_BASE: u64 = 0x100000;
/// Size of the page-table area at the top of the private memory ([`Layout::tables`]): the
/// page directories (one per GiB of address space), then the page-table pool.
pub const TABLES_SIZE: u64 = 2 << 20;
/// Largest supported address space (its page directories take half the page-table area at
/// most, leaving the other half to the pool).
pub const MAX_ADDRESS_SPACE: u64 = 256 << 30;
/// Where a static-pie (ET_DYN) program is loaded.
pub const PIE_BASE: u64 = 0x400000;
/// Size of the main stack.
pub const STACK_SIZE: u64 = 4 << 20;
/// Size of the request-body input area (the largest request body a program can receive).
pub const INPUT_AREA_SIZE: u64 = 16 << 20;

/// Port of the Linux system call exit (from the SYSCALL entry stub).
pub const SYSCALL_PORT: u16 = 0xE0;
/// Port of CPU exception reports (from the CPL0 exception stubs).
pub const EXCEPTION_PORT: u16 = 0xE1;
/// Port of `kvm_api.h` hypercalls: `mov $NUM,%eax; out %eax,$0` (same as the reference).
pub const API_PORT: u16 = 0;

/// Where things are for one program's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Total guest memory (address space), bytes.
    pub mem_size: u64,
    /// Start of the shared-memory area (== mem_size when none).
    pub shared_start: u64,
    /// The page-table area ([`TABLES_SIZE`] bytes, supervisor, ends at `shared_start`): the
    /// page directories from here, one per GiB, then the page-table pool.
    pub tables: u64,
    /// Top of the main stack (== tables).
    pub stack_top: u64,
    /// Lowest stack address.
    pub stack_bottom: u64,
    /// Guard page below the stack.
    pub guard_page: u64,
    /// Start of the request-body input area (ends at the guard page); also the top of the
    /// mmap area.
    pub input_area: u64,
}

impl Layout {
    /// Layout for `mem_size` bytes of address space with `shared` bytes of shared memory at the
    /// top. Both must be multiples of 2 MiB.
    pub fn new(mem_size: u64, shared: u64) -> Result<Layout, String> {
        const MB2: u64 = 2 << 20;
        if !mem_size.is_multiple_of(MB2) || !shared.is_multiple_of(MB2) {
            return Err("address space and shared memory must be multiples of 2 MB".into());
        }
        if mem_size > MAX_ADDRESS_SPACE {
            return Err(format!(
                "address space of {} MB is above the supported maximum of {} MB",
                mem_size >> 20,
                MAX_ADDRESS_SPACE >> 20
            ));
        }
        let min = USER_BASE + STACK_SIZE + INPUT_AREA_SIZE + TABLES_SIZE + 3 * MB2;
        if mem_size < shared + min {
            return Err(format!(
                "address space of {} MB is too small: need at least {} MB besides {} MB of shared memory",
                mem_size >> 20,
                min >> 20,
                shared >> 20
            ));
        }
        let shared_start = mem_size - shared;
        let tables = shared_start - TABLES_SIZE;
        let stack_top = tables;
        let stack_bottom = stack_top - STACK_SIZE;
        Ok(Layout {
            mem_size,
            shared_start,
            tables,
            stack_top,
            stack_bottom,
            guard_page: stack_bottom - 4096,
            input_area: stack_bottom - 4096 - INPUT_AREA_SIZE,
        })
    }

    /// Guest-physical ranges a program may never pass as a pointer: everything below the I/O
    /// area (GDT, TSS, IDT, stubs, exception stack, low page tables) and the page-table area.
    /// The host refuses them with EFAULT / a request error, as Linux refuses kernel addresses.
    pub fn protected(&self) -> [(u64, u64); 2] {
        [(0, IO_AREA), (self.tables, self.tables + TABLES_SIZE)]
    }

    /// Whether `addr` is program memory of the address space (not edgevm's own pages).
    pub fn is_user(&self, addr: u64) -> bool {
        addr >= USER_BASE
            && addr < self.mem_size
            && !(self.tables..self.tables + TABLES_SIZE).contains(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_sit_between_the_stack_and_shared_memory() {
        let l = Layout::new(64 << 20, 4 << 20).unwrap();
        assert_eq!(l.tables + TABLES_SIZE, l.shared_start);
        assert_eq!(l.stack_top, l.tables);
        assert_eq!(l.tables % (2 << 20), 0);
        assert_eq!(l.protected()[1], (l.tables, l.shared_start));
        assert!(l.is_user(USER_BASE) && !l.is_user(USER_BASE - 1));
        assert!(l.is_user(l.tables - 1) && !l.is_user(l.tables));
        assert!(l.is_user(l.shared_start) && !l.is_user(l.mem_size));
        // The I/O area (guest ABI) ends where program memory begins.
        const { assert!(IO_AREA + IO_AREA_SIZE == USER_BASE) };
        // The largest address space leaves half the area to the pool.
        const { assert!(MAX_ADDRESS_SPACE >> 30 <= TABLES_SIZE / 4096 / 2) };
    }
}
