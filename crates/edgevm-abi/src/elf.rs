//! Loading a static x86_64 ELF into guest memory, its initial stack, and its symbols.

use std::sync::Arc;

use edgevm_kvm::{GuestMemory, MemError};
use goblin::elf::{header, program_header, sym, Elf};

use crate::layout::{self, Layout};

/// Why a program cannot be loaded. Every message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file (no \\x7fELF magic): edgevm runs static x86_64 Linux executables")]
    NotElf,
    #[error("32-bit ELF programs are not supported: build a 64-bit x86_64 program")]
    Elf32,
    #[error("big-endian ELF programs are not supported")]
    BigEndian,
    #[error("the program is built for {0}, not x86_64: edgevm runs x86_64 programs only")]
    WrongMachine(String),
    #[error("truncated or malformed ELF: {0}")]
    Malformed(String),
    #[error("dynamically linked programs are not supported yet: build with -static (gcc -static, or rustc -C target-feature=+crt-static)")]
    Dynamic,
    #[error("ELF type {0} cannot be run: only executables (ET_EXEC) and static-pie (ET_DYN) are supported")]
    BadType(u16),
    #[error(
        "ELF segment at {vaddr:#x}..{end:#x} is outside the usable address space: it starts below {lo:#x}, the lowest load address (edgevm's system pages and the I/O area are below it, as the reference's own pages are); link at {lo:#x} or above (-Wl,-Ttext-segment={lo:#x}) or as -static-pie"
    )]
    BelowLowest { vaddr: u64, end: u64, lo: u64 },
    #[error(
        "ELF segment at {vaddr:#x}..{end:#x} is outside the usable address space {lo:#x}..{hi:#x}"
    )]
    OutsideAddressSpace {
        vaddr: u64,
        end: u64,
        lo: u64,
        hi: u64,
    },
    #[error("ELF segments overlap: {0:#x}..{1:#x} and {2:#x}..{3:#x}")]
    Overlap(u64, u64, u64, u64),
    #[error("ELF has no loadable segment")]
    NoSegments,
    #[error("arguments and environment are too large ({0} bytes)")]
    ArgsTooLarge(usize),
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// What kind of static binary this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BinaryType {
    /// ET_EXEC at its link address.
    #[default]
    Static,
    /// ET_DYN without interpreter, relocated to [`layout::PIE_BASE`].
    StaticPie,
}

impl BinaryType {
    /// "static" / "static-pie".
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryType::Static => "static",
            BinaryType::StaticPie => "static-pie",
        }
    }
}

/// A loaded program (`Default`: none, for unit tests of the layers above).
#[derive(Debug, Clone, Default)]
pub struct LoadedElf {
    /// Entry point (after relocation).
    pub entry: u64,
    /// Load bias added to every link address.
    pub bias: u64,
    /// Address of the program headers in guest memory (0 = not mapped; put on the stack).
    pub phdr: u64,
    /// Number of program headers.
    pub phnum: u64,
    /// First byte after the highest segment, page aligned: where brk starts.
    pub end: u64,
    /// Bytes of address space the segments span.
    pub image_bytes: u64,
    /// static / static-pie.
    pub kind: BinaryType,
    /// Function symbols for crash reports.
    pub symbols: Symbols,
    /// The load segments as mapped: (first page, end page, PROT_* bits), in header order (a
    /// page two segments share gets the later one's protection, as on Linux).
    pub segments: Vec<(u64, u64, u32)>,
    raw_phdrs: Vec<u8>,
}

/// Sorted function symbols. Shared, not copied, by every request VM forked from a program
/// (a static glibc program has ~1,300): the names are one string.
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    /// (address, size, end of the name in `names`), by address.
    syms: Arc<[(u64, u64, u32)]>,
    names: Arc<str>,
}

impl Symbols {
    /// Symbols from (address, size, name) entries, kept in the order given (by address).
    pub fn new(list: Vec<(u64, u64, String)>) -> Symbols {
        let mut names = String::with_capacity(list.iter().map(|s| s.2.len()).sum());
        let mut syms = Vec::with_capacity(list.len());
        for (a, n, name) in list {
            names.push_str(&name);
            syms.push((a, n, names.len() as u32));
        }
        Symbols {
            syms: syms.into(),
            names: names.into(),
        }
    }

    fn name(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |p| self.syms[p].2 as usize);
        self.names.get(start..self.syms[i].2 as usize).unwrap_or("")
    }

    /// (address, size, name) of each symbol, by address.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &str)> {
        (0..self.syms.len()).map(|i| (self.syms[i].0, self.syms[i].1, self.name(i)))
    }

    /// The symbol containing `addr`, with the offset into it.
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.syms.partition_point(|s| s.0 <= addr);
        if i == 0 {
            return None;
        }
        let (start, size, _) = self.syms[i - 1];
        if addr < start + size.max(1) {
            Some((self.name(i - 1), addr - start))
        } else {
            None
        }
    }

    /// Address of a symbol by name.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.iter().find(|s| s.2 == name).map(|s| s.0)
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// No symbols (stripped binary).
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }
}

impl LoadedElf {
    /// Write this description to a snapshot (snapcodec), symbols included: a start from the
    /// snapshot does not parse the binary again.
    pub fn save(&self, w: &mut crate::snapcodec::Writer) {
        w.u64(self.entry)
            .u64(self.bias)
            .u64(self.phdr)
            .u64(self.phnum)
            .u64(self.end)
            .u64(self.image_bytes)
            .u64(match self.kind {
                BinaryType::Static => 0,
                BinaryType::StaticPie => 1,
            })
            .bytes(&self.raw_phdrs)
            .u64(self.symbols.len() as u64);
        for (a, n, name) in self.symbols.iter() {
            w.u64(a).u64(n).str(name);
        }
    }

    /// Read a description written by [`LoadedElf::save`]; symbols must be in order.
    pub fn restore(
        r: &mut crate::snapcodec::Reader,
    ) -> Result<LoadedElf, crate::snapcodec::DecodeError> {
        use crate::snapcodec::DecodeError;
        let (entry, bias, phdr, phnum, end, image_bytes) =
            (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let kind = match r.u64()? {
            0 => BinaryType::Static,
            1 => BinaryType::StaticPie,
            v => return Err(DecodeError(format!("binary type {v}"))),
        };
        let raw_phdrs = r.bytes()?.to_vec();
        // One string for all names: no allocation per symbol (a start from a snapshot reads
        // ~1,300 of them for a static glibc program).
        let n = r.count(24)?;
        let mut syms = Vec::with_capacity(n);
        let mut names = String::new();
        for _ in 0..n {
            let (a, size, name) = (r.u64()?, r.u64()?, r.str()?);
            if syms.last().is_some_and(|l: &(u64, u64, u32)| l.0 > a) {
                return Err(DecodeError("symbols out of order".into()));
            }
            names.push_str(name);
            let end = u32::try_from(names.len())
                .map_err(|_| DecodeError("symbol names too long".into()))?;
            syms.push((a, size, end));
        }
        Ok(LoadedElf {
            entry,
            bias,
            phdr,
            phnum,
            end,
            image_bytes,
            kind,
            symbols: Symbols {
                syms: syms.into(),
                names: names.into(),
            },
            // A snapshot carries the page protections themselves (LinuxState::save_protections).
            segments: Vec::new(),
            raw_phdrs,
        })
    }
}

fn machine_name(m: u16) -> String {
    match m {
        3 => "x86 (i386)".into(),
        40 => "ARM".into(),
        183 => "AArch64".into(),
        243 => "RISC-V".into(),
        8 => "MIPS".into(),
        20 | 21 => "PowerPC".into(),
        22 => "S390".into(),
        other => format!("machine type {other}"),
    }
}

/// Check the identification bytes before handing the file to the parser, so the common
/// mistakes get a precise message.
fn precheck(bytes: &[u8]) -> Result<(), ElfError> {
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if bytes.len() < 20 {
        return Err(ElfError::Malformed(format!(
            "file is only {} bytes long",
            bytes.len()
        )));
    }
    match bytes[4] {
        1 => return Err(ElfError::Elf32),
        2 => {}
        c => return Err(ElfError::Malformed(format!("unknown ELF class {c}"))),
    }
    if bytes[5] == 2 {
        return Err(ElfError::BigEndian);
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    if machine != header::EM_X86_64 {
        return Err(ElfError::WrongMachine(machine_name(machine)));
    }
    if bytes.len() < 64 {
        return Err(ElfError::Malformed(format!(
            "file is only {} bytes long, shorter than an ELF header",
            bytes.len()
        )));
    }
    // The header tables must lie inside the file; the parser would only say "bad offset".
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([bytes[o], bytes[o + 1]]));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    if u16_at(0x36) != 56 {
        return Err(ElfError::Malformed(format!(
            "program header entry size is {}, not 56 (e_phentsize)",
            u16_at(0x36)
        )));
    }
    for (what, off, entsize, num) in [
        ("program headers", u64_at(0x20), u16_at(0x36), u16_at(0x38)),
        ("section headers", u64_at(0x28), u16_at(0x3A), u16_at(0x3C)),
    ] {
        let end = entsize
            .checked_mul(num)
            .and_then(|n| n.checked_add(off))
            .unwrap_or(u64::MAX);
        if num > 0 && end > bytes.len() as u64 {
            return Err(ElfError::Malformed(format!(
                "truncated: the file is {} bytes long but its {what} end at byte {end}",
                bytes.len()
            )));
        }
    }
    Ok(())
}

/// Validate `bytes` and load its segments into `mem`.
pub fn load(bytes: &[u8], mem: &mut GuestMemory, l: &Layout) -> Result<LoadedElf, ElfError> {
    load_into(bytes, Some(mem), l, layout::PIE_BASE)
}

/// Where the host's dynamic loader goes when it boots a dynamically linked program: above
/// the 64 MiB from [`layout::PIE_BASE`] a non-PIE program's image (linked at 0x400000) takes.
pub const INTERP_BASE: u64 = layout::PIE_BASE + (64 << 20);

/// [`load`] for a dynamic loader (ET_DYN), relocated to [`INTERP_BASE`].
pub fn load_interpreter(
    bytes: &[u8],
    mem: &mut GuestMemory,
    l: &Layout,
) -> Result<LoadedElf, ElfError> {
    load_into(bytes, Some(mem), l, INTERP_BASE)
}

/// The interpreter (PT_INTERP) a dynamically linked program names, if it names one.
pub fn interpreter(bytes: &[u8]) -> Result<Option<String>, ElfError> {
    precheck(bytes)?;
    let elf = Elf::parse(bytes).map_err(|e| ElfError::Malformed(e.to_string()))?;
    Ok(elf.interpreter.map(str::to_string))
}

/// What [`load`] returns, without writing the segments anywhere (a program whose loaded
/// image comes from a snapshot file).
pub fn describe(bytes: &[u8], l: &Layout) -> Result<LoadedElf, ElfError> {
    load_into(bytes, None, l, layout::PIE_BASE)
}

fn load_into(
    bytes: &[u8],
    mut mem: Option<&mut GuestMemory>,
    l: &Layout,
    pie_base: u64,
) -> Result<LoadedElf, ElfError> {
    precheck(bytes)?;
    let elf = Elf::parse(bytes).map_err(|e| ElfError::Malformed(e.to_string()))?;
    if elf
        .program_headers
        .iter()
        .any(|p| p.p_type == program_header::PT_INTERP)
    {
        return Err(ElfError::Dynamic);
    }
    let loads: Vec<_> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == program_header::PT_LOAD && p.p_memsz > 0)
        .collect();
    if loads.is_empty() {
        return Err(ElfError::NoSegments);
    }
    let min_vaddr = loads.iter().map(|p| p.p_vaddr).min().unwrap_or(0) & !0xFFF;
    let (kind, bias) = match elf.header.e_type {
        header::ET_EXEC => (BinaryType::Static, 0u64),
        header::ET_DYN => (BinaryType::StaticPie, pie_base.wrapping_sub(min_vaddr)),
        t => return Err(ElfError::BadType(t)),
    };
    let sorted = check_segments(bytes, &loads, bias, l)?;
    // Map like Linux does: whole pages from the file, then zero the rest of memsz.
    for p in &loads {
        let Some(mem) = mem.as_deref_mut() else {
            break;
        };
        let vaddr = p.p_vaddr.wrapping_add(bias);
        let page_off = vaddr & 0xFFF;
        let file_start = p.p_offset.saturating_sub(page_off) as usize;
        let mem_start = vaddr - page_off;
        let file_end = (p.p_offset + p.p_filesz) as usize;
        mem.write(mem_start, &bytes[file_start..file_end])?;
        let zero_from = vaddr + p.p_filesz;
        let zero_len = (vaddr + p.p_memsz) - zero_from;
        if zero_len > 0 {
            mem.zero(zero_from, zero_len as usize)?;
        }
    }
    let end = sorted.iter().map(|r| r.1).max().unwrap_or(0);
    let end = (end + 0xFFF) & !0xFFF;
    let start = sorted[0].0 & !0xFFF;
    // Program headers: PT_PHDR, else the load segment containing e_phoff.
    let phoff = elf.header.e_phoff;
    let phdr = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == program_header::PT_PHDR)
        .map(|p| p.p_vaddr.wrapping_add(bias))
        .or_else(|| {
            loads
                .iter()
                .find(|p| phoff >= p.p_offset && phoff < p.p_offset + p.p_filesz)
                .map(|p| {
                    p.p_vaddr
                        .wrapping_add(bias)
                        .wrapping_add(phoff - p.p_offset)
                })
        })
        .unwrap_or(0);
    let phsize = elf.header.e_phnum as usize * elf.header.e_phentsize as usize;
    let raw_phdrs = bytes
        .get(phoff as usize..(phoff as usize).saturating_add(phsize))
        .unwrap_or(&[])
        .to_vec();
    let syms = function_symbols(&elf, bias);
    let segments = loads
        .iter()
        .map(|p| {
            let vaddr = p.p_vaddr.wrapping_add(bias);
            let f = p.p_flags;
            let bit = |flag: u32, prot: u32| if f & flag != 0 { prot } else { 0 };
            let prot = bit(program_header::PF_R, crate::paging::PROT_READ)
                | bit(program_header::PF_W, crate::paging::PROT_WRITE)
                | bit(program_header::PF_X, crate::paging::PROT_EXEC);
            (vaddr & !0xFFF, (vaddr + p.p_memsz + 0xFFF) & !0xFFF, prot)
        })
        .collect();
    Ok(LoadedElf {
        entry: elf.entry.wrapping_add(bias),
        bias,
        phdr,
        phnum: elf.header.e_phnum as u64,
        end,
        image_bytes: end - start,
        kind,
        symbols: Symbols::new(syms),
        segments,
        raw_phdrs,
    })
}

/// Check the load segments (inside the user address space, file bytes present, no overlap):
/// their (start, end) ranges after relocation by `bias`, sorted.
fn check_segments(
    bytes: &[u8],
    loads: &[&program_header::ProgramHeader],
    bias: u64,
    l: &Layout,
) -> Result<Vec<(u64, u64)>, ElfError> {
    // Leave room for at least 2 MiB of heap and mmap below the stack guard.
    let hi = l.input_area & !((2 << 20) - 1);
    let mut ranges = Vec::new();
    for p in loads {
        let vaddr = p.p_vaddr.wrapping_add(bias);
        let end = vaddr.saturating_add(p.p_memsz);
        if vaddr < layout::USER_BASE {
            return Err(ElfError::BelowLowest {
                vaddr,
                end,
                lo: layout::USER_BASE,
            });
        }
        if end > hi.saturating_sub(2 << 20) {
            return Err(ElfError::OutsideAddressSpace {
                vaddr,
                end,
                lo: layout::USER_BASE,
                hi: hi.saturating_sub(2 << 20),
            });
        }
        if p.p_filesz > p.p_memsz {
            return Err(ElfError::Malformed(format!(
                "segment at {:#x} has file size {:#x} larger than memory size {:#x}",
                p.p_vaddr, p.p_filesz, p.p_memsz
            )));
        }
        let fend = p.p_offset.checked_add(p.p_filesz);
        if fend.is_none_or(|e| e > bytes.len() as u64) {
            return Err(ElfError::Malformed(format!(
                "truncated: segment at {:#x} needs file bytes {:#x}..{:#x}, file has {:#x}",
                p.p_vaddr,
                p.p_offset,
                p.p_offset.saturating_add(p.p_filesz),
                bytes.len()
            )));
        }
        ranges.push((vaddr, end));
    }
    let mut sorted = ranges;
    sorted.sort();
    for w in sorted.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(ElfError::Overlap(w[0].0, w[0].1, w[1].0, w[1].1));
        }
    }
    Ok(sorted)
}

/// Function symbols (address after relocation, size, name), sorted by address.
fn function_symbols(elf: &Elf, bias: u64) -> Vec<(u64, u64, String)> {
    let mut syms: Vec<(u64, u64, String)> = elf
        .syms
        .iter()
        .filter(|s| s.st_type() == sym::STT_FUNC && s.st_value != 0)
        .filter_map(|s| {
            let name = elf.strtab.get_at(s.st_name)?;
            Some((s.st_value.wrapping_add(bias), s.st_size, name.to_string()))
        })
        .collect();
    syms.sort_by_key(|s| s.0);
    syms
}

// auxv keys
const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_BASE: u64 = 7;
const AT_FLAGS: u64 = 8;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_PLATFORM: u64 = 15;
const AT_HWCAP: u64 = 16;
const AT_CLKTCK: u64 = 17;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
const AT_HWCAP2: u64 = 26;
const AT_EXECFN: u64 = 31;
const AT_SYSINFO_EHDR: u64 = 33;

/// Build argc/argv/envp/auxv at the top of the stack, as Linux does. Returns the initial RSP.
/// `vdso`: the address of the vDSO's ELF header for `AT_SYSINFO_EHDR`, when it is offered.
pub fn setup_stack(
    mem: &mut GuestMemory,
    l: &Layout,
    elf: &LoadedElf,
    argv: &[String],
    envp: &[String],
    random: [u8; 16],
    vdso: Option<u64>,
) -> Result<u64, ElfError> {
    let mut sp = l.stack_top;
    let total: usize = argv.iter().chain(envp).map(|s| s.len() + 1).sum();
    if total > (256 << 10) {
        return Err(ElfError::ArgsTooLarge(total));
    }
    fn push_bytes(mem: &mut GuestMemory, sp: &mut u64, b: &[u8]) -> Result<u64, ElfError> {
        *sp -= b.len() as u64;
        mem.write(*sp, b)?;
        Ok(*sp)
    }
    fn push_str(mem: &mut GuestMemory, sp: &mut u64, s: &str) -> Result<u64, ElfError> {
        let mut v: Vec<u8> = s.bytes().filter(|&c| c != 0).collect();
        v.push(0);
        push_bytes(mem, sp, &v)
    }
    let execfn = push_str(mem, &mut sp, argv.first().map(String::as_str).unwrap_or(""))?;
    let platform = push_str(mem, &mut sp, "x86_64")?;
    let mut env_ptrs = Vec::new();
    for e in envp {
        env_ptrs.push(push_str(mem, &mut sp, e)?);
    }
    let mut arg_ptrs = Vec::new();
    for a in argv {
        arg_ptrs.push(push_str(mem, &mut sp, a)?);
    }
    let rand_ptr = push_bytes(mem, &mut sp, &random)?;
    let mut phdr = elf.phdr;
    if phdr == 0 && !elf.raw_phdrs.is_empty() {
        sp &= !7;
        phdr = push_bytes(mem, &mut sp, &elf.raw_phdrs)?;
    }
    // SAFETY: getauxval has no preconditions.
    let (hwcap, hwcap2) = unsafe {
        (
            libc::getauxval(libc::AT_HWCAP),
            libc::getauxval(libc::AT_HWCAP2),
        )
    };
    let mut auxv: Vec<(u64, u64)> = vec![
        (AT_PHDR, phdr),
        (AT_PHENT, 56),
        (AT_PHNUM, elf.phnum),
        (AT_PAGESZ, 4096),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, elf.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_SECURE, 0),
        (AT_CLKTCK, 100),
        (AT_HWCAP, hwcap),
        (AT_HWCAP2, hwcap2),
        (AT_PLATFORM, platform),
        (AT_RANDOM, rand_ptr),
        (AT_EXECFN, execfn),
    ];
    if let Some(ehdr) = vdso {
        // Linux passes it first.
        auxv.insert(0, (AT_SYSINFO_EHDR, ehdr));
    }
    auxv.push((AT_NULL, 0));
    let words = 1 + arg_ptrs.len() + 1 + env_ptrs.len() + 1 + auxv.len() * 2;
    sp &= !15;
    if words % 2 == 1 {
        sp -= 8;
    }
    sp -= (words * 8) as u64;
    let mut w = Vec::with_capacity(words * 8);
    w.extend_from_slice(&(arg_ptrs.len() as u64).to_le_bytes());
    for p in arg_ptrs.iter().chain([&0]) {
        w.extend_from_slice(&p.to_le_bytes());
    }
    for p in env_ptrs.iter().chain([&0]) {
        w.extend_from_slice(&p.to_le_bytes());
    }
    for (k, v) in auxv {
        w.extend_from_slice(&k.to_le_bytes());
        w.extend_from_slice(&v.to_le_bytes());
    }
    mem.write(sp, &w)?;
    Ok(sp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> (GuestMemory, Layout) {
        (
            GuestMemory::new_shared(64 << 20).unwrap(),
            Layout::new(64 << 20, 0).unwrap(),
        )
    }

    #[test]
    fn rejects_non_elf_and_wrong_class() {
        let (mut m, l) = mem();
        assert_eq!(
            load(b"#!/bin/sh\n", &mut m, &l).unwrap_err(),
            ElfError::NotElf
        );
        let mut e32 = vec![0x7f, b'E', b'L', b'F', 1, 1, 1];
        e32.resize(64, 0);
        assert_eq!(load(&e32, &mut m, &l).unwrap_err(), ElfError::Elf32);
        let mut arm = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
        arm.resize(64, 0);
        arm[18] = 183;
        assert!(matches!(
            load(&arm, &mut m, &l).unwrap_err(),
            ElfError::WrongMachine(_)
        ));
        assert!(matches!(
            load(b"\x7fELF\x02\x01", &mut m, &l).unwrap_err(),
            ElfError::Malformed(_)
        ));
    }

    #[test]
    fn truncated_header_tables_are_named() {
        let (mut m, l) = mem();
        let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
        e.resize(64, 0);
        e[18] = 62; // EM_X86_64
        e[0x20] = 64; // e_phoff
        e[0x36] = 56; // e_phentsize
        e[0x38] = 2; // e_phnum
        let err = load(&e, &mut m, &l).unwrap_err().to_string();
        assert!(
            err.contains("64 bytes long but its program headers end at byte 176"),
            "{err}"
        );
        e[0x36] = 0;
        let err = load(&e, &mut m, &l).unwrap_err().to_string();
        assert!(err.contains("entry size is 0, not 56"), "{err}");
        e[0x36] = 56;
        e.resize(176, 0);
        e[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes()); // e_shoff
        e[0x3A] = 64;
        e[0x3C] = 3;
        let err = load(&e, &mut m, &l).unwrap_err().to_string();
        assert!(err.contains("its section headers end"), "{err}");
    }

    #[test]
    fn a_description_survives_a_snapshot_and_bad_ones_are_refused() {
        let e = LoadedElf {
            entry: 0x401000,
            bias: 7,
            phdr: 0x400040,
            phnum: 3,
            end: 0x500000,
            image_bytes: 0x100000,
            kind: BinaryType::StaticPie,
            segments: Vec::new(),
            symbols: Symbols::new(vec![(0x1000, 0x10, "a".into()), (0x2000, 0, "b".into())]),
            raw_phdrs: vec![1, 2, 3],
        };
        let mut w = crate::snapcodec::Writer::default();
        e.save(&mut w);
        let back = LoadedElf::restore(&mut crate::snapcodec::Reader::new(&w.0)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{e:?}"));
        assert_eq!(back.symbols.lookup(0x1008), Some(("a", 8)));
        // Symbols out of order, a binary type that does not exist, a cut-off record.
        let mut bad = e.clone();
        bad.symbols = Symbols::new(vec![(0x2000, 0, "b".into()), (0x1000, 0x10, "a".into())]);
        let mut w = crate::snapcodec::Writer::default();
        bad.save(&mut w);
        assert!(LoadedElf::restore(&mut crate::snapcodec::Reader::new(&w.0)).is_err());
        let mut w = crate::snapcodec::Writer::default();
        e.save(&mut w);
        let mut b = w.0.clone();
        b[48] = 9;
        assert!(LoadedElf::restore(&mut crate::snapcodec::Reader::new(&b)).is_err());
        assert!(LoadedElf::restore(&mut crate::snapcodec::Reader::new(&w.0[..70])).is_err());
    }

    #[test]
    fn symbols_lookup() {
        let s = Symbols::new(vec![(0x1000, 0x10, "a".into()), (0x2000, 0, "b".into())]);
        assert_eq!(s.lookup(0x1008), Some(("a", 8)));
        assert_eq!(s.lookup(0x1010), None);
        assert_eq!(s.lookup(0x2000), Some(("b", 0)));
        assert_eq!(s.lookup(0xfff), None);
    }
}
