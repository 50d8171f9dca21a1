//! smp: `multiprocess`, `multiprocess_array` and `vcpuid()` from the Rust guest crate
//! (tests/all/smp.rs; the program's configuration sets "smp").
//!
//! GET .../sum?n=N: N vCPUs sum 0..65536 % 1000, each its slice by `vcpuid()`;
//! GET .../array: worker k squares element k.
use core::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use edgevm_guest as kvm;

const ITEMS: u64 = 1 << 16;
static N: AtomicU64 = AtomicU64::new(1);
static SUMS: [AtomicU64; 17] = [const { AtomicU64::new(0) }; 17];
static IDS: [AtomicI32; 17] = [const { AtomicI32::new(-1) }; 17];

extern "C" fn sum_slice(_arg: *mut c_void) {
    let id = kvm::vcpuid();
    let n = N.load(Ordering::SeqCst);
    let per = ITEMS / n;
    let s: u64 = (id as u64 * per..(id as u64 + 1) * per)
        .map(|i| i % 1000)
        .sum();
    SUMS[id as usize].store(s, Ordering::SeqCst);
    IDS[id as usize].store(id, Ordering::SeqCst);
}

#[repr(C)]
struct Elem {
    value: u64,
    vcpu: i32,
}

extern "C" fn square(p: *mut c_void, size: usize) {
    // SAFETY: the host passes &array[k] of the array below, one element per worker.
    let e = unsafe { &mut *(p as *mut Elem) };
    e.value = e.value * e.value + size as u64;
    e.vcpu = kvm::vcpuid();
}

fn on_get(url: &str, _arg: &str) {
    let text = if url.contains("/array") {
        let mut elems: Vec<Elem> = (0..4)
            .map(|i| Elem {
                value: i + 2,
                vcpu: -1,
            })
            .collect();
        let size = std::mem::size_of::<Elem>();
        let p = elems.as_mut_ptr() as *mut c_void;
        // SAFETY: `elems` outlives the workers (joined below), one element each.
        let r = unsafe { kvm::multiprocess_array(4, square, p, size) };
        square(p, size);
        let w = kvm::multiprocess_wait();
        let list: Vec<String> = elems
            .iter()
            .map(|e| format!("[{} {}]", e.value, e.vcpu))
            .collect();
        format!("rust r {r} w {w} {}", list.join(" "))
    } else {
        let n = url
            .split("n=")
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(4);
        N.store(n, Ordering::SeqCst);
        // SAFETY: the workers only read N and write the atomics above.
        let r = unsafe { kvm::multiprocess(n as usize, sum_slice, core::ptr::null_mut()) };
        sum_slice(core::ptr::null_mut());
        let w = kvm::multiprocess_wait();
        let sum: u64 = (0..n as usize)
            .map(|i| SUMS[i].load(Ordering::SeqCst))
            .sum();
        let ids: Vec<String> = (0..n as usize)
            .map(|i| IDS[i].load(Ordering::SeqCst).to_string())
            .collect();
        format!("rust r {r} w {w} sum {sum} ids {}", ids.join(" "))
    };
    kvm::backend_response_str(200, "text/plain", &text);
}

fn main() {
    kvm::on_get(on_get);
    kvm::wait_for_requests();
}
