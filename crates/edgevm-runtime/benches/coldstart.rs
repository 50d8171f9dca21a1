//! Cold start microbenchmark (not a test): a program's start to its first answer, from a boot
//! and from its snapshot file, interleaved in one run, in phases:
//!
//! * boot: `MainVm::boot` + freeze; snapshot: `snapshot::load` (open, checks, image);
//! * the KVM VM of the first request VM (`VmShell::with_slot`: KVM_CREATE_VM, a vCPU, the
//!   memory slot), made before the start as the server does (a spare for a snapshot start,
//!   spare.rs; on another thread while a program boots): shown, not counted in the start;
//! * the fork (`RequestVm::new_in` in that VM: the memory view over the slot, registers);
//! * the first request (`GET /` in the fresh VM: every page it touches is faulted in);
//! * a second request in the same VM, for comparison.
//!
//! ```text
//! cargo bench -p edgevm-runtime --bench coldstart
//! ```
//!
//! Programs: `example_hello` (guest/examples/hello.c) and `slow_init` (guest/tests/slow_init.c,
//! whose main() computes for 60 ms). `EDGEVM_BENCH_RUNS` (default 21) samples each, printed as
//! a markdown table of medians (µs) and the boot ÷ snapshot ratio of the whole start.

mod common;
use common::{guests, stats, us};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgevm_runtime::pool::ProgramSettings;
use edgevm_runtime::request::GuestRequest;
use edgevm_runtime::request_vm::{RequestSettings, RequestVm};
use edgevm_runtime::snapshot;
use edgevm_runtime::vm::{Frozen, MainVm, VmOptions};

fn settings(dir: &std::path::Path, name: &str, snap: &std::path::Path) -> ProgramSettings {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut o = VmOptions::new(name, path, bytes);
    o.raw_output = true;
    o.max_boot_time = Duration::from_secs(600);
    ProgramSettings {
        server: None,
        vm: o,
        concurrency: 1,
        max_queue: 16,
        free_idle_vms_after: None,
        free_idle_image: false,
        request: RequestSettings::default(),
        start: false,
        origin: "local",
        cached: false,
        warmup: None,
        key: String::new(),
        storage: false,
        storage_binary: None,
        max_storage_time: Duration::from_secs(10),
        snapshot: Some(snap.to_path_buf()),
        loader: None,
    }
}

/// Phases of one start, µs: image ready, KVM VM made (ahead, not part of the start), forked,
/// first answer, second answer; and the thread's CPU time from the start to the first answer
/// (system time included: KVM's work and the guest's run count there).
type Phases = [f64; 6];

/// This thread's CPU time, µs (less moved by other work on a shared machine than the wall
/// clock: time slices lost to other processes do not count).
fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn get(url: &str) -> GuestRequest {
    GuestRequest {
        method: "GET".into(),
        url: url.into(),
        ..Default::default()
    }
}

fn boot(s: &ProgramSettings) -> Frozen {
    let (vm, _) = MainVm::boot(s.vm.clone()).expect("boot");
    vm.freeze().expect("freeze")
}

fn one(s: &ProgramSettings, from_snapshot: bool, url: &str) -> Phases {
    // The server makes the first request VM's KVM VM ahead: a spare for a snapshot start,
    // on another thread while a program boots (spare.rs, program_boot.rs).
    let t = Instant::now();
    let shell = edgevm_runtime::vm::prepared_shell(s.vm.memory_size() as usize).expect("KVM VM");
    let made = us(t.elapsed());
    let c0 = thread_cpu_us();
    let t0 = Instant::now();
    let frozen = if from_snapshot {
        snapshot::load(s, s.snapshot.as_deref().unwrap()).expect("snapshot load")
    } else {
        boot(s)
    };
    let frozen = Arc::new(frozen);
    let t1 = us(t0.elapsed());
    let mut vm =
        RequestVm::new_in(frozen, RequestSettings::default(), None, Some(shell)).expect("fork");
    let t2 = us(t0.elapsed());
    let req = get(url);
    let (r, _) = vm.handle(&req);
    r.expect("first request");
    let t3 = us(t0.elapsed());
    let cpu = thread_cpu_us() - c0;
    let (r, _) = vm.handle(&req);
    r.expect("second request");
    let t4 = us(t0.elapsed());
    [t1, made, t2 - t1, t3 - t2, t4 - t3, cpu]
}

fn main() {
    let runs = std::env::var("EDGEVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21usize);
    let dir = guests(&["example_hello", "slow_init"]);
    let tmp = std::env::temp_dir().join(format!("edgevm-coldstart-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    println!("### Snapshot start in the engine (crates/edgevm-runtime/benches/coldstart.rs)\n");
    println!(
        "Medians of {runs} starts each, interleaved, µs; load average {}.\n",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| program | start | image ready | (KVM VM, made ahead) | fork | first request | start to first answer | second request | thread CPU, start to first answer |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, url) in [("example_hello", "/"), ("slow_init", "/slow_init/7")] {
        let s = settings(&dir, name, &tmp.join(format!("{name}.snapshot")));
        // Everything on one thread of its own (VMs belong to their thread).
        let rows = std::thread::scope(|sc| {
            sc.spawn(|| {
                let f = boot(&s);
                snapshot::save(&f, &s, s.snapshot.as_deref().unwrap()).expect("save");
                let mut b = Vec::new();
                let mut n = Vec::new();
                for i in 0..runs + 1 {
                    let x = one(&s, false, url);
                    let y = one(&s, true, url);
                    if i > 0 {
                        b.push(x);
                        n.push(y);
                    }
                }
                (b, n)
            })
            .join()
            .expect("bench thread")
        });
        let med = |v: &[Phases], i: usize| stats(v.iter().map(|p| p[i]).collect()).1;
        let total = |v: &[Phases]| stats(v.iter().map(|p| p[0] + p[2] + p[3]).collect());
        let cpu = |v: &[Phases]| stats(v.iter().map(|p| p[5]).collect());
        let (bt, st) = (total(&rows.0), total(&rows.1));
        let (bc, sc) = (cpu(&rows.0), cpu(&rows.1));
        for (label, v, t, c) in [("boot", &rows.0, bt, bc), ("snapshot", &rows.1, st, sc)] {
            println!(
                "| {name} | {label} | {:.0} | {:.0} | {:.0} | {:.0} | **{:.0}** (min {:.0}) | {:.0} | {:.0} (min {:.0}) |",
                med(v, 0),
                med(v, 1),
                med(v, 2),
                med(v, 3),
                t.1,
                t.0,
                med(v, 4),
                c.1,
                c.0
            );
        }
        println!(
            "| {name} | boot ÷ snapshot | | | | | **{:.1}×** (mins {:.1}×) | | {:.1}× (mins {:.1}×) |",
            bt.1 / st.1,
            bt.0 / st.0,
            bc.1 / sc.1,
            bc.0 / sc.0
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
