//! `guest/kvm_api.h` agrees with this crate: every call number, handler index, I/O-area
//! constant, struct size and field offset becomes a `_Static_assert` in a C file that gcc
//! compiles against the header (about 0.1 s).

use edgevm_guest_abi::{func, io, nr, types::C_STRUCTS};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

fn asserts() -> String {
    let mut c = String::from("#include \"kvm_api.h\"\n");
    let mut check = |expr: String| {
        writeln!(c, "_Static_assert({expr}, \"{}\");", expr.replace('"', "'")).unwrap();
    };
    for (suffix, num, _) in nr::ALL {
        check(format!("EDGEVM_HYPERCALL_{suffix} == {num:#x}"));
    }
    for (name, v) in func::ALL {
        check(format!("{name} == {v:#x}"));
    }
    for (name, v) in io::HEADER_MACROS {
        check(format!("{name} == {v:#x}"));
    }
    for s in C_STRUCTS {
        check(format!("sizeof({}) == {}", s.c_name, s.size));
        for (field, off) in s.fields {
            check(format!("offsetof({}, {field}) == {off}", s.c_name));
        }
    }
    c
}

#[test]
fn kvm_api_h_matches_the_crate() {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest");
    let dir = std::env::temp_dir().join(format!("edgevm-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("check.c");
    let c = asserts();
    std::fs::write(&src, &c).unwrap();
    let out = Command::new("gcc")
        .args(["-std=gnu11", "-fsyntax-only", "-Wall", "-Werror", "-I"])
        .arg(&guest)
        .arg(&src)
        .output()
        .expect("gcc (guest/build.sh needs it too)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "kvm_api.h disagrees with edgevm-guest-abi:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every call, index and constant was checked (a new one cannot be forgotten here).
    let n = c.matches("_Static_assert").count();
    let fields: usize = C_STRUCTS.iter().map(|s| 1 + s.fields.len()).sum();
    assert_eq!(
        n,
        nr::ALL.len() + func::ALL.len() + io::HEADER_MACROS.len() + fields
    );
}

#[test]
fn a_wrong_number_fails_the_check() {
    // The check can fail: a deliberately wrong assertion does not compile.
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest");
    let dir = std::env::temp_dir().join(format!("edgevm-header-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("bad.c");
    std::fs::write(
        &src,
        "#include \"kvm_api.h\"\n_Static_assert(sizeof(struct kvm_request) == 80, \"x\");\n",
    )
    .unwrap();
    let st = Command::new("gcc")
        .args(["-std=gnu11", "-fsyntax-only", "-I"])
        .arg(&guest)
        .arg(&src)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!st.status.success());
}
