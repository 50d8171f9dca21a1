//! CPU state and the supervisor structures of a guest.
//!
//! The same guest image must run correctly on hardware KVM (VT-x/AMD-V) and on this machine's
//! kvm_pvm, which differ (docs/DESIGN.md, "Guest CPU state"):
//!
//! * Program code runs at CPL3 in 64-bit long mode. No guest kernel runs on any normal path:
//!   under kvm_pvm CPL0 code is emulated (~1 µs per instruction), and on hardware a ring switch
//!   is pure overhead for us.
//! * `SYSCALL` jumps to [`layout::SYSCALL_ENTRY`], a user-accessible page (SMEP off) holding
//!   `out %al,$0xE0; sysretq`. On hardware KVM SYSCALL enters CPL0 there; the `out` exits to the
//!   host, which writes only RAX, and the stub's `sysretq` returns to the program natively. On
//!   kvm_pvm SYSCALL stays at CPL3 (IOPL forced to 0), so the TSS I/O bitmap grants ports 0 and
//!   0xE0 to CPL3; the host writes RAX, RIP=RCX and RFLAGS=R11 itself and `sysretq` never runs.
//!   Either way: exactly one VM exit per emulated system call, registers via sync_regs.
//! * `kvm_api.h` hypercalls are `out %eax,$0` at CPL3 (allowed by the same bitmap); identical to
//!   the reference system, so binaries built against its header run unchanged.
//! * CPU exceptions go through 32 IDT gates to tiny CPL0 stubs that push the vector and
//!   `out $0xE1`: a few emulated instructions, on error paths only.
//! * SMAP stays off (STAC/CLAC fail under kvm_pvm); VMCALL is never used (it hangs there).
//! * Page tables identity-map the address space and are built once per program; copy-on-write
//!   and reset happen on the host side (rewriting guest page tables made the next entry cost
//!   ~1.1 ms under kvm_pvm in the reference engine). Only protection changes (`mprotect`,
//!   `mmap` with other protections) rewrite entries, through [`crate::paging`].

use edgevm_kvm::{kvm_regs, kvm_segment, kvm_sregs, GuestMemory, MemError};

use crate::layout::{self, Layout};

use crate::paging::{A, D, NX, P, PS, RW, US};

/// MSR numbers written at setup.
pub const MSR_STAR: u32 = 0xC000_0081;
/// SYSCALL target.
pub const MSR_LSTAR: u32 = 0xC000_0082;
/// RFLAGS bits cleared by SYSCALL.
pub const MSR_SFMASK: u32 = 0xC000_0084;

/// MSR values: (index, value). STAR: SYSCALL CS=0x08/SS=0x10, SYSRET CS=0x23/SS=0x1b.
pub const SETUP_MSRS: [(u32, u64); 3] = [
    (MSR_STAR, 0x0010_0008_0000_0000),
    (MSR_LSTAR, layout::SYSCALL_ENTRY),
    (MSR_SFMASK, 0x47700),
];

/// Vectors for which the CPU pushes an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

fn gdt_entries() -> [u64; 7] {
    let tss = layout::TSS;
    let limit = layout::TSS_LIMIT as u64;
    let tss_lo = (limit & 0xFFFF)
        | ((tss & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((tss >> 24) & 0xFF) << 56);
    [
        0,
        0x00af_9b00_0000_ffff, // 0x08 kernel code
        0x00cf_9300_0000_ffff, // 0x10 kernel data
        0x00cf_f300_0000_ffff, // 0x18 user data (0x1b)
        0x00af_fb00_0000_ffff, // 0x20 user code (0x23)
        tss_lo,                // 0x28 TSS (16 bytes)
        tss >> 32,
    ]
}

/// SYSCALL entry: `out %al,$0xE0; sysretq` (see module docs).
pub const SYSCALL_STUB: [u8; 5] = [0xE6, layout::SYSCALL_PORT as u8, 0x48, 0x0F, 0x07];

/// Request entry: restore the frozen FS/GS bases (when the guest can change them itself) and
/// FPU/SSE/AVX state, call the handler in R11, and land in the return trampoline if it
/// returns.
///
/// ```text
///     test $2,%r10b             ; R10 bit 1: FS/GS bases are in R12/R13 (kvm_pvm, where a
///     jz   3f                   ;   program can move them with wrfsbase/wrgsbase unseen)
///     wrfsbase %r12
///     wrgsbase %r13
/// 3:  test $1,%r10b             ; R10 bit 0: an XSAVE image is there (all enabled components)
///     jz   1f
///     push %rdx; push %rcx      ; xgetbv/xrstor need EDX:EAX, ECX: keep the handler's args
///     xor  %ecx,%ecx; xgetbv    ; EDX:EAX = XCR0: restore every enabled component
///     xrstor64 [FXSAVE_AREA]
///     pop  %rcx; pop %rdx
///     jmp  2f
/// 1:  fxrstor64 [FXSAVE_AREA]   ; x87/SSE/MXCSR only
/// 2:  call *%r11
///     jmp  CHAIN_STUB            ; the next chained storage call, or RETURN_TRAMPOLINE
/// ```
///
/// All of it runs at CPL3 with no exit: XRSTOR/FXRSTOR are user-mode instructions. Restoring
/// the full XSAVE state matters for isolation: otherwise a request could read the AVX upper
/// halves (or AVX-512 registers) a previous request left behind.
pub fn request_entry_stub() -> Vec<u8> {
    let area = (layout::FXSAVE_AREA as u32).to_le_bytes();
    let mut xs = vec![
        0x52, 0x51, 0x31, 0xC9, 0x0F, 0x01, 0xD0, 0x48, 0x0F, 0xAE, 0x2C, 0x25,
    ];
    xs.extend_from_slice(&area);
    xs.extend_from_slice(&[0x59, 0x5A]);
    let mut fx = vec![0x48, 0x0F, 0xAE, 0x0C, 0x25];
    fx.extend_from_slice(&area);
    let mut c = vec![
        0x41, 0xF6, 0xC2, 0x02, 0x74, 0x0A, // test $2,%r10b; jz 3f
        0xF3, 0x49, 0x0F, 0xAE, 0xD4, // wrfsbase %r12
        0xF3, 0x49, 0x0F, 0xAE, 0xDD, // wrgsbase %r13
        0x41, 0xF6, 0xC2, 0x01, 0x74, // 3: test $1,%r10b; jz 1f
    ];
    c.push((xs.len() + 2) as u8);
    c.extend_from_slice(&xs);
    c.extend_from_slice(&[0xEB, fx.len() as u8]);
    c.extend_from_slice(&fx);
    c.extend_from_slice(&[0x41, 0xFF, 0xD3]); // call *%r11
    let here = layout::REQUEST_ENTRY + c.len() as u64 + 5;
    let rel = (layout::CHAIN_STUB as i64 - here as i64) as i32;
    c.push(0xE9);
    c.extend_from_slice(&rel.to_le_bytes());
    c
}

/// Offsets in a chain mailbox (see [`chain_stub`]): the flag, then RSP, R11 (the handler),
/// R10, R12, R13, RDI, RSI, RDX for the request entry stub.
pub const CHAIN_MAILBOX_BYTES: usize = 9 * 8;

/// Where a handler that returned goes: a storage function whose clean-up the host resumed
/// together with the next storage call goes straight into that call, with no exit. RBX (kept
/// by the function, as the ABI requires) points at the mailbox the host wrote: a flag, then
/// the entry stub's registers. Without a mailbox (RBX = 0: request VMs) or without a chained
/// call (flag 0), it reports the return as before.
///
/// ```text
///     test %rbx,%rbx; jz 1f
///     cmpq $0,(%rbx); je 1f
///     movq $0,(%rbx)            ; taken: the host sees it in guest memory
///     mov 8(%rbx),%rsp; mov 16(%rbx),%r11; mov 24(%rbx),%r10; mov 32(%rbx),%r12
///     mov 40(%rbx),%r13; mov 48(%rbx),%rdi; mov 56(%rbx),%rsi; mov 64(%rbx),%rdx
///     jmp REQUEST_ENTRY
/// 1:  jmp RETURN_TRAMPOLINE
/// ```
pub fn chain_stub() -> Vec<u8> {
    let loads: [[u8; 4]; 8] = [
        [0x48, 0x8B, 0x63, 0x08], // mov 8(%rbx),%rsp
        [0x4C, 0x8B, 0x5B, 0x10], // mov 16(%rbx),%r11
        [0x4C, 0x8B, 0x53, 0x18], // mov 24(%rbx),%r10
        [0x4C, 0x8B, 0x63, 0x20], // mov 32(%rbx),%r12
        [0x4C, 0x8B, 0x6B, 0x28], // mov 40(%rbx),%r13
        [0x48, 0x8B, 0x7B, 0x30], // mov 48(%rbx),%rdi
        [0x48, 0x8B, 0x73, 0x38], // mov 56(%rbx),%rsi
        [0x48, 0x8B, 0x53, 0x40], // mov 64(%rbx),%rdx
    ];
    // Bytes from each jump to label 1 (the last 5 bytes).
    let body = 7 + loads.len() * 4 + 5;
    let mut c = vec![0x48, 0x85, 0xDB, 0x74, (4 + 2 + body) as u8]; // test; jz 1f
    c.extend_from_slice(&[0x48, 0x83, 0x3B, 0x00, 0x74, body as u8]); // cmpq $0; je 1f
    c.extend_from_slice(&[0x48, 0xC7, 0x03, 0, 0, 0, 0]); // movq $0,(%rbx)
    for l in loads {
        c.extend_from_slice(&l);
    }
    let jump = |c: &mut Vec<u8>, to: u64| {
        let here = layout::CHAIN_STUB + c.len() as u64 + 5;
        c.push(0xE9);
        c.extend_from_slice(&((to as i64 - here as i64) as i32).to_le_bytes());
    };
    jump(&mut c, layout::REQUEST_ENTRY);
    jump(&mut c, layout::RETURN_TRAMPOLINE);
    c
}

/// The resume trampoline of event-loop programs, at [`layout::PAUSED_ENTRY`]: the request
/// entry stub restored the frozen FPU state (and, under kvm_pvm, the FS/GS bases from R12/R13)
/// and calls it on a scratch stack; it puts back the paused point's RSP, R12 and R13 (the
/// callee-saved registers the stub used) and jumps to where `wait_for_requests_paused()`
/// returns. Every other register is set by the host.
///
/// ```text
///     mov PAUSED_RESUME+0,%rsp; mov PAUSED_RESUME+8,%r12; mov PAUSED_RESUME+16,%r13
///     jmp *PAUSED_RESUME+24
/// ```
pub fn paused_resume_stub() -> Vec<u8> {
    let slot = |i: u64| ((edgevm_guest_abi::io::PAUSED_RESUME + 8 * i) as u32).to_le_bytes();
    let mut c = Vec::new();
    for (i, op) in [
        [0x48, 0x8B, 0x24, 0x25],
        [0x4C, 0x8B, 0x24, 0x25],
        [0x4C, 0x8B, 0x2C, 0x25],
    ]
    .iter()
    .enumerate()
    {
        c.extend_from_slice(op);
        c.extend_from_slice(&slot(i as u64));
    }
    c.extend_from_slice(&[0xFF, 0x24, 0x25]);
    c.extend_from_slice(&slot(3));
    c
}

/// Program start: one system call that tells the host how SYSCALL enters on this KVM (CPL0 on
/// hardware, CPL3 under kvm_pvm) before any program instruction runs, then the ELF entry with
/// the registers Linux gives a new process (zero but RSP and RFLAGS):
///
/// ```text
///     mov  $START_PROBE,%eax
///     syscall
///     xor  %eax,%eax; xor %ecx,%ecx; xor %r11d,%r11d
///     jmp  *ENTRY_SLOT(%rip)
/// ```
pub fn program_start_stub() -> Vec<u8> {
    let mut c = vec![0xB8];
    c.extend_from_slice(&(crate::linux::START_PROBE as u32).to_le_bytes());
    c.extend_from_slice(&[
        0x0F, 0x05, 0x31, 0xC0, 0x31, 0xC9, 0x45, 0x31, 0xDB, 0xFF, 0x25,
    ]);
    let next = layout::PROGRAM_START + c.len() as u64 + 4;
    c.extend_from_slice(&((layout::ENTRY_SLOT - next) as i32).to_le_bytes());
    c
}

/// Return trampoline: `mov $0xFFFF,%eax; out %eax,$0; ud2`.
pub const RETURN_STUB: [u8; 9] = [0xB8, 0xFF, 0xFF, 0x00, 0x00, 0xE7, 0x00, 0x0F, 0x0B];

/// Stream-callback return, at [`layout::STREAM_RETURN`]: `mov %rax,%rsi; jmp RETURN_TRAMPOLINE`.
pub fn stream_return_stub() -> Vec<u8> {
    let mut c = vec![0x48, 0x89, 0xC6, 0xE9];
    let next = layout::STREAM_RETURN + c.len() as u64 + 4;
    c.extend_from_slice(&((layout::RETURN_TRAMPOLINE as i64 - next as i64) as i32).to_le_bytes());
    c
}

/// Keep-the-result call, at [`layout::CALL_KEEP`]:
/// `sub $8,%rsp; call *%rbx; add $8,%rsp; mov %rax,%rsi; xor %ebx,%ebx; ret`.
pub const CALL_KEEP_STUB: [u8; 17] = [
    0x48, 0x83, 0xEC, 0x08, 0xFF, 0xD3, 0x48, 0x83, 0xC4, 0x08, 0x48, 0x89, 0xC6, 0x31, 0xDB, 0xC3,
    0xCC,
];

/// The #UD handler at [`layout::PT_HANDLER`], on its own IST stack (so a #UD at CPL0, in the
/// hardware-KVM system call stub, never writes below the program's RSP). A #UD at
/// [`layout::PT_TRIGGER`] with a batch queued is the page-table routine (see
/// [`crate::paging`]): it stores every queued page-table range onto itself (a guest write the
/// hypervisor follows), reloads CR3 (TLB flush) and returns to the RIP in the batch. Any
/// other #UD (or the trigger reached with nothing queued: a program jumping there) goes to
/// the ordinary exception stub, a crash report.
///
/// ```text
///     cmpq $PT_TRIGGER,(%rsp); jne 3f
///     push %rax; push %rcx; push %rsi; push %rdi; push %rdx
///     mov  $PT_BATCH,%edx; mov (%rdx),%rax; test %rax,%rax; jz 2f
///     cld
/// 1:  mov 16(%rdx),%rdi; mov 24(%rdx),%rcx; mov %rdi,%rsi; rep movsq
///     add $16,%rdx; dec %rax; jnz 1b
///     mov $PT_BATCH,%edx; movq $0,(%rdx); mov 8(%rdx),%rax; mov %rax,40(%rsp)
///     mov %cr3,%rax; mov %rax,%cr3
///     pop %rdx; pop %rdi; pop %rsi; pop %rcx; pop %rax
///     iretq
/// 2:  pop %rdx; pop %rdi; pop %rsi; pop %rcx; pop %rax
/// 3:  jmp EXC_STUBS+6*16
/// ```
pub fn pt_apply_handler() -> Vec<u8> {
    let batch = (layout::PT_BATCH as u32).to_le_bytes();
    let mut c = vec![0x48, 0x81, 0x3C, 0x24];
    c.extend_from_slice(&(layout::PT_TRIGGER as u32).to_le_bytes());
    c.extend_from_slice(&[0x0F, 0x85, 0, 0, 0, 0]); // jne rel32 (3f)
    let jne_at = c.len() - 4;
    c.extend_from_slice(&[0x50, 0x51, 0x56, 0x57, 0x52, 0xBA]);
    c.extend_from_slice(&batch);
    c.extend_from_slice(&[0x48, 0x8B, 0x02, 0x48, 0x85, 0xC0, 0x74, 0x00]);
    let jz_at = c.len() - 1;
    c.push(0xFC);
    let lp = c.len();
    c.extend_from_slice(&[
        0x48, 0x8B, 0x7A, 0x10, 0x48, 0x8B, 0x4A, 0x18, 0x48, 0x89, 0xFE, 0xF3, 0x48, 0xA5, 0x48,
        0x83, 0xC2, 0x10, 0x48, 0xFF, 0xC8, 0x75,
    ]);
    c.push((lp as i64 - (c.len() as i64 + 1)) as i8 as u8);
    c.push(0xBA);
    c.extend_from_slice(&batch);
    c.extend_from_slice(&[
        0x48, 0xC7, 0x02, 0, 0, 0, 0, 0x48, 0x8B, 0x42, 0x08, 0x48, 0x89, 0x44, 0x24, 0x28, 0x0F,
        0x20, 0xD8, 0x0F, 0x22, 0xD8,
    ]);
    c.extend_from_slice(&[0x5A, 0x5F, 0x5E, 0x59, 0x58, 0x48, 0xCF]);
    c[jz_at] = (c.len() - (jz_at + 1)) as u8;
    c.extend_from_slice(&[0x5A, 0x5F, 0x5E, 0x59, 0x58]);
    let here = (layout::PT_HANDLER + c.len() as u64) as i64;
    c[jne_at..jne_at + 4].copy_from_slice(
        &((here - (jne_at as i64 + 4 + layout::PT_HANDLER as i64)) as i32).to_le_bytes(),
    );
    let ud_stub = (layout::EXC_STUBS + 6 * 16) as i64;
    c.push(0xE9);
    c.extend_from_slice(&((ud_stub - (here + 5)) as i32).to_le_bytes());
    c
}

/// `ud2` at [`layout::PT_TRIGGER`].
pub const PT_TRIGGER_STUB: [u8; 2] = [0x0F, 0x0B];

/// Write GDT, TSS, IDT, stubs and page tables into a fresh guest memory. User memory is
/// read-write and non-executable (executable too below the stack with `executable_heap`);
/// the ELF loader then gives its segments their own protections.
pub fn write_system_tables(
    mem: &mut GuestMemory,
    l: &Layout,
    executable_heap: bool,
) -> Result<(), MemError> {
    // GDT
    for (i, e) in gdt_entries().iter().enumerate() {
        mem.write_u64(layout::GDT + 8 * i as u64, *e)?;
    }
    // TSS: RSP0, I/O map base, bitmap granting ports API_PORT and SYSCALL_PORT to CPL3.
    mem.write_u64(layout::TSS + 4, layout::EXC_STACK_TOP)?;
    mem.write(layout::TSS + 102, &0x68u16.to_le_bytes())?;
    let mut bitmap = [0xFFu8; 33];
    // `out %eax,$0` is a 4-byte access: ports 0-3 must all be granted.
    for port in [0, 1, 2, 3, layout::SYSCALL_PORT] {
        bitmap[port as usize / 8] &= !(1 << (port % 8));
    }
    mem.write(layout::TSS + 0x68, &bitmap)?;
    mem.write_u64(layout::TSS + 0x24, layout::PT_STACK_TOP)?;
    // IDT and exception stubs: `push $vec; out %al,$0xE1; hlt; jmp .-1`
    for v in 0..32u64 {
        let stub = layout::EXC_STUBS + v * 16;
        mem.write(
            stub,
            &[
                0x6A,
                v as u8,
                0xE6,
                layout::EXCEPTION_PORT as u8,
                0xF4,
                0xEB,
                0xFD,
            ],
        )?;
        // Interrupt gates, DPL0 but for int3 and into (DPL3, as on Linux): the program's own
        // `int3` is #BP on every KVM (a trap, RIP after it: a SIGTRAP handler or GDB), not #GP.
        let kind: u64 = if matches!(v, 3 | 4) { 0xEE00 } else { 0x8E00 };
        let lo = (stub & 0xFFFF) | (0x08 << 16) | (kind << 32) | (((stub >> 16) & 0xFFFF) << 48);
        mem.write_u64(layout::IDT + v * 16, lo)?;
        mem.write_u64(layout::IDT + v * 16 + 8, stub >> 32)?;
    }
    mem.write(layout::DEBUG_IRET, &[0x48, 0xCF])?;
    // #UD goes to the page-table routine first (an interrupt gate on IST1).
    let h = layout::PT_HANDLER;
    mem.write(h, &pt_apply_handler())?;
    let v = 6u64;
    let lo = (h & 0xFFFF) | (0x08 << 16) | (0x8E01 << 32) | (((h >> 16) & 0xFFFF) << 48);
    mem.write_u64(layout::IDT + v * 16, lo)?;
    mem.write_u64(layout::IDT + v * 16 + 8, h >> 32)?;
    mem.write(layout::PT_TRIGGER, &PT_TRIGGER_STUB)?;
    // User stubs
    mem.write(layout::SYSCALL_ENTRY, &SYSCALL_STUB)?;
    mem.write(layout::REQUEST_ENTRY, &request_entry_stub())?;
    mem.write(layout::RETURN_TRAMPOLINE, &RETURN_STUB)?;
    mem.write(layout::STREAM_RETURN, &stream_return_stub())?;
    mem.write(layout::CALL_KEEP, &CALL_KEEP_STUB)?;
    mem.write(layout::CHAIN_STUB, &chain_stub())?;
    mem.write(layout::PAUSED_ENTRY, &paused_resume_stub())?;
    mem.write(layout::PROGRAM_START, &program_start_stub())?;
    write_page_tables(mem, l, executable_heap)
}

fn write_page_tables(mem: &mut GuestMemory, l: &Layout, exec_heap: bool) -> Result<(), MemError> {
    const MB2: u64 = 2 << 20;
    // Whole pages, the entries past the address space zero: over a snapshot's image no
    // remapping's tables survive (they are made again, from this build's pool).
    let mut pml4 = vec![0u8; 4096];
    pml4[..8].copy_from_slice(&(layout::PDPT | P | RW | US | A).to_le_bytes());
    mem.write(layout::PML4, &pml4)?;
    let gibs = l.mem_size.div_ceil(1 << 30);
    let mut pdpt = vec![0u8; 4096];
    for (g, e) in pdpt.chunks_exact_mut(8).take(gibs as usize).enumerate() {
        e.copy_from_slice(&((l.tables + 0x1000 * g as u64) | P | RW | US | A).to_le_bytes());
    }
    mem.write(layout::PDPT, &pdpt)?;
    write_vdso_tables(mem)?;
    // Low 2 MiB in 4 KiB pages: edgevm's own below the I/O area, user memory from USER_BASE.
    for page in 0..512u64 {
        let addr = page * 4096;
        let flags = match addr {
            0 => 0,
            a if a >= layout::USER_BASE && exec_heap => P | RW | US | A | D,
            a if a >= layout::USER_BASE => P | RW | US | A | D | NX,
            a if a == layout::USER_STUBS => P | US | A | D,
            a if a == layout::FXSAVE_AREA => P | US | A | D | NX,
            a if (layout::IO_AREA..layout::IO_AREA + layout::IO_AREA_SIZE).contains(&a) => {
                P | RW | US | A | D | NX
            }
            a if a == layout::EXC_STUBS => P | RW | A | D,
            _ => P | RW | A | D | NX,
        };
        mem.write_u64(
            layout::PT_LOW + 8 * page,
            if flags == 0 { 0 } else { addr | flags },
        )?;
    }
    let guard_region = l.guard_page & !(MB2 - 1);
    for page in 0..512u64 {
        let addr = guard_region + page * 4096;
        let e = if addr == l.guard_page {
            0
        } else {
            addr | P | RW | US | A | D | NX
        };
        mem.write_u64(layout::PT_GUARD + 8 * page, e)?;
    }
    let mut region = 0;
    while region < l.mem_size {
        let e = if region == 0 {
            layout::PT_LOW | P | RW | US | A
        } else if region == guard_region {
            layout::PT_GUARD | P | RW | US | A
        } else if (l.tables..l.tables + layout::TABLES_SIZE).contains(&region) {
            region | P | RW | A | D | PS | NX
        } else if exec_heap && region < guard_region {
            region | P | RW | US | A | D | PS
        } else {
            region | P | RW | US | A | D | PS | NX
        };
        mem.write_u64(l.tables + 8 * (region / MB2), e)?;
        region += MB2;
    }
    Ok(())
}

/// The tables that map the vDSO (edgevm_kvm::vdso: read-only memory slot 1 above every
/// address space) at its guest-virtual = guest-physical address: PDPT entry, page directory,
/// page table, each page written whole (a snapshot's bytes there are never trusted). Written
/// whether or not the vDSO is offered: a program only goes there through AT_SYSINFO_EHDR.
fn write_vdso_tables(mem: &mut GuestMemory) -> Result<(), MemError> {
    use edgevm_kvm::vdso::{RomPerm, PDPT_INDEX, ROM_GPA, ROM_PAGES};
    mem.write_u64(
        layout::PDPT + 8 * PDPT_INDEX,
        layout::VDSO_PD | P | RW | US | A,
    )?;
    let mut pd = [0u8; 4096];
    let pd_index = ((ROM_GPA >> 21) & 511) as usize;
    pd[8 * pd_index..8 * pd_index + 8]
        .copy_from_slice(&(layout::VDSO_PT | P | RW | US | A).to_le_bytes());
    mem.write(layout::VDSO_PD, &pd)?;
    let mut pt = [0u8; 4096];
    for (addr, perm) in ROM_PAGES {
        debug_assert_eq!(addr >> 21, ROM_GPA >> 21);
        let e = match perm {
            RomPerm::ReadExec => addr | P | US | A,
            RomPerm::Read => addr | P | US | A | NX,
        };
        let i = ((addr >> 12) & 511) as usize;
        pt[8 * i..8 * i + 8].copy_from_slice(&e.to_le_bytes());
    }
    mem.write(layout::VDSO_PT, &pt)
}

fn seg(selector: u16, dpl: u8, type_: u8, code64: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl,
        db: if code64 { 0 } else { 1 },
        s: 1,
        l: if code64 { 1 } else { 0 },
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for a program entering at CPL3. `osxsave` sets CR4.OSXSAVE (hardware
/// KVM with XSAVE: lets glibc use AVX; kvm_pvm ignores it at CPL3).
pub fn initial_sregs(base: &kvm_sregs, osxsave: bool) -> kvm_sregs {
    let mut s = *base;
    s.cr0 = 0x8005_0033;
    s.cr3 = layout::PML4;
    s.cr4 = 0x620 | if osxsave { 0x4_0000 } else { 0 };
    s.efer = 0xD01;
    s.cs = seg(0x23, 3, 11, true);
    let data = seg(0x1b, 3, 3, false);
    s.ss = data;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.tr = kvm_segment {
        base: layout::TSS,
        limit: layout::TSS_LIMIT,
        selector: 0x28,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    s.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    s.gdt.base = layout::GDT;
    s.gdt.limit = (7 * 8 - 1) as u16;
    s.idt.base = layout::IDT;
    s.idt.limit = (32 * 16 - 1) as u16;
    s
}

/// Put the user-mode (CPL3) code and stack segments into `s` (a green thread resumes in user
/// mode, wherever the vCPU stopped).
pub fn user_segments(s: &mut kvm_sregs) {
    s.cs = seg(0x23, 3, 11, true);
    s.ss = seg(0x1b, 3, 3, false);
}

/// Registers at program start: RIP at the start probe ([`program_start_stub`]), which jumps to
/// the ELF entry written at [`layout::ENTRY_SLOT`].
pub fn initial_regs(rsp: u64) -> kvm_regs {
    kvm_regs {
        rip: layout::PROGRAM_START,
        rsp,
        rflags: 0x202,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_and_map() {
        let l = Layout::new(64 << 20, 2 << 20).unwrap();
        let mut m = GuestMemory::new_shared(64 << 20).unwrap();
        write_system_tables(&mut m, &l, false).unwrap();
        // The guard page is not present, its neighbours are.
        let gi = (l.guard_page % (2 << 20)) / 4096;
        assert_eq!(m.read_u64(layout::PT_GUARD + 8 * gi).unwrap(), 0);
        assert_ne!(m.read_u64(layout::PT_GUARD + 8 * (gi - 1)).unwrap(), 0);
        // NULL page absent, stub page user-accessible.
        assert_eq!(m.read_u64(layout::PT_LOW).unwrap(), 0);
        assert_ne!(m.read_u64(layout::PT_LOW + 8 * 5).unwrap() & US, 0);
        assert!(
            request_entry_stub().len()
                <= (layout::RETURN_TRAMPOLINE - layout::REQUEST_ENTRY) as usize
        );
        assert!(layout::RETURN_TRAMPOLINE + RETURN_STUB.len() as u64 <= layout::STREAM_RETURN);
        assert!(layout::STREAM_RETURN + stream_return_stub().len() as u64 <= layout::CALL_KEEP);
        assert!(layout::CALL_KEEP + CALL_KEEP_STUB.len() as u64 <= layout::PROGRAM_START);
        assert!(layout::PROGRAM_START + program_start_stub().len() as u64 <= layout::ENTRY_SLOT);
        const { assert!(layout::ENTRY_SLOT + 8 <= layout::CHAIN_STUB) };
        assert!(layout::CHAIN_STUB + chain_stub().len() as u64 <= layout::PAUSED_ENTRY);
        assert!(layout::PAUSED_ENTRY + paused_resume_stub().len() as u64 <= layout::PT_TRIGGER);
        const { assert!(layout::DEBUG_IRET + 2 <= layout::PT_HANDLER) };
        assert!(layout::PT_HANDLER + pt_apply_handler().len() as u64 <= layout::EXC_STUBS + 0x1000);
    }
}
