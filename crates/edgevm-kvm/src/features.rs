//! Which XSAVE state components (XCR0) and CPUID feature bits a guest is given, and how an
//! XSAVE image is made restorable under that XCR0. Pure functions over CPUID entries and
//! image bytes; docs/DESIGN.md ("Guest CPU state") gives the reasons.
//!
//! The choice, made once from what KVM supports:
//! * x87 and SSE always; AVX where supported; AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM: all three
//!   or none) where supported, so a program sees on hardware KVM what it sees on kvm_pvm on the
//!   same host (there CPL3 code runs on the host's own XCR0). Its state (2,688 bytes in the
//!   standard format) fits the 4 KiB entry image.
//! * Never PKRU: guest page tables use protection key 0 only and CR4.PKE stays clear, so the
//!   CPUID PKU bit is hidden. KVM still reports PKRU in `KVM_GET_XSAVE` images on CPUs with
//!   protection keys; [`fit_xsave_image`] drops it (an XRSTOR of a component XCR0 does not
//!   enable raises #GP: every request failed that way on PKU hosts before).
//! * Never AMX tiles (8 KiB of state that does not fit the entry image, and XFD-managed), nor
//!   MPX (deprecated) or supervisor components: their CPUID bits are hidden.

use kvm_bindings::kvm_cpuid_entry2;

/// XCR0 bit of the x87 state.
pub const XFEATURE_X87: u64 = 1 << 0;
/// XCR0 bit of the SSE state (XMM registers, MXCSR).
pub const XFEATURE_SSE: u64 = 1 << 1;
/// XCR0 bit of the AVX state (YMM upper halves).
pub const XFEATURE_AVX: u64 = 1 << 2;
/// XCR0 bits of the AVX-512 state: opmask, ZMM_Hi256, Hi16_ZMM.
pub const XFEATURE_AVX512: u64 = 0b111 << 5;
/// XCR0 bit of the PKRU state (protection keys).
pub const XFEATURE_PKRU: u64 = 1 << 9;

/// Offset of XSTATE_BV in an XSAVE image (the header follows the 512-byte legacy area).
const XSTATE_BV: usize = 512;
/// Offset of XCOMP_BV; its bit 63 marks the compacted format.
const XCOMP_BV: usize = 520;

/// The XCR0 edgevm sets for a guest, given the components KVM supports (CPUID 0xD.0 EDX:EAX).
pub fn guest_xcr0(supported: u64) -> u64 {
    let mut x = XFEATURE_X87 | (supported & XFEATURE_SSE);
    if x & XFEATURE_SSE != 0 && supported & XFEATURE_AVX != 0 {
        x |= XFEATURE_AVX;
        if supported & XFEATURE_AVX512 == XFEATURE_AVX512 {
            x |= XFEATURE_AVX512;
        }
    }
    x
}

/// Make a standard-format XSAVE image restorable by an XRSTOR under `xcr0`: XSTATE_BV keeps
/// only enabled components (a disabled one, such as PKRU, would raise #GP). Components cleared
/// from XSTATE_BV are put in their initial state by the XRSTOR. Returns false for an image
/// XRSTOR cannot take as it stands (too short, or compacted: the caller falls back to
/// FXSAVE).
pub fn fit_xsave_image(img: &mut [u8], xcr0: u64) -> bool {
    if img.len() < 576 {
        return false;
    }
    let read =
        |img: &[u8], at: usize| u64::from_le_bytes(img[at..at + 8].try_into().expect("8 bytes"));
    if read(img, XCOMP_BV) & (1 << 63) != 0 {
        return false;
    }
    let bv = read(img, XSTATE_BV) & xcr0;
    img[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    true
}

/// The supported components KVM reports (CPUID 0xD.0 EDX:EAX), if it reports XSAVE at all
/// (CPUID 1 ECX.XSAVE).
pub fn supported_xcr0(entries: &[kvm_cpuid_entry2]) -> Option<u64> {
    let l1 = entries.iter().find(|e| e.function == 1)?;
    if l1.ecx & (1 << 26) == 0 {
        return None;
    }
    let d = entries.iter().find(|e| e.function == 0xD && e.index == 0)?;
    Some(u64::from(d.eax) | (u64::from(d.edx) << 32))
}

/// CPUID 7.0 EBX bits of AVX-512 (F, DQ, IFMA, PF, ER, CD, BW, VL).
const L7_EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
/// CPUID 7.0 ECX bits of AVX-512 (VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ).
const L7_ECX_AVX512: u32 = (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14);
/// CPUID 7.0 ECX bits of protection keys (PKU, OSPKE).
const L7_ECX_PKU: u32 = (1 << 3) | (1 << 4);
/// CPUID 7.0 EDX bits of AVX-512 (4VNNIW, 4FMAPS, VP2INTERSECT, FP16).
const L7_EDX_AVX512: u32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23);
/// CPUID 7.0 EDX bits of AMX (BF16, TILE, INT8).
const L7_EDX_AMX: u32 = (1 << 22) | (1 << 24) | (1 << 25);
/// CPUID 7.1 EAX bit of AVX512_BF16.
const L71_EAX_AVX512_BF16: u32 = 1 << 5;
/// CPUID 1 ECX bits that need the AVX state (FMA, AVX, F16C).
const L1_ECX_AVX: u32 = (1 << 12) | (1 << 28) | (1 << 29);
/// CPUID 7.0 EBX bit of AVX2.
const L7_EBX_AVX2: u32 = 1 << 5;

/// Make the CPUID a guest sees agree with `xcr0`: feature bits whose state is not enabled
/// (AVX-512 without its components, PKU, AMX) are cleared, and leaf 0xD lists exactly the
/// enabled components, so a program that checks CPUID (or only CPUID) never uses state the
/// entry stub does not restore.
pub fn fit_cpuid(entries: &mut [kvm_cpuid_entry2], xcr0: u64) {
    let avx = xcr0 & XFEATURE_AVX != 0;
    let avx512 = xcr0 & XFEATURE_AVX512 == XFEATURE_AVX512;
    let mut size = 576u32;
    for e in entries.iter() {
        if e.function == 0xD && (2..63).contains(&e.index) && xcr0 & (1 << e.index) != 0 {
            size = size.max(e.ebx + e.eax);
        }
    }
    for e in entries.iter_mut() {
        match (e.function, e.index) {
            (1, _) if !avx => e.ecx &= !L1_ECX_AVX,
            (7, 0) => {
                if !avx {
                    e.ebx &= !L7_EBX_AVX2;
                }
                if !avx512 {
                    e.ebx &= !L7_EBX_AVX512;
                    e.ecx &= !L7_ECX_AVX512;
                    e.edx &= !L7_EDX_AVX512;
                }
                e.ecx &= !L7_ECX_PKU;
                e.edx &= !L7_EDX_AMX;
            }
            (7, 1) if !avx512 => e.eax &= !L71_EAX_AVX512_BF16,
            (0xD, 0) => {
                e.eax = xcr0 as u32;
                e.edx = (xcr0 >> 32) as u32;
                e.ecx = size;
            }
            // A user component (ECX bit 0 clear) that is not enabled: not there.
            (0xD, i) if (2..63).contains(&i) && e.ecx & 1 == 0 && xcr0 & (1 << i) == 0 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    #[test]
    fn xcr0_choice() {
        assert_eq!(guest_xcr0(0x3), 0x3);
        assert_eq!(guest_xcr0(0x7), 0x7);
        // PKRU and MPX are never enabled.
        assert_eq!(guest_xcr0(0x207), 0x7);
        assert_eq!(guest_xcr0(0x21f), 0x7);
        // AVX-512 only as the full trio, and only with AVX.
        assert_eq!(guest_xcr0(0x2e7), 0xe7);
        assert_eq!(guest_xcr0(0x67), 0x7);
        assert_eq!(guest_xcr0(0xe3), 0x3);
        // AMX tiles (bits 17, 18) are never enabled.
        assert_eq!(guest_xcr0(0x602e7), 0xe7);
        // x87 is architecturally required.
        assert_eq!(guest_xcr0(0), 1);
    }

    /// What KVM_GET_XSAVE returned on a CPU with protection keys: PKRU (bit 9) in XSTATE_BV
    /// while XCR0 was 0x7. Restoring it as it stood raised #GP in every request.
    #[test]
    fn pkru_is_dropped_from_an_image() {
        let mut img = vec![0u8; 4096];
        img[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&0x207u64.to_le_bytes());
        img[2688..2692].copy_from_slice(&0x5555_5554u32.to_le_bytes());
        assert!(fit_xsave_image(&mut img, 0x7));
        assert_eq!(u64::from_le_bytes(img[512..520].try_into().unwrap()), 0x7);
        // Other bytes are left alone.
        assert_eq!(img[2688..2692], 0x5555_5554u32.to_le_bytes());
    }

    #[test]
    fn unusable_images_are_refused() {
        let mut short = vec![0u8; 512];
        assert!(!fit_xsave_image(&mut short, 0x7));
        let mut compacted = vec![0u8; 4096];
        compacted[XCOMP_BV..XCOMP_BV + 8].copy_from_slice(&(1u64 << 63 | 7).to_le_bytes());
        assert!(!fit_xsave_image(&mut compacted, 0x7));
    }

    #[test]
    fn supported_needs_xsave() {
        let with = [
            entry(1, 0, [0, 0, 1 << 26, 0]),
            entry(0xD, 0, [0x207, 0, 0, 0]),
        ];
        assert_eq!(supported_xcr0(&with), Some(0x207));
        let without = [entry(1, 0, [0, 0, 0, 0]), entry(0xD, 0, [0x207, 0, 0, 0])];
        assert_eq!(supported_xcr0(&without), None);
    }

    /// A Zen 3-like CPU (AVX2, PKU, no AVX-512) and an AVX-512 CPU with AMX.
    #[test]
    fn cpuid_agrees_with_xcr0() {
        let zen3 = || {
            vec![
                entry(1, 0, [0, 0, L1_ECX_AVX | (1 << 26), 0]),
                entry(7, 0, [0, L7_EBX_AVX2, L7_ECX_PKU, 0]),
                entry(0xD, 0, [0x207, 0x988, 0x988, 0]),
                entry(0xD, 2, [256, 576, 0, 0]),
                entry(0xD, 9, [8, 2432, 0, 0]),
            ]
        };
        let mut e = zen3();
        let x = guest_xcr0(supported_xcr0(&e).unwrap());
        fit_cpuid(&mut e, x);
        assert_eq!(x, 0x7);
        assert_eq!(e[0].ecx, L1_ECX_AVX | (1 << 26));
        assert_eq!(
            (e[1].ebx, e[1].ecx),
            (L7_EBX_AVX2, 0),
            "PKU hidden, AVX2 kept"
        );
        assert_eq!((e[2].eax, e[2].ecx, e[2].edx), (0x7, 832, 0));
        assert_eq!((e[3].eax, e[3].ebx), (256, 576), "AVX stays");
        assert_eq!((e[4].eax, e[4].ebx), (0, 0), "PKRU gone");

        let mut e = vec![
            entry(1, 0, [0, 0, L1_ECX_AVX | (1 << 26), 0]),
            entry(
                7,
                0,
                [0, L7_EBX_AVX2 | L7_EBX_AVX512, L7_ECX_AVX512, L7_EDX_AMX],
            ),
            entry(0xD, 0, [0x602e7, 0, 0, 0]),
            entry(0xD, 7, [1024, 1664, 0, 0]),
            entry(0xD, 18, [8192, 2816, 0, 0]),
        ];
        let x = guest_xcr0(supported_xcr0(&e).unwrap());
        fit_cpuid(&mut e, x);
        assert_eq!(x, 0xe7);
        assert_eq!(e[1].ebx, L7_EBX_AVX2 | L7_EBX_AVX512);
        assert_eq!((e[1].ecx, e[1].edx), (L7_ECX_AVX512, 0), "AMX hidden");
        assert_eq!((e[2].eax, e[2].ecx), (0xe7, 2688));
        assert_eq!(e[4].eax, 0, "tile data gone");

        // Without AVX at all, nothing that needs it is advertised.
        let mut e = zen3();
        fit_cpuid(&mut e, 0x3);
        assert_eq!(e[0].ecx, 1 << 26);
        assert_eq!(e[1].ebx, 0);
        assert_eq!(e[3].eax, 0);
    }
}
