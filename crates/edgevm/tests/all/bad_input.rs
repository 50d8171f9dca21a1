//! `edgevm run` with bad programs: every one is refused with a clear message, exit status
//! 70 (or 1 for usage errors), and never a panic.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::run_cmd::p;

const PT_LOAD: u32 = 1;

/// Minimal ELF64 program-header access for patching copies of real guests.
struct Elf(Vec<u8>);

/// One program header: (index, p_type, p_offset, p_vaddr, p_filesz, p_memsz).
#[derive(Debug, Clone, Copy)]
struct Phdr {
    index: usize,
    p_type: u32,
    vaddr: u64,
    memsz: u64,
}

impl Elf {
    fn read(path: &Path) -> Elf {
        Elf(std::fs::read(path).unwrap())
    }
    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.0[off..off + 2].try_into().unwrap())
    }
    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.0[off..off + 4].try_into().unwrap())
    }
    fn u64_at(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.0[off..off + 8].try_into().unwrap())
    }
    fn set_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    /// File offset of program header `i`.
    fn phdr_off(&self, i: usize) -> usize {
        let phoff = self.u64_at(0x20) as usize;
        let phentsize = self.u16_at(0x36) as usize;
        assert_eq!(phentsize, 56, "not an ELF64 program header table");
        phoff + i * phentsize
    }
    fn phdrs(&self) -> Vec<Phdr> {
        (0..self.u16_at(0x38) as usize)
            .map(|i| {
                let o = self.phdr_off(i);
                Phdr {
                    index: i,
                    p_type: self.u32_at(o),
                    vaddr: self.u64_at(o + 16),
                    memsz: self.u64_at(o + 40),
                }
            })
            .collect()
    }
    fn loads(&self) -> Vec<Phdr> {
        self.phdrs()
            .into_iter()
            .filter(|p| p.p_type == PT_LOAD)
            .collect()
    }
    /// Move a segment: p_vaddr and p_paddr.
    fn set_vaddr(&mut self, index: usize, vaddr: u64) {
        let o = self.phdr_off(index);
        self.set_u64(o + 16, vaddr);
        self.set_u64(o + 24, vaddr);
    }
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let f = dir.join(name);
        std::fs::write(&f, &self.0).unwrap();
        f
    }
}

/// Run a bad program; it must fail with status 70 and a message containing every `expect`.
fn refused(file: &Path, expect: &[&str]) -> String {
    let r = edgevm_run(&["run", p(file)]);
    assert!(!r.stderr.contains("panicked"), "{}", r.all());
    assert_eq!(r.code(), Some(70), "{}", r.all());
    assert!(
        r.stdout.is_empty(),
        "the program must not run:\n{}",
        r.all()
    );
    for e in expect {
        assert!(r.stderr.contains(e), "'{e}' missing:\n{}", r.all());
    }
    r.stderr
}

#[test]
fn missing_file() {
    let d = scratch("bad_missing");
    let f = d.join("no-such-program");
    let r = edgevm_run(&["run", p(&f)]);
    assert!(!r.stderr.contains("panicked"), "{}", r.all());
    assert_ne!(r.code(), Some(0), "{}", r.all());
    assert!(r.stderr.contains("no-such-program"), "{}", r.all());
    assert!(r.stderr.contains("No such file"), "{}", r.all());
}

#[test]
fn not_an_elf_file() {
    let d = scratch("bad_text");
    let f = d.join("script.sh");
    std::fs::write(&f, "#!/bin/sh\necho hello\n").unwrap();
    refused(&f, &["not an ELF file"]);
    let f = d.join("empty");
    std::fs::write(&f, "").unwrap();
    refused(&f, &["not an ELF file"]);
}

#[test]
fn elf_32_bit() {
    let d = scratch("bad_elf32");
    let mut e = Elf::read(&guest("hello"));
    e.0[4] = 1; // EI_CLASS = ELFCLASS32
    refused(&e.write(&d, "hello32"), &["32-bit", "64-bit x86_64"]);
}

#[test]
fn elf_for_another_machine() {
    let d = scratch("bad_machine");
    let mut e = Elf::read(&guest("hello"));
    e.set_u16(18, 183); // e_machine = EM_AARCH64
    refused(&e.write(&d, "hello_arm"), &["AArch64", "x86_64"]);
    e.set_u16(18, 243); // EM_RISCV
    refused(&e.write(&d, "hello_riscv"), &["RISC-V"]);
}

#[test]
fn elf_truncated() {
    let d = scratch("bad_truncated");
    let full = std::fs::read(guest("hello")).unwrap();
    for (n, expect) in [
        (
            3000usize,
            "truncated: the file is 3000 bytes long but its section headers end",
        ),
        (40, "file is only 40 bytes long, shorter than an ELF header"),
        (5, "file is only 5 bytes long"),
        (
            64 + 56 * 2,
            "the file is 176 bytes long but its program headers end",
        ),
    ] {
        let f = d.join(format!("hello_{n}"));
        std::fs::write(&f, &full[..n]).unwrap();
        refused(&f, &["truncated or malformed ELF", expect]);
    }
    // Big enough for every header, but a segment's bytes are missing.
    let e = Elf::read(&guest("hello"));
    let last = e.loads().last().copied().unwrap();
    let o = e.phdr_off(last.index);
    let end = (e.u64_at(o + 8) + e.u64_at(o + 32)) as usize;
    let f = d.join("hello_cut");
    std::fs::write(&f, &full[..end - 16]).unwrap();
    refused(&f, &["truncated"]);
}

#[test]
fn elf_header_fields_are_checked() {
    let d = scratch("bad_header_fields");
    let mut e = Elf::read(&guest("hello"));
    e.set_u16(0x36, 0); // e_phentsize
    refused(
        &e.write(&d, "phentsize0"),
        &["program header entry size is 0"],
    );
    let mut e = Elf::read(&guest("hello"));
    e.set_u16(0x38, 0); // e_phnum: nothing to load
    refused(&e.write(&d, "phnum0"), &["no loadable segment"]);
    let mut e = Elf::read(&guest("hello"));
    e.set_u16(0x10, 1); // e_type = ET_REL
    refused(&e.write(&d, "rel"), &["ELF type 1 cannot be run"]);
    let mut e = Elf::read(&guest("hello"));
    let last = e.loads().last().copied().unwrap();
    let o = e.phdr_off(last.index);
    e.set_u64(o + 32, 1 << 40); // p_filesz > p_memsz
    refused(&e.write(&d, "filesz"), &["larger than memory size"]);
}

#[test]
fn segment_outside_the_address_space() {
    let d = scratch("bad_outside");
    for (i, vaddr) in [
        (0usize, 0x1000u64),
        (0, 0x10000), // edgevm's page tables
        (3, 0x20000), // the I/O area (guest ABI)
        (0, 0xff000), // starts in the I/O area, ends in user memory
        (0, 0x7fff_0000_0000),
        (3, 0x7fff_0000_0000),
    ] {
        let mut e = Elf::read(&guest("hello"));
        let seg = e.loads()[i];
        e.set_vaddr(seg.index, vaddr);
        let f = e.write(&d, &format!("hello_{i}_{vaddr:x}"));
        let mut want = vec![
            format!("segment at {vaddr:#x}"),
            "outside the usable address space".to_string(),
        ];
        if vaddr < 0x100000 {
            // The limit is named, with how to link above it.
            want.push("starts below 0x100000, the lowest load address".into());
            want.push("-Ttext-segment=0x100000".into());
        }
        refused(&f, &want.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[test]
fn overlapping_segments() {
    let d = scratch("bad_overlap");
    let mut e = Elf::read(&guest("hello"));
    let loads = e.loads();
    assert!(loads.len() >= 2);
    let (first, second) = (loads[0], loads[1]);
    e.set_vaddr(second.index, first.vaddr);
    let f = e.write(&d, "hello_overlap");
    let err = refused(&f, &["segments overlap"]);
    assert!(
        err.contains(&format!(
            "{:#x}..{:#x}",
            first.vaddr,
            first.vaddr + first.memsz
        )),
        "{err}"
    );
}

#[test]
fn dynamically_linked_program_without_its_libraries() {
    // Any dynamically linked x86_64 program of the host will do: it boots through the host's
    // ld.so, which finds no libc (nothing is in allowed_paths) and says so.
    let f = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|f| Path::new(f).exists())
        .expect("/bin/true");
    let r = edgevm_run(&["run", f]);
    assert_eq!(r.code(), Some(127), "{}", r.all());
    assert!(
        r.all()
            .contains("libc.so.6: cannot open shared object file"),
        "{}",
        r.all()
    );
}

#[test]
fn usage_errors_exit_1() {
    let r = edgevm_run(&["run"]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.stderr.contains("no program given"), "{}", r.all());
    let r = edgevm_run(&["run", "--max-boot-time", "soon", p(&guest("hello"))]);
    assert_ne!(r.code(), Some(0), "{}", r.all());
    assert!(!r.stderr.contains("panicked"), "{}", r.all());
    assert!(r.stderr.contains("--max-boot-time"), "{}", r.all());
}
