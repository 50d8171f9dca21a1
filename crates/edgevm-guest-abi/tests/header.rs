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

/// A C string literal of `s`, every byte octal-escaped.
fn c_lit(s: &str) -> String {
    let mut o = String::from("\"");
    for b in s.bytes() {
        write!(o, "\\{b:03o}").unwrap();
    }
    o.push('"');
    o
}

#[test]
fn kvm_api_h_text_helpers_agree_with_the_crate() {
    use edgevm_guest_abi::text::{JSON_CASES, QUERY_CASES};
    // A native program (the helpers make no call to the host) prints each result as hex.
    let mut c = String::from(
        "#include \"kvm_api.h\"\n#include <stdio.h>\n\
         static void hex(const char *s, long n) { for (long i = 0; i < n; i++) printf(\"%02x\", (unsigned char)s[i]); printf(\"\\n\"); }\n\
         int main(void) {\n  char out[64]; long n;\n",
    );
    for (url, name, _) in QUERY_CASES {
        writeln!(
            c,
            "  n = url_query_param({}, {}, out, sizeof out); if (n < 0) printf(\"none\\n\"); else hex(out, n);",
            c_lit(url),
            c_lit(name)
        )
        .unwrap();
    }
    for (input, _) in JSON_CASES {
        writeln!(
            c,
            "  n = (long)json_escape({}, {}, out, sizeof out); hex(out, n);",
            c_lit(input),
            input.len()
        )
        .unwrap();
    }
    // Cut values: the length says so, the output is cut and terminated, never mid-escape.
    c.push_str(
        "  n = url_query_param(\"/p?x=abcdef\", \"x\", out, 4); printf(\"%ld %s\\n\", n, out);\n\
         n = (long)json_escape_str(\"ab\\ncd\", out, 4); printf(\"%ld %s\\n\", n, out);\n\
         n = (long)json_escape_str(\"ab\\n\", out, 4); printf(\"%ld %s\\n\", n, out);\n\
         return 0;\n}\n",
    );
    let mut want = String::new();
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for (_, _, v) in QUERY_CASES {
        match v {
            Some(v) => writeln!(want, "{}", hex(v)).unwrap(),
            None => want.push_str("none\n"),
        }
    }
    for (_, e) in JSON_CASES {
        writeln!(want, "{}", hex(e)).unwrap();
    }
    want.push_str("6 abc\n6 ab\n4 ab\n");

    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest");
    let dir = std::env::temp_dir().join(format!("edgevm-header-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (compiler, std, ext) in [("gcc", "-std=gnu11", "c"), ("g++", "-std=gnu++17", "cpp")] {
        let src = dir.join(format!("text.{ext}"));
        std::fs::write(&src, &c).unwrap();
        let exe = dir.join(format!("text-{ext}"));
        let out = Command::new(compiler)
            .args([std, "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(&guest)
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap_or_else(|e| panic!("{compiler}: {e}"));
        assert!(
            out.status.success(),
            "{compiler}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = Command::new(&exe).output().unwrap();
        assert!(run.status.success());
        assert_eq!(String::from_utf8_lossy(&run.stdout), want, "{compiler}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
