//! What GDB sees of a VM: the register set and target description, and the `gdbstub`
//! target operations (registers, memory, resume, single step, breakpoints).

use super::*;

// ------------------------------------------------------------------ registers

/// x86-64 with the FS/GS bases and the AVX upper halves (GDB's i386 core, sse, segments and
/// avx features).
pub enum EdgevmX86_64 {}

/// The registers GDB sees.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Regs {
    /// General, segment, x87 and SSE registers.
    pub core: X86_64CoreRegs,
    /// FS base (TLS).
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// Upper halves of YMM0-YMM15.
    pub ymmh: [u128; 16],
}

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for b in self
            .fs_base
            .to_le_bytes()
            .into_iter()
            .chain(self.gs_base.to_le_bytes())
        {
            write_byte(Some(b));
        }
        for y in &self.ymmh {
            for b in y.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        const CORE: usize = 0x218;
        if bytes.len() < CORE {
            return Err(());
        }
        self.core.gdb_deserialize(&bytes[..CORE])?;
        let u64_at = |o: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
        };
        if let (Some(f), Some(g)) = (u64_at(CORE), u64_at(CORE + 8)) {
            self.fs_base = f;
            self.gs_base = g;
        }
        for (i, y) in self.ymmh.iter_mut().enumerate() {
            let o = CORE + 16 + 16 * i;
            if let Some(b) = bytes.get(o..o + 16) {
                *y = u128::from_le_bytes(b.try_into().map_err(|_| ())?);
            }
        }
        Ok(())
    }
}

impl Arch for EdgevmX86_64 {
    type Usize = u64;
    type Registers = Regs;
    type RegId = X86_64CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// GDB's 64bit-core, 64bit-sse, 64bit-segments and 64bit-avx features, in the order of
/// [`Regs::gdb_serialize`].
pub(super) const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
<flags id="i386_eflags" size="4">
<field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
<field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
<field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
<field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
<field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
<field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
<field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
<field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
<field name="ID" start="21" end="21"/>
</flags>
<reg name="rax" bitsize="64" type="int64" regnum="0"/>
<reg name="rbx" bitsize="64" type="int64"/>
<reg name="rcx" bitsize="64" type="int64"/>
<reg name="rdx" bitsize="64" type="int64"/>
<reg name="rsi" bitsize="64" type="int64"/>
<reg name="rdi" bitsize="64" type="int64"/>
<reg name="rbp" bitsize="64" type="data_ptr"/>
<reg name="rsp" bitsize="64" type="data_ptr"/>
<reg name="r8" bitsize="64" type="int64"/>
<reg name="r9" bitsize="64" type="int64"/>
<reg name="r10" bitsize="64" type="int64"/>
<reg name="r11" bitsize="64" type="int64"/>
<reg name="r12" bitsize="64" type="int64"/>
<reg name="r13" bitsize="64" type="int64"/>
<reg name="r14" bitsize="64" type="int64"/>
<reg name="r15" bitsize="64" type="int64"/>
<reg name="rip" bitsize="64" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="i386_eflags"/>
<reg name="cs" bitsize="32" type="int32"/>
<reg name="ss" bitsize="32" type="int32"/>
<reg name="ds" bitsize="32" type="int32"/>
<reg name="es" bitsize="32" type="int32"/>
<reg name="fs" bitsize="32" type="int32"/>
<reg name="gs" bitsize="32" type="int32"/>
<reg name="st0" bitsize="80" type="i387_ext"/>
<reg name="st1" bitsize="80" type="i387_ext"/>
<reg name="st2" bitsize="80" type="i387_ext"/>
<reg name="st3" bitsize="80" type="i387_ext"/>
<reg name="st4" bitsize="80" type="i387_ext"/>
<reg name="st5" bitsize="80" type="i387_ext"/>
<reg name="st6" bitsize="80" type="i387_ext"/>
<reg name="st7" bitsize="80" type="i387_ext"/>
<reg name="fctrl" bitsize="32" type="int" group="float"/>
<reg name="fstat" bitsize="32" type="int" group="float"/>
<reg name="ftag" bitsize="32" type="int" group="float"/>
<reg name="fiseg" bitsize="32" type="int" group="float"/>
<reg name="fioff" bitsize="32" type="int" group="float"/>
<reg name="foseg" bitsize="32" type="int" group="float"/>
<reg name="fooff" bitsize="32" type="int" group="float"/>
<reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v16i8" type="int8" count="16"/>
<vector id="v8i16" type="int16" count="8"/>
<vector id="v4i32" type="int32" count="4"/>
<vector id="v2i64" type="int64" count="2"/>
<union id="vec128">
<field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
<field name="uint128" type="uint128"/>
</union>
<reg name="xmm0" bitsize="128" type="vec128" regnum="40"/>
<reg name="xmm1" bitsize="128" type="vec128"/>
<reg name="xmm2" bitsize="128" type="vec128"/>
<reg name="xmm3" bitsize="128" type="vec128"/>
<reg name="xmm4" bitsize="128" type="vec128"/>
<reg name="xmm5" bitsize="128" type="vec128"/>
<reg name="xmm6" bitsize="128" type="vec128"/>
<reg name="xmm7" bitsize="128" type="vec128"/>
<reg name="xmm8" bitsize="128" type="vec128"/>
<reg name="xmm9" bitsize="128" type="vec128"/>
<reg name="xmm10" bitsize="128" type="vec128"/>
<reg name="xmm11" bitsize="128" type="vec128"/>
<reg name="xmm12" bitsize="128" type="vec128"/>
<reg name="xmm13" bitsize="128" type="vec128"/>
<reg name="xmm14" bitsize="128" type="vec128"/>
<reg name="xmm15" bitsize="128" type="vec128"/>
<reg name="mxcsr" bitsize="32" type="int" group="vector"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
<reg name="fs_base" bitsize="64" type="int"/>
<reg name="gs_base" bitsize="64" type="int"/>
</feature>
<feature name="org.gnu.gdb.i386.avx">
<reg name="ymm0h" bitsize="128" type="uint128"/>
<reg name="ymm1h" bitsize="128" type="uint128"/>
<reg name="ymm2h" bitsize="128" type="uint128"/>
<reg name="ymm3h" bitsize="128" type="uint128"/>
<reg name="ymm4h" bitsize="128" type="uint128"/>
<reg name="ymm5h" bitsize="128" type="uint128"/>
<reg name="ymm6h" bitsize="128" type="uint128"/>
<reg name="ymm7h" bitsize="128" type="uint128"/>
<reg name="ymm8h" bitsize="128" type="uint128"/>
<reg name="ymm9h" bitsize="128" type="uint128"/>
<reg name="ymm10h" bitsize="128" type="uint128"/>
<reg name="ymm11h" bitsize="128" type="uint128"/>
<reg name="ymm12h" bitsize="128" type="uint128"/>
<reg name="ymm13h" bitsize="128" type="uint128"/>
<reg name="ymm14h" bitsize="128" type="uint128"/>
<reg name="ymm15h" bitsize="128" type="uint128"/>
</feature>
</target>"#;

// ------------------------------------------------------------------ the target

pub(super) fn fatal(e: impl std::fmt::Display) -> TargetError<String> {
    TargetError::Fatal(e.to_string())
}

impl<C: Vcpu, M: MemoryView> Target for Vm<C, M> {
    type Arch = EdgevmX86_64;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_section_offsets(&mut self) -> Option<SectionOffsetsOps<'_, Self>> {
        Some(self)
    }
}

/// Where the program was loaded relative to its link addresses (a static-pie program's load
/// bias), so GDB relocates its symbols.
impl<C: Vcpu, M: MemoryView> SectionOffsets for Vm<C, M> {
    fn get_section_offsets(&mut self) -> Result<Offsets<u64>, Self::Error> {
        let b = self.elf.bias;
        Ok(Offsets::Sections {
            text: b,
            data: b,
            bss: Some(b),
        })
    }
}

impl<C: Vcpu, M: MemoryView> SingleThreadBase for Vm<C, M> {
    fn read_registers(&mut self, regs: &mut Regs) -> TargetResult<(), Self> {
        let r = *self.machine.cpu.regs();
        let s = self.machine.cpu.sregs().map_err(fatal)?;
        regs.core.regs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        let seg = &mut regs.core.segments;
        (seg.ds, seg.es, seg.fs, seg.gs) = (
            s.ds.selector.into(),
            s.es.selector.into(),
            s.fs.selector.into(),
            s.gs.selector.into(),
        );
        if let Some(f) = dbg(self).frame {
            let m = &self.machine.mem;
            regs.core.rip = m.read_raw_u64(f);
            seg.cs = m.read_raw_u64(f + 8) as u32;
            regs.core.eflags = m.read_raw_u64(f + 16) as u32;
            regs.core.regs[7] = m.read_raw_u64(f + 24);
            seg.ss = m.read_raw_u64(f + 32) as u32;
        } else {
            regs.core.rip = r.rip;
            regs.core.eflags = r.rflags as u32;
            seg.cs = s.cs.selector.into();
            seg.ss = s.ss.selector.into();
        }
        regs.core.eflags &= !(TF as u32);
        regs.fs_base = s.fs.base;
        regs.gs_base = s.gs.base;
        if let Some(x) = self.machine.cpu.xsave_state() {
            fill_fpu(regs, &x);
        }
        Ok(())
    }

    fn write_registers(&mut self, regs: &Regs) -> TargetResult<(), Self> {
        let g = regs.core.regs;
        let frame = dbg(self).frame;
        {
            let r = self.machine.cpu.regs_mut();
            [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
                r.r13, r.r14, r.r15,
            ] = [
                g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[8], g[9], g[10], g[11], g[12], g[13],
                g[14], g[15],
            ];
            if frame.is_none() {
                r.rsp = g[7];
                r.rip = regs.core.rip;
                // Only the arithmetic and direction flags are the debugger's to change.
                r.rflags = (r.rflags & !0xCD5) | (u64::from(regs.core.eflags) & 0xCD5);
            }
        }
        if let Some(f) = frame {
            let m = &mut self.machine.mem;
            let fl = m.read_raw_u64(f + 16);
            let fl = (fl & !0xCD5) | (u64::from(regs.core.eflags) & 0xCD5);
            for (o, v) in [(0, regs.core.rip), (16, fl), (24, g[7])] {
                m.write_raw(f + o, &v.to_le_bytes()).map_err(fatal)?;
            }
        }
        if regs.fs_base != self.machine.cpu.fs_base() {
            self.machine.cpu.set_fs_base(regs.fs_base).map_err(fatal)?;
        }
        if regs.gs_base != self.machine.cpu.gs_base() {
            self.machine.cpu.set_gs_base(regs.gs_base).map_err(fatal)?;
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        // A remapped area (`remapping`: Go's heap at 0xC000000000) reads through its
        // translation, up to its end; like ptrace, whatever the page protections.
        if let Some((v, _, len)) = self.machine.mem.remap_of(start) {
            let n = data.len().min((v + len - start) as usize);
            self.machine
                .mem
                .read_any_protection(start, &mut data[..n])
                .map_err(|_| TargetError::Errno(14))?;
            return Ok(n);
        }
        // Page 0 is not mapped for the program; nor is anything past its memory.
        let end = self.layout.mem_size;
        if start < 0x1000 || start >= end {
            return Err(TargetError::Errno(14));
        }
        let n = data.len().min((end - start) as usize);
        self.machine
            .mem
            .read_raw(start, &mut data[..n])
            .map_err(|_| TargetError::Errno(14))?;
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        // The program's memory only: never the supervisor structures (below it, and the page
        // tables, which the checked write refuses); remapped areas through their translation.
        if start < layout::USER_BASE {
            return Err(TargetError::Errno(14));
        }
        self.machine
            .mem
            .write_any_protection(start, data)
            .map_err(|_| TargetError::Errno(14))
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

/// x87/SSE from the XSAVE legacy area, AVX upper halves from its AVX component.
pub(super) fn fill_fpu(regs: &mut Regs, x: &[u8]) {
    if x.len() < 512 {
        return;
    }
    let u16_at = |o: usize| u16::from_le_bytes([x[o], x[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(x[o..o + 4].try_into().unwrap_or_default());
    let f = &mut regs.core.fpu;
    f.fctrl = u16_at(0).into();
    f.fstat = u16_at(2).into();
    // Abridged tag (1 bit per register, 1 = valid) -> full tag (2 bits, 11 = empty).
    let ftw = x[4];
    f.ftag = (0..8).fold(0u32, |t, i| {
        t | if ftw & (1 << i) != 0 { 0 } else { 3 << (2 * i) }
    });
    f.fop = u16_at(6).into();
    f.fioff = u32_at(8);
    f.fiseg = u32_at(12);
    f.fooff = u32_at(16);
    f.foseg = u32_at(20);
    regs.core.mxcsr = u32_at(24);
    for (i, st) in regs.core.st.iter_mut().enumerate() {
        st.copy_from_slice(&x[32 + 16 * i..42 + 16 * i]);
    }
    for (i, xmm) in regs.core.xmm.iter_mut().enumerate() {
        let o = 160 + 16 * i;
        *xmm = u128::from_le_bytes(x[o..o + 16].try_into().unwrap_or_default());
    }
    let xstate_bv = x
        .get(512..520)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .unwrap_or(0);
    if xstate_bv & 4 != 0 && x.len() >= 576 + 256 {
        for (i, y) in regs.ymmh.iter_mut().enumerate() {
            let o = 576 + 16 * i;
            *y = u128::from_le_bytes(x[o..o + 16].try_into().unwrap_or_default());
        }
    }
}

impl<C: Vcpu, M: MemoryView> SingleThreadResume for Vm<C, M> {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        dbg(self).stepping = false;
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl<C: Vcpu, M: MemoryView> SingleThreadSingleStep for Vm<C, M> {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        dbg(self).stepping = true;
        Ok(())
    }
}

impl<C: Vcpu, M: MemoryView> Breakpoints for Vm<C, M> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl<C: Vcpu, M: MemoryView> SwBreakpoint for Vm<C, M> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if dbg(self).sw.contains_key(&addr) {
            return Ok(true);
        }
        let remapped = self.machine.mem.remap_of(addr).is_some();
        if !remapped && !self.layout.is_user(addr) {
            return Ok(false);
        }
        let mut b = [0u8];
        if self.machine.mem.read_any_protection(addr, &mut b).is_err() {
            return Ok(false);
        }
        if self
            .machine
            .mem
            .write_any_protection(addr, &[INT3])
            .is_err()
        {
            return Ok(false);
        }
        dbg(self).sw.insert(addr, b[0]);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(b) = dbg(self).sw.remove(&addr) else {
            return Ok(false);
        };
        self.machine
            .mem
            .write_any_protection(addr, &[b])
            .map_err(fatal)?;
        Ok(true)
    }
}

impl<C: Vcpu, M: MemoryView> HwBreakpoint for Vm<C, M> {
    // `hbreak` is an `int3` like `break`, on every KVM: kvm_pvm ignores the guest's debug
    // registers, and under emulated SVM (scripts/hwkvm.sh) a breakpoint in DR0-DR3 set with
    // KVM_SET_DEBUGREGS was never hit; an `int3` works and is tested on both
    // (docs/DEBUGGING.md).
    fn add_hw_breakpoint(&mut self, addr: u64, kind: usize) -> TargetResult<bool, Self> {
        self.add_sw_breakpoint(addr, kind)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, kind: usize) -> TargetResult<bool, Self> {
        self.remove_sw_breakpoint(addr, kind)
    }
}
