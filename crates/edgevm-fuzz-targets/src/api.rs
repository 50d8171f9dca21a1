//! Fuzz target `api`: the host side of the request API.
//!
//! Hypercall dispatch itself (`Invoker::api_call`, `storage_callv`'s virtbuffer parsing,
//! `backend_response`'s extra-headers parsing) lives in edgevm-runtime's request_vm.rs and is
//! only reachable with a KVM vCPU; what it calls with guest-controlled data is here: the I/O
//! area functions of `edgevm_abi::io` (request writing, `http_append`/`http_set`/`http_unset`/
//! `http_find`, the response header read-back that validates whatever the guest left in the
//! area, `validate_field`) and the crash-report decoder. The hostile guest programs of
//! tests/all/hostile.rs and guest/tests/api_fuzz.c drive the real hypercalls in KVM.

use edgevm_abi::cpu::write_system_tables;
use edgevm_abi::crash::decode_exception;
use edgevm_abi::elf::Symbols;
use edgevm_abi::io::{self, RequestData, Where};
use edgevm_abi::layout::{Layout, IO_AREA};
use edgevm_kvm::{kvm_regs, GuestMemory};

use crate::input::Input;
use crate::syscalls::FakeCpu;

const MEM: u64 = 32 << 20;

/// Write a random request into the I/O area, let the input corrupt the area (as a guest
/// may), then run a random sequence of header operations and response read-backs. Checked:
/// every response header handed back passes `validate_field`, `find` returns a field with the
/// asked key, and no host write lands outside the I/O area.
pub fn api(data: &[u8]) {
    let mut inp = Input::new(data);
    let layout = Layout::new(MEM, 0).expect("layout");
    let mut mem = GuestMemory::new_shared(MEM as usize).expect("guest memory");
    write_system_tables(&mut mem, &layout, false).expect("system tables");
    mem.set_protected(layout.protected().to_vec());

    let headers: Vec<(String, String)> = (0..inp.u8() % 8)
        .map(|_| (inp.string(40), inp.string(80)))
        .collect();
    let (method, url, arg, ct) = (
        inp.string(16),
        inp.string(200),
        inp.string(16),
        inp.string(40),
    );
    let req = RequestData {
        method: &method,
        url: &url,
        arg: &arg,
        content_type: &ct,
        headers: &headers,
        body: (inp.u64(), inp.u64()),
        warmup: inp.bool(),
        prng: [1, 2],
    };
    let _ = io::write_request(&mut mem, &req);

    let before = crate::supervisor_bytes(&mem, &layout);

    let mut ops = 0;
    while !inp.is_empty() && ops < 100 {
        ops += 1;
        let where_ = if inp.bool() { Where::Resp } else { Where::Req };
        match inp.u8() % 9 {
            0 => {
                // The guest scribbles on the area: header fields, counts, table entries.
                let off = inp.pick(&[0u64, 8, 12, 16, 20, 0x1000, 0x3000, 0x3800, 0x4000])
                    + inp.u16() as u64 % 0x100;
                let bytes = inp.chunk(64);
                let _ = mem.write(IO_AREA + off, bytes);
            }
            1 => {
                let f = inp.chunk(300);
                if io::append(&mut mem, where_, f, "http_append").is_ok() {
                    assert!(io::validate_field(f).is_ok());
                }
            }
            2 => {
                let f = inp.chunk(300);
                let _ = io::set(&mut mem, where_, f);
            }
            3 => {
                let k = inp.chunk(40);
                let _ = io::unset(&mut mem, where_, k);
            }
            4 => {
                let k = inp.chunk(40);
                if let Some(f) = io::find(&mem, where_, k) {
                    assert!(
                        f.len() >= k.len() && f[..k.len()].eq_ignore_ascii_case(k),
                        "find({k:?}) -> {f:?}"
                    );
                }
            }
            5 => {
                if let Ok(h) = io::response_headers(&mem) {
                    for (k, v) in h {
                        let field = format!("{k}: {v}");
                        // Lossy UTF-8 conversion may only replace bytes, never add CR/LF/NUL.
                        assert!(
                            !field.contains(['\r', '\n', '\0']) && !k.is_empty(),
                            "{field:?}"
                        );
                    }
                }
            }
            6 => {
                let _ = io::validate_field(inp.chunk(300));
            }
            7 => {
                let _ = io::fields(&mem, where_);
            }
            _ => {
                // A crash report from a random exception frame.
                let regs = kvm_regs {
                    rsp: inp.u64() % (MEM + 64),
                    rdx: inp.u64(),
                    ..Default::default()
                };
                // The fault address as the exception stub would leave it.
                let mut cpu = FakeCpu {
                    regs,
                    cr2: regs.rdx,
                    ..Default::default()
                };
                if let Ok(r) = decode_exception(&mut cpu, &mem, &Symbols::default(), &layout) {
                    let _ = r.to_string();
                }
            }
        }
    }
    // The I/O area ends where the page directories begin: a write past its end lands there.
    assert!(
        before == crate::supervisor_bytes(&mem, &layout),
        "a header operation wrote outside the I/O area"
    );
}
