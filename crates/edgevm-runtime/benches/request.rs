//! Request-cycle benchmark (not a test): one request through a reused request VM (enter the
//! handler, one `backend_response` exit, reset) for N dirtied pages, in both reset modes, plus
//! the raw exit round trip inside a request VM and a native copy-on-write baseline, all in
//! the same run.
//!
//! ```text
//! cargo bench -p edgevm-runtime --bench request
//! ```
//!
//! Guest: `bench_touch` (guest/tests/bench_touch.c, built by `guest/build.sh` into
//! `$EDGEVM_GUESTS` or `target/guests` when missing). `GET /?n=N` writes one byte to each of N
//! pages of a static array; `GET /?k=K` makes K `sys_is_debug()` hypercalls.
//! `EDGEVM_BENCH_CYCLES` (default 2000) sets the cycles per N and mode, `EDGEVM_BENCH_K`
//! (default 200) the hypercalls per request of the raw-exit measurement. Cycles run in blocks
//! of 50, round-robin over the N values, so that noise from other work on the machine spreads
//! evenly. Results are printed as a markdown table: min and median per cycle.

mod common;
use common::{guests, stats, us};
use std::sync::Arc;
use std::time::Instant;

use edgevm_runtime::request::GuestRequest;
use edgevm_runtime::request_vm::{RequestSettings, RequestVm};
use edgevm_runtime::vm::{BootOutcome, Frozen, MainVm, VmOptions};

const PAGE: usize = 4096;
const NS: [usize; 4] = [0, 1, 16, 256];
const BLOCK: usize = 50;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn get(url: &str) -> GuestRequest {
    GuestRequest {
        method: "GET".into(),
        url: url.into(),
        ..Default::default()
    }
}

/// Samples of one request shape.
#[derive(Default)]
struct Samples {
    cycle: Vec<f64>,
    call: Vec<f64>,
    reset: Vec<f64>,
    exits: Vec<u64>,
    pages: Vec<usize>,
    full: usize,
}

impl Samples {
    fn one(&mut self, vm: &mut RequestVm, req: &GuestRequest) {
        let t = Instant::now();
        let (r, st) = vm.handle(req);
        let total = t.elapsed();
        let resp = r.unwrap_or_else(|e| panic!("{}: {}", req.url, e.message));
        assert_eq!(resp.body, b"ok");
        self.cycle.push(us(total));
        self.call.push(us(total.saturating_sub(st.reset_time)));
        self.reset.push(us(st.reset_time));
        self.exits.push(st.exits);
        self.pages.push(st.reset_pages);
        self.full += usize::from(st.full_reset);
    }
}

struct ModeResult {
    keep: bool,
    touch: Vec<(usize, Samples)>,
    k0: Samples,
    k: Samples,
}

fn run_mode(frozen: Arc<Frozen>, keep: bool, cycles: usize, k: u64) -> ModeResult {
    let settings = RequestSettings {
        keep_working_memory: keep,
        ..Default::default()
    };
    let mut vm = RequestVm::new(frozen, settings, None).expect("request VM");
    let reqs: Vec<GuestRequest> = NS.iter().map(|n| get(&format!("/?n={n}"))).collect();
    // Warm-up: the first requests after the fork pay for shadow page tables and first
    // copies (94-152 µs measured by the proof of concept).
    for _ in 0..20 {
        for r in &reqs {
            Samples::default().one(&mut vm, r);
        }
    }
    let mut touch: Vec<(usize, Samples)> = NS.iter().map(|&n| (n, Samples::default())).collect();
    for _ in 0..cycles.div_ceil(BLOCK) {
        for (i, r) in reqs.iter().enumerate() {
            for _ in 0..BLOCK {
                touch[i].1.one(&mut vm, r);
            }
        }
    }
    // Raw exit round trip inside the request VM: K hypercalls vs none.
    let (rk0, rk) = (get("/?k=0"), get(&format!("/?k={k}")));
    let (mut k0, mut kk) = (Samples::default(), Samples::default());
    let exit_cycles = (cycles / 10).max(20);
    for _ in 0..exit_cycles.div_ceil(10) {
        for _ in 0..10 {
            k0.one(&mut vm, &rk0);
        }
        for _ in 0..10 {
            kk.one(&mut vm, &rk);
        }
    }
    ModeResult {
        keep,
        touch,
        k0,
        k: kk,
    }
}

/// Native baseline: the same writes on a private (copy-on-write) mapping of a populated
/// memfd, then MADV_DONTNEED of the written pages: the host's own cost of a copy-on-write
/// fork touching N pages and being reset, without a VM.
fn native_cow(n: usize, cycles: usize) -> (f64, f64) {
    const SIZE: usize = 16 << 20;
    // SAFETY: plain syscalls on a fresh memfd and mapping owned by this function; every
    // access stays inside SIZE; failures are checked.
    unsafe {
        let fd = libc::memfd_create(c"bench".as_ptr(), 0);
        assert!(fd >= 0, "memfd_create");
        assert_eq!(libc::ftruncate(fd, SIZE as i64), 0);
        let shared = libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(shared, libc::MAP_FAILED);
        std::ptr::write_bytes(shared.cast::<u8>(), 1, SIZE);
        let p = libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            fd,
            0,
        )
        .cast::<u8>();
        assert_ne!(p.cast(), libc::MAP_FAILED);
        let mut v = Vec::with_capacity(cycles);
        for c in 0..cycles + 100 {
            let t = Instant::now();
            for i in 0..n {
                std::ptr::write_volatile(p.add(i * PAGE), c as u8);
            }
            if n > 0 {
                assert_eq!(libc::madvise(p.cast(), n * PAGE, libc::MADV_DONTNEED), 0);
            }
            if c >= 100 {
                v.push(us(t.elapsed()));
            }
        }
        libc::munmap(p.cast(), SIZE);
        libc::munmap(shared, SIZE);
        libc::close(fd);
        stats(v)
    }
}

fn mean<T: Copy + Into<f64>>(v: &[T]) -> f64 {
    v.iter().map(|&x| x.into()).sum::<f64>() / v.len().max(1) as f64
}

fn main() {
    let cycles = env_num("EDGEVM_BENCH_CYCLES", 2000).max(BLOCK as u64) as usize;
    let k = env_num("EDGEVM_BENCH_K", 200).max(1);
    let dir = guests(&["bench_touch"]);
    let path = dir.join("bench_touch");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut opts = VmOptions::new("bench_touch", path, bytes);
    opts.raw_output = true;
    let (vm, report) = MainVm::boot(opts).expect("boot bench_touch");
    assert_eq!(
        report.outcome,
        BootOutcome::Ready,
        "bench_touch did not wait for requests"
    );
    let frozen = Arc::new(vm.freeze().expect("freeze"));

    let mut results = Vec::new();
    for keep in [true, false] {
        let f = frozen.clone();
        let r = std::thread::spawn(move || run_mode(f, keep, cycles, k))
            .join()
            .expect("bench thread");
        results.push(r);
    }
    let native: Vec<(usize, (f64, f64))> = NS.iter().map(|&n| (n, native_cow(n, cycles))).collect();

    println!(
        "edgevm request-cycle benchmark: {cycles} cycles per row (min / median µs), K = {k}\n"
    );
    println!("| reset mode | N pages | cycle min | cycle median | call median | reset median | exits/req | pages reset | full resets |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let mode = if r.keep {
            "keep (memcpy back)"
        } else {
            "drop (MADV_DONTNEED)"
        };
        for (n, s) in &r.touch {
            let (cmin, cmed) = stats(s.cycle.clone());
            let (_, call) = stats(s.call.clone());
            let (_, reset) = stats(s.reset.clone());
            println!(
                "| {mode} | {n} | {cmin:.1} | {cmed:.1} | {call:.1} | {reset:.1} | {:.3} | {:.1} | {} |",
                mean(&s.exits.iter().map(|&e| e as f64).collect::<Vec<_>>()),
                mean(&s.pages.iter().map(|&p| p as f64).collect::<Vec<_>>()),
                s.full
            );
        }
    }
    println!();
    println!("| reset mode | raw exit in a request VM, min | median | exits/req K=0 → K |");
    println!("|---|---:|---:|---|");
    for r in &results {
        let (min0, med0) = stats(r.k0.cycle.clone());
        let (mink, medk) = stats(r.k.cycle.clone());
        let mode = if r.keep { "keep" } else { "drop" };
        println!(
            "| {mode} | {:.1} | {:.1} | {:.2} → {:.2} |",
            (mink - min0) / k as f64,
            (medk - med0) / k as f64,
            mean(&r.k0.exits.iter().map(|&e| e as f64).collect::<Vec<_>>()),
            mean(&r.k.exits.iter().map(|&e| e as f64).collect::<Vec<_>>()),
        );
    }
    println!();
    println!("| native CoW baseline: N pages | min | median |");
    println!("|---|---:|---:|");
    for (n, (min, med)) in native {
        println!("| {n} | {min:.2} | {med:.2} |");
    }
}
