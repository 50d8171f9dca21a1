//! The per-request reset, at the level of one request VM (edgevm-runtime over real KVM): pages
//! kept writable across requests ("hot pages") are reset like every other page, the ones that
//! come back unchanged are given up, and nothing a request wrote is seen by the next one —
//! in both reset modes; and reading memory nobody wrote does not grow the frozen image.

use std::sync::Arc;

use edgevm_runtime::request::GuestRequest;
use edgevm_runtime::request_vm::{RequestSettings, RequestVm};
use edgevm_runtime::vm::{BootOutcome, Frozen, MainVm, VmOptions};

use crate::common::{guest, require_kvm};

fn request_vm(keep_working_memory: bool) -> RequestVm {
    request_vm_of(keep_working_memory).1
}

fn request_vm_of(keep_working_memory: bool) -> (Arc<Frozen>, RequestVm) {
    require_kvm();
    let path = guest("hot_pages");
    let bytes = std::fs::read(&path).expect("read the hot_pages guest");
    let mut opts = VmOptions::new("hot_pages", path, bytes);
    opts.raw_output = true;
    let (vm, report) = MainVm::boot(opts).expect("boot hot_pages");
    assert_eq!(report.outcome, BootOutcome::Ready);
    let frozen = Arc::new(vm.freeze().expect("freeze"));
    let settings = RequestSettings {
        keep_working_memory,
        ..Default::default()
    };
    let vm = RequestVm::new(frozen.clone(), settings, None).expect("request VM");
    (frozen, vm)
}

/// GET `url`; the guest answers 500 "leak at page N" when an earlier request's write is
/// still there.
fn ok(vm: &mut RequestVm, url: &str) {
    let req = GuestRequest {
        method: "GET".into(),
        url: url.into(),
        ..Default::default()
    };
    let (r, _) = vm.handle(&req);
    let r = r.unwrap_or_else(|e| panic!("{url}: {}", e.message));
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (200, "ok"),
        "{url}"
    );
}

#[test]
fn hot_pages_are_reset_and_given_up_when_they_stop_changing() {
    for keep in [false, true] {
        let mut vm = request_vm(keep);
        // Written with new values by every request: kept writable from the second one on.
        for i in 1..=6 {
            ok(&mut vm, &format!("/?w=16&v={i}"));
        }
        let hot = vm.hot_pages();
        assert!(
            hot >= 16,
            "keep={keep}: {hot} hot pages after 6 writes of 16"
        );
        // Written with the image's own values: they come back unchanged (compared, not
        // copied) and the next request still sees the image.
        for _ in 0..4 {
            ok(&mut vm, "/?w=16&v=-1");
        }
        // Not written at all: kept pages are still reported dirty, come back unchanged, and
        // after a few requests are write-protected again.
        for _ in 0..6 {
            ok(&mut vm, "/?w=0");
        }
        let after = vm.hot_pages();
        assert!(
            after + 16 <= hot,
            "keep={keep}: {after} hot pages left of {hot} after 6 requests not writing them"
        );
        // Written again (more pages, other values): reset right, hot again.
        for i in 0..6 {
            ok(&mut vm, &format!("/?w=32&v={}", 100 + i));
        }
        assert!(vm.hot_pages() >= 32, "keep={keep}: {}", vm.hot_pages());
        // A request that writes nothing sees the image everywhere (checked by the guest).
        ok(&mut vm, "/?w=0");
        ok(&mut vm, "/?w=0");
    }
}

#[test]
fn reading_never_written_memory_does_not_grow_the_frozen_image() {
    for keep in [false, true] {
        let (frozen, mut vm) = request_vm_of(keep);
        let before = frozen.image.allocated_bytes();
        // 4096 pages (16 MiB) of a static array nobody writes, read by every request.
        for _ in 0..3 {
            ok(&mut vm, "/?r=4096");
        }
        ok(&mut vm, "/?w=8&v=7&r=4096");
        ok(&mut vm, "/?r=4096");
        let grown = frozen.image.allocated_bytes().saturating_sub(before);
        assert!(
            grown < 1 << 20,
            "keep={keep}: the frozen image grew by {} KiB while requests read 16 MiB nobody wrote",
            grown >> 10
        );
    }
}
