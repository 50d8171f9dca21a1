//! The CPU a guest is given, on whichever KVM runs the tests: how SYSCALL enters, which
//! XSAVE components XCR0 enables, and CPUID bits that agree with them (no feature advertised
//! whose state is not enabled, no protection keys or AMX). On kvm_pvm (the development
//! machines) guest user code runs on the host's CR4/XCR0 and CPUID; on hardware KVM
//! (scripts/hwkvm.sh runs these tests under emulated SVM) edgevm sets them, and a request must
//! restore an XSAVE image that agrees with them: on CPUs with protection keys every request
//! failed with #GP at the entry stub's XRSTOR until the image was fitted to XCR0.

use std::collections::BTreeMap;

use crate::common::*;
use crate::harness::*;

/// `key=value` words of cpu_probe's line.
fn facts(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| {
            let n = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            (k.to_owned(), n.unwrap_or_else(|_| panic!("{k}={v}")))
        })
        .collect()
}

/// What must hold for a guest on hardware KVM, given edgevm's XCR0 choice.
fn check_hardware_facts(f: &BTreeMap<String, u64>, what: &str) {
    let xcr0 = f["xcr0"];
    assert_eq!(f["xsave"], 1, "{what}: {f:?}");
    assert_eq!(f["osxsave"], 1, "{what}: CR4.OSXSAVE must be on: {f:?}");
    assert_eq!(xcr0 & 0x3, 0x3, "{what}: x87 and SSE always: {f:?}");
    assert_eq!(xcr0 & !0xe7, 0, "{what}: only x87/SSE/AVX/AVX-512: {f:?}");
    assert_eq!(
        f["cpuid_d_eax"], xcr0,
        "{what}: CPUID 0xD lists XCR0: {f:?}"
    );
    assert_eq!((f["pku"], f["ospke"], f["amx"]), (0, 0, 0), "{what}: {f:?}");
    if f["avx"] == 1 || f["avx2"] == 1 {
        assert_eq!(
            xcr0 & 0x4,
            0x4,
            "{what}: AVX advertised, AVX state on: {f:?}"
        );
    }
    if f["avx512f"] == 1 {
        assert_eq!(xcr0 & 0xe0, 0xe0, "{what}: AVX-512 advertised: {f:?}");
    } else {
        assert_eq!(xcr0 & 0xe0, 0, "{what}: {f:?}");
    }
}

#[test]
fn boot_cpu_state_agrees_with_what_edgevm_enabled() {
    let r = edgevm_run(&["run", "-v", guest("cpu_probe").to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.split_once("cpu: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no cpu line: {}", r.all()));
    let f = facts(line);
    let said = r
        .stderr
        .lines()
        .find_map(|l| l.split_once("system calls entered at "))
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| panic!("no CPU line from edgevm: {}", r.all()));
    if kvm_is_pvm() {
        assert_eq!(said, "CPL3, XCR0 not set (host's)", "{}", r.all());
    } else {
        assert_eq!(said, format!("CPL0, XCR0 {:#x}", f["xcr0"]), "{}", r.all());
        check_hardware_facts(&f, "main()");
    }
}

#[test]
fn requests_see_the_cpu_main_saw() {
    let s = Server::with_config(
        "cpu-probe",
        &format!(
            "{{ \"cpu\": {{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 2 }} }}",
            js(guest("cpu_probe").to_str().unwrap())
        ),
    );
    let first = s.ok("/cpu/");
    for _ in 0..3 {
        assert_eq!(s.ok("/cpu/"), first);
    }
    if !kvm_is_pvm() {
        check_hardware_facts(&facts(&first), "request");
    }
    s.stop();
}
