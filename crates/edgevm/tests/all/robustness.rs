//! Mutation tests of the parsers that take untrusted input: ELF files (programs come from
//! users and URIs) and configuration text. Thousands of corrupted inputs must each give an
//! error or a loaded program — never a panic.

use edgevm_abi::elf;
use edgevm_abi::layout::Layout;
use edgevm_config::Config;
use edgevm_kvm::GuestMemory;

use crate::common::{guest, Rng};

fn mutate(rng: &mut Rng, base: &[u8], hot: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        // Mostly hit the headers (where the parser looks), sometimes anywhere.
        let span = if rng.below(4) == 0 {
            v.len()
        } else {
            hot.min(v.len())
        };
        let at = rng.below(span);
        match rng.below(4) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = rng.next() as u8,
            2 => {
                let w = (rng.next() as u32).to_le_bytes();
                let end = (at + 4).min(v.len());
                v[at..end].copy_from_slice(&w[..end - at]);
            }
            _ => v.truncate(at.max(1)),
        }
    }
    v
}

#[test]
fn corrupted_elf_files_never_panic() {
    let base = std::fs::read(guest("hello_musl")).unwrap();
    let pie = std::fs::read(guest("hello_pie")).unwrap();
    let layout = Layout::new(64 << 20, 0).unwrap();
    let mut mem = GuestMemory::new_shared(64 << 20).unwrap();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..3000 {
        let src = if i % 3 == 0 { &pie } else { &base };
        let bytes = mutate(&mut rng, src, 4096);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            elf::load(&bytes, &mut mem, &layout).map(|_| ())
        }));
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
            Err(_) => panic!("elf::load panicked on mutation {i}"),
        }
    }
    assert!(
        refused > 100 && ok + refused == 3000,
        "ok {ok} refused {refused}"
    );
}

#[test]
fn corrupted_configs_never_panic() {
    let base = br#"{
  // a group
  "g": { "concurrency": 4, "max_memory": 64, "max_request_time": 2.5,
         "environment": ["A=1"], "remapping": { "heap": ["0x100000000", 16] } },
  /* programs */
  "p": { "group": "g", "filename": "/tmp/p", "main_arguments": ["x"],
         "warmup": { "num_requests": 2, "url": "/w", "headers": ["Host: x"] } },
  "q": { "uri": "https://example.com/q.tar.xz", "filename": "/tmp/q", "storage": true,
         "req_mem_limit_after_reset": 16, "allowed_paths": [] }
}"#;
    let mut rng = Rng(0xC0FF_EE00_0000_0042);
    for i in 0..3000 {
        let bytes = mutate(&mut rng, base, base.len());
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let r = std::panic::catch_unwind(|| {
            Config::from_str(&text, "fuzz.json").map(|c| c.render_check())
        });
        assert!(
            r.is_ok(),
            "Config::from_str panicked on mutation {i}:\n{text}"
        );
    }
}
