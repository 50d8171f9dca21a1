//! CPU exceptions reported by the guest's CPL0 stubs, turned into readable reports.

use edgevm_kvm::{GuestMemory, KvmError, Vcpu};

use crate::cpu::has_error_code;
use crate::elf::Symbols;
use crate::layout::Layout;

/// A guest CPU exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    /// Exception vector.
    pub vector: u8,
    /// Error code pushed by the CPU, if any.
    pub error_code: Option<u64>,
    /// Faulting instruction.
    pub rip: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Faulting address (page faults).
    pub cr2: Option<u64>,
    /// `symbol+0xoff` at RIP, when the ELF has symbols.
    pub symbol: Option<String>,
    /// The fault hit the guard page below the stack.
    pub stack_overflow: bool,
    /// The faulting address (CR2) is edgevm's own memory ([`Layout::protected`]).
    pub system_area: bool,
}

/// Short mnemonic and long name of an exception vector.
pub fn exception_name(vector: u8) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug exception"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection fault"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point exception"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection exception"),
        _ => ("#??", "reserved exception"),
    }
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (short, long) = exception_name(self.vector);
        if self.stack_overflow {
            write!(f, "stack overflow ({long} {short} on the stack guard page")?;
            if let Some(a) = self.cr2 {
                write!(f, " at {a:#x}")?;
            }
            write!(f, ")")?;
        } else {
            write!(f, "{long} ({short})")?;
            if let Some(a) = self.cr2 {
                let e = self.error_code.unwrap_or(0);
                let access = if e & 0x10 != 0 {
                    "executing"
                } else if e & 2 != 0 {
                    "writing"
                } else {
                    "reading"
                };
                let why = if e & 1 == 0 {
                    "page not mapped"
                } else if self.system_area {
                    "protection violation"
                } else if e & 0x10 != 0 {
                    "not executable"
                } else if e & 2 != 0 {
                    "read-only"
                } else {
                    "protection violation"
                };
                write!(f, " {access} address {a:#x} ({why})")?;
            } else if let Some(e) = self.error_code.filter(|e| *e != 0) {
                write!(f, " error code {e:#x}")?;
            }
        }
        write!(f, " at RIP {:#x}", self.rip)?;
        if let Some(s) = &self.symbol {
            write!(f, " in {s}")?;
        }
        Ok(())
    }
}

/// Decode the exception frame the CPL0 stub left on the exception stack. Called on an exit
/// through the exception port; costs one GET_SREGS (for CR2), error path only.
pub fn decode_exception(
    cpu: &mut dyn Vcpu,
    mem: &GuestMemory,
    symbols: &Symbols,
    layout: &Layout,
) -> Result<CrashReport, KvmError> {
    let rsp = cpu.regs().rsp;
    let rd = |a: u64| -> Option<u64> {
        let mut b = [0u8; 8];
        mem.read_raw(a, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let vector = rd(rsp).unwrap_or(255) as u8;
    let mut frame = rsp.wrapping_add(8);
    let error_code = if has_error_code(vector) {
        let e = rd(frame);
        frame = frame.wrapping_add(8);
        e
    } else {
        None
    };
    let rip = rd(frame).unwrap_or(0);
    let user_rsp = rd(frame.wrapping_add(24)).unwrap_or(0);
    let cr2 = if vector == 14 {
        Some(cpu.sregs()?.cr2)
    } else {
        None
    };
    let stack_overflow = cr2.is_some_and(|a| {
        (layout.guard_page..layout.guard_page + 4096).contains(&a)
            || (vector == 14
                && user_rsp < layout.stack_bottom
                && user_rsp > layout.guard_page - 4096 * 16)
    });
    let symbol = symbols.lookup(rip).map(|(n, off)| format!("{n}+{off:#x}"));
    Ok(CrashReport {
        vector,
        error_code,
        rip,
        rsp: user_rsp,
        cr2,
        symbol,
        stack_overflow,
        system_area: cr2.is_some_and(|a| {
            layout
                .protected()
                .iter()
                .any(|&(lo, hi)| (lo..hi).contains(&a))
        }),
    })
}
