//! Request-cycle and engine microbenchmarks (not a test), all in one run: one request through a
//! reused request VM (enter the handler, one `backend_response` exit, reset) for N dirtied
//! pages in both reset modes and for the `hello` example; the raw exit round trip (a bare
//! `OUT` loop, and K hypercalls inside a request VM); forking a request VM; program load+init;
//! program load to ready with 8 request VMs; host memory per request VM; and a native
//! copy-on-write baseline.
//!
//! ```text
//! cargo bench -p edgevm-runtime --bench request
//! ```
//!
//! `scripts/bench.sh` runs it as part of the one benchmark command. Guests: `bench_touch`
//! (guest/tests/bench_touch.c) and `example_hello` (guest/examples/hello.c), built by
//! `guest/build.sh` into `$EDGEVM_GUESTS` or `target/guests` when missing. `GET /?n=N` writes
//! one byte to each of N pages of a 16 MiB static array; `GET /?k=K` makes K `sys_is_debug()`
//! hypercalls. `EDGEVM_BENCH_CYCLES` (default 2000) sets the cycles per N and mode (N = 4096:
//! a twentieth of it), `EDGEVM_BENCH_K` (default 200) the hypercalls per request of the
//! in-VM raw-exit measurement, `EDGEVM_BENCH_JSON` a file to write the headline figures to
//! (read by scripts/bench.sh). Cycles run in blocks round-robin over the N values, so that
//! noise from other work on the machine spreads evenly. Results are printed as markdown
//! tables: min and median.

mod common;
use common::{guests, stats, us};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgevm_abi::layout;
use edgevm_kvm::{Exit, Vcpu};
use edgevm_runtime::request::GuestRequest;
use edgevm_runtime::request_vm::{RequestSettings, RequestVm};
use edgevm_runtime::vm::{BootOutcome, Frozen, MainVm, VmOptions};

const PAGE: usize = 4096;
const NS: [usize; 5] = [0, 1, 16, 256, 4096];
const BLOCK: usize = 50;

/// Cycles per block for N dirtied pages (4096 pages take 10-25 ms per cycle here).
fn block(n: usize) -> usize {
    if n >= 4096 {
        BLOCK / 20
    } else {
        BLOCK
    }
}

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
        self.one_expect(vm, req, b"ok");
    }

    fn one_expect(&mut self, vm: &mut RequestVm, req: &GuestRequest, body: &[u8]) {
        let t = Instant::now();
        let (r, st) = vm.handle(req);
        let total = t.elapsed();
        let resp = r.unwrap_or_else(|e| panic!("{}: {}", req.url, e.message));
        assert_eq!(resp.body, body);
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
    for w in 0..20 {
        for (i, r) in reqs.iter().enumerate() {
            if w < 2 || NS[i] < 4096 {
                Samples::default().one(&mut vm, r);
            }
        }
    }
    let mut touch: Vec<(usize, Samples)> = NS.iter().map(|&n| (n, Samples::default())).collect();
    for _ in 0..cycles.div_ceil(BLOCK) {
        for (i, r) in reqs.iter().enumerate() {
            for _ in 0..block(NS[i]) {
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

/// A guest binary and the options to boot it (guest output discarded).
fn options(dir: &std::path::Path, name: &str) -> VmOptions {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut o = VmOptions::new(name, path, bytes);
    o.raw_output = true;
    o.max_boot_time = Duration::from_secs(600);
    o
}

/// Boot to wait_for_requests() and freeze.
fn frozen(opts: VmOptions) -> Frozen {
    let name = opts.name.clone();
    let (vm, report) = MainVm::boot(opts).unwrap_or_else(|e| panic!("boot {name}: {e}"));
    assert_eq!(
        report.outcome,
        BootOutcome::Ready,
        "{name} did not wait for requests"
    );
    vm.freeze().expect("freeze")
}

/// The hello example's request cycle (`GET /`, "Hello World!\n") in both reset modes, and the
/// raw exit round trip, interleaved on one thread in blocks of 50 so that both see the same
/// noise: every sample is one cycle or one exit.
///
/// Raw exit: `out %eax,$0; jmp back` written over a loaded program's entry point, then
/// `Vcpu::run` (one KVM_RUN and one KVM_EXIT_IO each, registers via sync_regs).
fn hello_and_raw_exit(
    frozen: Arc<Frozen>,
    opts: VmOptions,
    cycles: usize,
) -> (Vec<f64>, [Samples; 2]) {
    let mut raw_vm = MainVm::load(opts).expect("load");
    // e7 00: out %eax,$0   eb fc: jmp -4 (back to the out)
    raw_vm
        .machine
        .mem
        .write_any_protection(raw_vm.elf.entry, &[0xe7, 0x00, 0xeb, 0xfc])
        .expect("patch entry");
    // Start right there (a loaded program would first run edgevm's start probe).
    let entry = raw_vm.elf.entry;
    raw_vm.machine.cpu.regs_mut().rip = entry;
    let mut exit = || {
        let t = Instant::now();
        match raw_vm.machine.cpu.run().expect("KVM_RUN") {
            Exit::IoOut { port, .. } if port == layout::API_PORT => {}
            other => panic!("unexpected exit {other:?}"),
        }
        us(t.elapsed())
    };
    let mut vms: Vec<RequestVm> = [false, true]
        .into_iter()
        .map(|keep| {
            let settings = RequestSettings {
                keep_working_memory: keep,
                ..Default::default()
            };
            RequestVm::new(frozen.clone(), settings, None).expect("request VM")
        })
        .collect();
    let req = get("/");
    for _ in 0..100 {
        exit();
        for vm in &mut vms {
            Samples::default().one_expect(vm, &req, b"Hello World!\n");
        }
    }
    let mut raw = Vec::with_capacity(cycles);
    let mut hello = [Samples::default(), Samples::default()];
    for _ in 0..cycles.div_ceil(BLOCK) {
        for _ in 0..BLOCK {
            raw.push(exit());
        }
        for (vm, s) in vms.iter_mut().zip(hello.iter_mut()) {
            for _ in 0..BLOCK {
                s.one_expect(vm, &req, b"Hello World!\n");
            }
        }
    }
    (raw, hello)
}

/// Fork (`RequestVm::new` from a frozen program) and drop times, µs.
fn fork_times(frozen: &Arc<Frozen>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut fork, mut drop_t) = (Vec::new(), Vec::new());
    // One VM stays alive meanwhile, as in a server: the kernel patches code (static keys,
    // ~0.4 ms here) when the number of vCPUs goes from 0 to 1 and back.
    let _other = if std::env::var("EDGEVM_BENCH_FORK_ALONE").is_ok() {
        None
    } else {
        Some(RequestVm::new(frozen.clone(), RequestSettings::default(), None).expect("fork"))
    };
    for i in 0..n + 3 {
        let t = Instant::now();
        let vm = RequestVm::new(frozen.clone(), RequestSettings::default(), None).expect("fork");
        let f = us(t.elapsed());
        let t = Instant::now();
        drop(vm);
        if i >= 3 {
            fork.push(f);
            drop_t.push(us(t.elapsed()));
        }
    }
    (fork, drop_t)
}

/// Load + init (boot to wait_for_requests(), then freeze), µs; and the exits of the boot.
fn load_init(opts: &VmOptions, n: usize) -> (Vec<f64>, u64) {
    let mut v = Vec::new();
    let mut exits = 0;
    for i in 0..n + 1 {
        let t = Instant::now();
        let (vm, report) = MainVm::boot(opts.clone()).expect("boot");
        let f = vm.freeze().expect("freeze");
        let el = us(t.elapsed());
        drop(f);
        exits = report.exits;
        if i > 0 {
            v.push(el);
        }
    }
    (v, exits)
}

/// Program load to ready with `c` request VMs, as the pool does it (pool.rs `boot`): a
/// low-priority thread makes the request VMs' KVM VMs (`VmShell`) while the program boots;
/// boot, freeze and fork the first VM on this thread, then the others on min(c - 1, CPUs)
/// threads. (first VM ready, all ready), µs from the start of the load.
fn load_to_ready(opts: &VmOptions, c: usize) -> (f64, f64) {
    let t0 = Instant::now();
    let shells = Arc::new(std::sync::Mutex::new(Vec::new()));
    let prep = {
        let sh = shells.clone();
        std::thread::spawn(move || {
            let tid = nix::unistd::gettid().as_raw() as libc::id_t;
            // SAFETY: plain system call on this thread's own id; failure is harmless.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) };
            for _ in 0..c {
                match edgevm_kvm::VmShell::new(true) {
                    Ok(v) => sh.lock().unwrap().push(v),
                    Err(_) => break,
                }
            }
        })
    };
    let take = {
        let sh = shells.clone();
        move || sh.lock().unwrap().pop()
    };
    let fork = |f: &Arc<Frozen>, shell| {
        RequestVm::new_in(f.clone(), RequestSettings::default(), None, shell).expect("fork")
    };
    let f = Arc::new(frozen(opts.clone()));
    let first = fork(&f, take());
    let first_t = us(t0.elapsed());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let threads: Vec<_> = (0..(c - 1).min(cpus))
        .map(|_| {
            let (f, next, take) = (f.clone(), next.clone(), take.clone());
            std::thread::spawn(move || {
                let mut vms = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < c {
                    vms.push(fork(&f, take()));
                }
                (us(t0.elapsed()), vms)
            })
        })
        .collect();
    let mut all = first_t;
    let mut keep = vec![first];
    for t in threads {
        let (done, vms) = t.join().unwrap();
        all = all.max(done);
        keep.extend(vms);
    }
    assert_eq!(keep.len(), c);
    prep.join().unwrap();
    (first_t, all)
}

/// Figures of /proc/self/smaps_rollup, KiB.
#[derive(Clone, Copy, Default, Debug)]
struct Mem {
    rss: f64,
    pss: f64,
    anon: f64,
}

fn mem_now() -> Mem {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let mut m = Mem::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v: f64 = v.parse().unwrap_or(0.0);
        match k {
            "Rss:" => m.rss = v,
            "Pss:" => m.pss = v,
            "Anonymous:" => m.anon = v,
            _ => {}
        }
    }
    m
}

fn per_vm(a: Mem, b: Mem, n: usize) -> Mem {
    let d = |x: f64, y: f64| (y - x) / n as f64;
    Mem {
        rss: d(a.rss, b.rss),
        pss: d(a.pss, b.pss),
        anon: d(a.anon, b.anon),
    }
}

/// Host memory per request VM (KiB), `n` VMs of `frozen` on this thread: just forked, after a
/// request that dirtied no page, after one that dirtied 256 pages (each in `keep` mode or not).
fn memory(frozen: &Arc<Frozen>, n: usize, keep: bool) -> [(&'static str, Mem); 3] {
    let settings = RequestSettings {
        keep_working_memory: keep,
        ..Default::default()
    };
    let m0 = mem_now();
    let mut vms: Vec<RequestVm> = (0..n)
        .map(|_| RequestVm::new(frozen.clone(), settings.clone(), None).expect("fork"))
        .collect();
    let m1 = mem_now();
    // (hello ignores the query and dirties nothing)
    let serve = |vms: &mut Vec<RequestVm>, url: &str| {
        for vm in vms.iter_mut() {
            let (r, _) = vm.handle(&get(url));
            r.unwrap_or_else(|e| panic!("{url}: {}", e.message));
        }
    };
    serve(&mut vms, "/?n=0");
    let m2 = mem_now();
    serve(&mut vms, "/?n=256");
    let m3 = mem_now();
    drop(vms);
    [
        ("idle, just forked", per_vm(m0, m1, n)),
        (
            "idle, after a request that dirtied 0 pages",
            per_vm(m0, m2, n),
        ),
        ("after a 256-page request", per_vm(m0, m3, n)),
    ]
}

/// Headline figures for scripts/bench.sh, as a flat JSON object of numbers.
struct Json(Vec<(String, f64)>);

impl Json {
    fn put(&mut self, k: impl Into<String>, v: f64) {
        self.0.push((k.into(), v));
    }
    fn write(&self, path: &str) {
        let body: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| {
                let v = if v.is_finite() { *v } else { -1.0 };
                format!("  \"{k}\": {v}")
            })
            .collect();
        std::fs::write(path, format!("{{\n{}\n}}\n", body.join(",\n")))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

fn main() {
    let cycles = env_num("EDGEVM_BENCH_CYCLES", 2000).max(BLOCK as u64) as usize;
    let k = env_num("EDGEVM_BENCH_K", 200).max(1);
    let dir = guests(&["bench_touch", "example_hello"]);
    let touch_opts = options(&dir, "bench_touch");
    let hello_opts = options(&dir, "example_hello");
    let frozen_touch = Arc::new(frozen(touch_opts.clone()));
    let frozen_hello = Arc::new(frozen(hello_opts.clone()));
    let mut json = Json(Vec::new());

    // Everything runs on its own thread, one after the other (VMs belong to their thread).
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("bench thread")
    }
    let step = |what: &str| eprintln!("request bench: {what}");
    if std::env::var("EDGEVM_BENCH_ONLY").as_deref() == Ok("fork") {
        // Profiling aid: only forks of the hello program.
        let f = frozen_hello.clone();
        let (fork, drop_t) = on_thread(move || fork_times(&f, 300));
        let ((fmin, fmed), (dmin, dmed)) = (stats(fork), stats(drop_t));
        println!("fork {fmin:.0}/{fmed:.0} µs, drop {dmin:.0}/{dmed:.0} µs");
        return;
    }
    if std::env::var("EDGEVM_BENCH_ONLY").as_deref() == Ok("ready") {
        // Profiling aid: only load + init and load to ready with concurrency 8.
        let (boot, _) = load_init(&hello_opts, 21);
        let ready: Vec<(f64, f64)> = (0..21).map(|_| load_to_ready(&hello_opts, 8)).collect();
        let (bmin, bmed) = stats(boot);
        let (fmin, fmed) = stats(ready.iter().map(|r| r.0).collect());
        let (amin, amed) = stats(ready.iter().map(|r| r.1).collect());
        println!(
            "boot {bmin:.0}/{bmed:.0} µs, first VM {fmin:.0}/{fmed:.0}, all 8 {amin:.0}/{amed:.0}"
        );
        return;
    }
    if std::env::var("EDGEVM_BENCH_ONLY").as_deref() == Ok("hello") {
        // Profiling aid (`perf record`): only the hello cycles and raw exits.
        let (f, o) = (frozen_hello.clone(), hello_opts.clone());
        let (raw, hello) = on_thread(move || hello_and_raw_exit(f, o, cycles));
        let (rmin, rmed) = stats(raw);
        let (hmin, hmed) = stats(hello[0].cycle.clone());
        let (_, reset) = stats(hello[0].reset.clone());
        println!("raw exit {rmin:.1}/{rmed:.1} µs, hello drop {hmin:.1}/{hmed:.1} µs (reset {reset:.1}), ratio {:.2}", hmed / rmed);
        return;
    }
    let mut results = Vec::new();
    for keep in [true, false] {
        step(if keep {
            "request cycles, keep"
        } else {
            "request cycles, drop"
        });
        let f = frozen_touch.clone();
        results.push(on_thread(move || run_mode(f, keep, cycles, k)));
    }
    step("hello cycles and raw exits");
    let (raw, hello) = {
        let (f, o) = (frozen_hello.clone(), hello_opts.clone());
        on_thread(move || hello_and_raw_exit(f, o, cycles))
    };
    step("fork");
    let (fork, fork_drop) = {
        let f = frozen_hello.clone();
        on_thread(move || fork_times(&f, 30))
    };
    let (fork_t, fork_t_drop) = {
        let f = frozen_touch.clone();
        on_thread(move || fork_times(&f, 30))
    };
    step("load + init");
    let (boot, boot_exits) = {
        let o = hello_opts.clone();
        on_thread(move || load_init(&o, 21))
    };
    step("load to ready");
    let ready: Vec<(f64, f64)> = (0..11).map(|_| load_to_ready(&hello_opts, 8)).collect();
    step("memory");
    let (mem_hello, mem_drop, mem_keep) = {
        let (ft, fh) = (frozen_touch.clone(), frozen_hello.clone());
        on_thread(move || {
            // Warm-up: the first VMs made on a thread also grow the allocator's heap.
            memory(&ft, 8, false);
            memory(&ft, 8, true);
            (
                memory(&fh, 8, false),
                memory(&ft, 8, false),
                memory(&ft, 8, true),
            )
        })
    };
    step("native copy-on-write");
    let native: Vec<(usize, (f64, f64))> = NS
        .iter()
        .map(|&n| (n, native_cow(n, cycles * block(n) / BLOCK)))
        .collect();

    let (raw_min, raw_med) = stats(raw);
    json.put("raw_exit_us", raw_med);
    json.put("raw_exit_min_us", raw_min);

    println!(
        "edgevm request-cycle benchmark: {cycles} cycles per row (N = 4096: {}), min / median µs, K = {k}\n",
        cycles * block(4096) / BLOCK
    );
    println!("| measurement | min | median | notes |");
    println!("|---|---:|---:|---|");
    println!(
        "| raw exit round trip (`OUT` → KVM_EXIT_IO → re-enter) | {raw_min:.1} | {raw_med:.1} | one exit per sample, interleaved with the hello cycles |"
    );
    for (keep, s) in [false, true].iter().zip(hello.iter()) {
        let (cmin, cmed) = stats(s.cycle.clone());
        let (_, reset) = stats(s.reset.clone());
        let mode = if *keep { "keep" } else { "drop (default)" };
        let exits = mean(&s.exits.iter().map(|&e| e as f64).collect::<Vec<_>>());
        println!(
            "| hello request cycle, {mode} | {cmin:.1} | {cmed:.1} | {exits:.3} exits/req, reset {reset:.1}; {:.2}× the raw exit (medians), {:.2}× (mins) |",
            cmed / raw_med,
            cmin / raw_min
        );
        let key = if *keep {
            "hello_cycle_keep"
        } else {
            "hello_cycle"
        };
        json.put(format!("{key}_us"), cmed);
        json.put(format!("{key}_min_us"), cmin);
        json.put(format!("{key}_exits"), exits);
    }
    let (fmin, fmed) = stats(fork.clone());
    let (_, fdrop) = stats(fork_drop);
    println!(
        "| fork a request VM (`RequestVm::new`, another VM alive as in a server), hello | {fmin:.1} | {fmed:.1} | drop {fdrop:.1} |"
    );
    let (ftmin, ftmed) = stats(fork_t.clone());
    let (_, ftdrop) = stats(fork_t_drop);
    println!(
        "| fork a request VM, bench_touch (16 MiB array) | {ftmin:.1} | {ftmed:.1} | drop {ftdrop:.1} |"
    );
    json.put("fork_us", fmed);
    let (bmin, bmed) = stats(boot);
    println!(
        "| hello load + init + freeze (`MainVm::boot`) | {bmin:.1} | {bmed:.1} | {boot_exits} exits during init |"
    );
    json.put("load_init_us", bmed);
    let (r1min, r1med) = stats(ready.iter().map(|r| r.0).collect());
    let (r8min, r8med) = stats(ready.iter().map(|r| r.1).collect());
    println!("| hello load to first request VM ready | {r1min:.1} | {r1med:.1} | 11 runs |");
    println!(
        "| hello load to ready, concurrency 8 (as the pool: KVM VMs made during the boot by a low-priority thread; first VM on the boot thread, 7 more on 2 threads) | {r8min:.1} | {r8med:.1} | 11 runs |"
    );
    json.put("ready1_us", r1med);
    json.put("ready8_us", r8med);
    json.put("ready8_min_us", r8min);
    json.put("load_init_min_us", bmin);
    json.put("fork_min_us", fmin);
    println!();

    println!("| reset mode | N pages | cycle min | cycle median | call median | reset median | exits/req | pages reset | full resets | ÷ raw exit (medians) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let mode = if r.keep {
            "keep (memcpy back)"
        } else {
            "drop (MADV_DONTNEED, default)"
        };
        for (n, s) in &r.touch {
            let (cmin, cmed) = stats(s.cycle.clone());
            let (_, call) = stats(s.call.clone());
            let (_, reset) = stats(s.reset.clone());
            let exits = mean(&s.exits.iter().map(|&e| e as f64).collect::<Vec<_>>());
            println!(
                "| {mode} | {n} | {cmin:.1} | {cmed:.1} | {call:.1} | {reset:.1} | {exits:.3} | {:.1} | {} | {:.2} |",
                mean(&s.pages.iter().map(|&p| p as f64).collect::<Vec<_>>()),
                s.full,
                cmed / raw_med
            );
            let key = if r.keep { "keep" } else { "drop" };
            json.put(format!("touch{n}_{key}_us"), cmed);
            json.put(format!("touch{n}_{key}_min_us"), cmin);
            json.put(format!("touch{n}_{key}_exits"), exits);
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
        json.put(format!("native_cow{n}_us"), med);
    }
    println!();
    let image_kib = |f: &Frozen| f.image.backing_bytes() as f64 / 1024.0;
    println!(
        "Host memory per request VM (8 VMs on one thread, deltas of /proc/self/smaps_rollup ÷ 8, KiB; Rss counts image pages the VM mapped (shared), Pss shares them out, Anonymous = the VM's private copies; KVM's kernel memory is not included; frozen image: hello {:.0} KiB, bench_touch {:.0} KiB):\n",
        image_kib(&frozen_hello),
        image_kib(&frozen_touch)
    );
    println!("| program, reset mode | state | Rss | Pss | Anonymous (private copies) |");
    println!("|---|---|---:|---:|---:|");
    for (what, key, rows) in [
        ("hello, drop", "hello", &mem_hello),
        ("bench_touch, drop", "touch_drop", &mem_drop),
        ("bench_touch, keep", "touch_keep", &mem_keep),
    ] {
        for (i, (state, m)) in rows.iter().enumerate() {
            println!(
                "| {what} | {state} | {:.0} | {:.0} | {:.0} |",
                m.rss, m.pss, m.anon
            );
            json.put(format!("mem_{key}_{i}_rss_kib"), m.rss);
            json.put(format!("mem_{key}_{i}_pss_kib"), m.pss);
            json.put(format!("mem_{key}_{i}_anon_kib"), m.anon);
        }
    }
    json.put("image_hello_kib", image_kib(&frozen_hello));
    json.put("image_touch_kib", image_kib(&frozen_touch));
    if let Ok(path) = std::env::var("EDGEVM_BENCH_JSON") {
        json.write(&path);
    }
}
