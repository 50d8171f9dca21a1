//! Engine benchmark (not a test): program load + init time, cost per emulated system call,
//! the native system call for comparison, and a raw VM exit round trip.
//!
//! ```text
//! cargo bench -p edgevm-runtime --bench engine
//! ```
//!
//! Guests come from `$EDGEVM_GUESTS` or `target/guests` (built with `guest/build.sh` when
//! missing). `EDGEVM_BENCH_RUNS` (default 21) sets the repetitions of the short measurements,
//! `EDGEVM_BENCH_GETPID` (default 200000) the system calls per bench_getpid run. Guest
//! output is discarded (stdout is pointed at /dev/null while guests run). Results are
//! printed as a markdown table: min and median over the runs.

mod common;
use common::{guests, stats, us};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use edgevm_abi::layout;
use edgevm_kvm::{Exit, Vcpu};
use edgevm_runtime::vm::{BootOutcome, MainVm, VmOptions};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Guest output goes to /dev/null while the guard lives; the table goes to the real stdout.
struct Quiet {
    saved: i32,
}

impl Quiet {
    fn new() -> Quiet {
        // SAFETY: plain fd syscalls on fds this process owns; failures are checked.
        unsafe {
            let saved = libc::dup(1);
            assert!(saved >= 0, "dup(1)");
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            assert!(null >= 0, "open /dev/null");
            assert!(libc::dup2(null, 1) >= 0, "dup2");
            libc::close(null);
            Quiet { saved }
        }
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        // SAFETY: restores the fd saved in `new`.
        unsafe {
            libc::dup2(self.saved, 1);
            libc::close(self.saved);
        }
    }
}

/// The reference benchmark's guest shape: a static glibc program whose main() writes one
/// byte to each of 512 .bss pages. Compiled here (gcc -static -O2) into `dir`.
const TOUCH512_C: &str = r#"
static char pages[512][4096];
int main(void)
{
	for (int i = 0; i < 512; i++)
		((volatile char *)pages[i])[0] = 1;
	return 0;
}
"#;

fn build_touch512(dir: &Path) -> Option<PathBuf> {
    let out = dir.join("bench_touch512");
    let src = dir.join("bench_touch512.c");
    if std::fs::read_to_string(&src).ok().as_deref() == Some(TOUCH512_C) && out.exists() {
        return Some(out);
    }
    std::fs::write(&src, TOUCH512_C).ok()?;
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?;
    st.success().then_some(out)
}

struct Guest {
    name: String,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Guest {
    fn new(dir: &Path, name: &str) -> Guest {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Guest {
            name: name.into(),
            path,
            bytes,
        }
    }
    fn options(&self, args: &[&str]) -> VmOptions {
        let mut o = VmOptions::new(&self.name, self.path.clone(), self.bytes.clone());
        o.arguments = args.iter().map(|s| s.to_string()).collect();
        o.raw_output = true;
        o.max_boot_time = Duration::from_secs(600);
        o
    }
}

/// One boot: (load, init, total wall time, exits, syscalls).
struct Boot {
    load: Duration,
    init: Duration,
    total: Duration,
    exits: u64,
    syscalls: u64,
}

fn boot(g: &Guest, args: &[&str]) -> Boot {
    let opts = g.options(args);
    let t = Instant::now();
    let (vm, r) = MainVm::boot(opts).unwrap_or_else(|e| panic!("{}: {e}", g.name));
    assert_eq!(r.outcome, BootOutcome::Exited(0), "{}", g.name);
    drop(vm);
    let total = t.elapsed();
    Boot {
        load: r.load_time,
        init: r.init_time,
        total,
        exits: r.exits,
        syscalls: r.syscalls,
    }
}

struct Row {
    what: String,
    min: f64,
    median: f64,
    unit: &'static str,
    note: String,
}

fn bench_load(g: &Guest, runs: u64, rows: &mut Vec<Row>) {
    boot(g, &[]); // warm the page cache and the allocator
    let boots: Vec<Boot> = (0..runs).map(|_| boot(g, &[])).collect();
    let (lmin, lmed) = stats(boots.iter().map(|b| us(b.load)).collect());
    let (imin, imed) = stats(boots.iter().map(|b| us(b.init)).collect());
    let (smin, smed) = stats(boots.iter().map(|b| us(b.load + b.init)).collect());
    let (tmin, tmed) = stats(boots.iter().map(|b| us(b.total)).collect());
    let (dmin, dmed) = stats(
        boots
            .iter()
            .map(|b| us(b.total.saturating_sub(b.load + b.init)))
            .collect(),
    );
    let exits = boots[0].exits;
    let sys = boots[0].syscalls;
    for (what, min, med, note) in [
        ("load (VM create + ELF load)", lmin, lmed, String::new()),
        (
            "init (run to exit)",
            imin,
            imed,
            format!("{exits} VM exits, {sys} syscalls"),
        ),
        ("load + init", smin, smed, String::new()),
        ("VM teardown (drop)", dmin, dmed, String::new()),
        ("boot + teardown wall time", tmin, tmed, String::new()),
    ] {
        rows.push(Row {
            what: format!("{}: {what}", g.name),
            min: min / 1e3,
            median: med / 1e3,
            unit: "ms",
            note,
        });
    }
}

fn bench_getpid(g: &Guest, n: u64, runs: u64, rows: &mut Vec<Row>) -> f64 {
    let zero: Vec<Boot> = (0..runs).map(|_| boot(g, &["0"])).collect();
    let ns = n.to_string();
    let big_runs = runs.clamp(1, 5);
    let big: Vec<Boot> = (0..big_runs).map(|_| boot(g, &[&ns])).collect();
    let (zmin, zmed) = stats(zero.iter().map(|b| us(b.init)).collect());
    let (bmin, bmed) = stats(big.iter().map(|b| us(b.init)).collect());
    let exits = (big[0].exits as f64 - zero[0].exits as f64) / n as f64;
    let sys = (big[0].syscalls as f64 - zero[0].syscalls as f64) / n as f64;
    let per_min = (bmin - zmin) / n as f64;
    let per_med = (bmed - zmed) / n as f64;
    rows.push(Row {
        what: "emulated getpid (bench_getpid N vs 0)".into(),
        min: per_min,
        median: per_med,
        unit: "µs",
        note: format!("N={n}, {big_runs} runs; {exits:.3} VM exits and {sys:.3} syscalls per call"),
    });
    per_med
}

fn bench_native_getpid(runs: u64, rows: &mut Vec<Row>) -> f64 {
    const N: u64 = 200_000;
    let samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..N {
                // SAFETY: getpid has no arguments and no side effects.
                std::hint::black_box(unsafe { libc::syscall(libc::SYS_getpid) });
            }
            us(t.elapsed()) / N as f64
        })
        .collect();
    let (min, med) = stats(samples);
    rows.push(Row {
        what: "native getpid (libc::syscall)".into(),
        min,
        median: med,
        unit: "µs",
        note: format!("{N} calls per run"),
    });
    med
}

/// Raw exit round trip: `out %eax,$0; jmp back` written over a loaded program's entry point,
/// then `Vcpu::run` in a loop (one KVM_RUN and one KVM_EXIT_IO each, registers via sync_regs).
fn bench_raw_exit(g: &Guest, runs: u64, rows: &mut Vec<Row>) -> f64 {
    const N: u64 = 20_000;
    let mut vm = MainVm::load(g.options(&[])).expect("load");
    // e7 00: out %eax,$0   eb fc: jmp -4 (back to the out)
    vm.machine
        .mem
        .write_any_protection(vm.elf.entry, &[0xe7, 0x00, 0xeb, 0xfc])
        .expect("patch entry");
    // Start right there (a loaded program would first run edgevm's start probe).
    let entry = vm.elf.entry;
    vm.machine.cpu.regs_mut().rip = entry;
    let mut once = || match vm.machine.cpu.run().expect("KVM_RUN") {
        Exit::IoOut { port, .. } if port == layout::API_PORT => {}
        other => panic!("unexpected exit {other:?}"),
    };
    for _ in 0..100 {
        once();
    }
    let samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..N {
                once();
            }
            us(t.elapsed()) / N as f64
        })
        .collect();
    let (min, med) = stats(samples);
    rows.push(Row {
        what: "raw VM exit round trip (OUT → KVM_EXIT_IO → re-enter)".into(),
        min,
        median: med,
        unit: "µs",
        note: format!("{N} exits per run"),
    });
    med
}

fn main() {
    let runs = env_num("EDGEVM_BENCH_RUNS", 21).max(1);
    let n = env_num("EDGEVM_BENCH_GETPID", 200_000).max(1);
    let dir = guests(&["bench_getpid", "hello_musl"]);
    let hello = Guest::new(&dir, "hello");
    let musl = Guest::new(&dir, "hello_musl");
    let getpid = Guest::new(&dir, "bench_getpid");
    let touch_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-guests");
    std::fs::create_dir_all(&touch_dir).expect("create target/bench-guests");
    let touch = build_touch512(&touch_dir).map(|_| Guest::new(&touch_dir, "bench_touch512"));
    if touch.is_none() {
        eprintln!("note: gcc -static failed; skipping the 512-page guest");
    }

    let mut rows = Vec::new();
    let (emulated, native, raw);
    {
        let _quiet = Quiet::new();
        bench_load(&hello, runs, &mut rows);
        bench_load(&musl, runs, &mut rows);
        if let Some(t) = &touch {
            bench_load(t, runs, &mut rows);
        }
        emulated = bench_getpid(&getpid, n, runs, &mut rows);
        native = bench_native_getpid(runs, &mut rows);
        raw = bench_raw_exit(&hello, runs.min(9), &mut rows);
    }
    rows.push(Row {
        what: "emulated / native getpid".into(),
        min: f64::NAN,
        median: emulated / native,
        unit: "×",
        note: "medians".into(),
    });
    rows.push(Row {
        what: "emulated getpid / raw exit".into(),
        min: f64::NAN,
        median: emulated / raw,
        unit: "×",
        note: "medians; exits are bimodal here (30-32 / 40-55 µs)".into(),
    });

    println!("edgevm engine benchmark: {runs} runs (min / median)\n");
    println!("| measurement | min | median | unit | notes |");
    println!("|---|---:|---:|---|---|");
    for r in &rows {
        let min = if r.min.is_nan() {
            "".to_string()
        } else {
            format!("{:.3}", r.min)
        };
        println!(
            "| {} | {} | {:.3} | {} | {} |",
            r.what, min, r.median, r.unit, r.note
        );
    }
}
