//! Replays the fuzz seeds and every kept fuzz finding (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`) through the fuzz target functions, and runs each target on a
//! few hundred pseudo-random inputs: the part of fuzzing that needs no cargo-fuzz, so CI runs
//! it on every change. A crash found by `cargo fuzz` (scripts/fuzz.sh) is fixed and its input
//! copied into `fuzz/regressions/<target>/`; this test then keeps it fixed.

use std::path::{Path, PathBuf};

use edgevm_fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every file of `fuzz/<kind>/<target>/`, sorted.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut n = 0;
    for (name, target) in TARGETS {
        for file in inputs(kind, name) {
            let data = std::fs::read(&file).unwrap();
            eprintln!("{name}: {}", file.display());
            target(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn seeds() {
    let n = replay("seeds");
    for (name, _) in TARGETS {
        assert!(!inputs("seeds", name).is_empty(), "no seeds for {name}");
    }
    assert!(n >= TARGETS.len());
}

#[test]
fn regressions() {
    replay("regressions");
}

/// Every target has a cargo-fuzz entry point with the same name.
#[test]
fn fuzz_targets_exist() {
    for (name, _) in TARGETS {
        let f = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            text.contains(&format!("edgevm_fuzz_targets::{name}(")),
            "{} does not call edgevm_fuzz_targets::{name}",
            f.display()
        );
    }
}

/// A few hundred mutations of each seed (bit flips, byte changes, truncation, splicing
/// random bytes): cheap, deterministic, and enough to catch gross regressions in CI.
#[test]
fn mutated_seeds() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (name, target) in TARGETS {
        let seeds: Vec<Vec<u8>> = inputs("seeds", name)
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        let rounds = if *name == "elf" { 60 } else { 150 };
        for _ in 0..rounds {
            let mut d = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 8 {
                if d.is_empty() {
                    d.push(next() as u8);
                    continue;
                }
                let i = (next() % d.len() as u64) as usize;
                match next() % 5 {
                    0 => d[i] ^= 1 << (next() % 8),
                    1 => d[i] = next() as u8,
                    2 => d.truncate(i),
                    3 => {
                        let n = next() % 16;
                        let extra: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                        d.splice(i..i, extra);
                    }
                    _ => d[i] = [0u8, 0xff, 0x7f, 0x80, b'\n', b':', b'"'][(next() % 7) as usize],
                }
            }
            target(&d);
        }
    }
}

#[test]
#[ignore]
fn time_targets() {
    for (name, target) in TARGETS {
        let seed = std::fs::read(&inputs("seeds", name)[0]).unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            target(&seed);
        }
        eprintln!("{name}: {:?} per input", t0.elapsed() / 20);
    }
}

#[test]
#[ignore]
fn time_file() {
    let f = std::env::var("FUZZ_FILE").unwrap();
    let t = std::env::var("FUZZ_TARGET").unwrap();
    let target = TARGETS.iter().find(|(n, _)| *n == t).unwrap().1;
    let data = std::fs::read(f).unwrap();
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        target(&data);
        eprintln!("{:?}", t0.elapsed());
    }
}
