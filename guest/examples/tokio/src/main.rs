//! example_tokio: a request handler written with tokio's multi-thread runtime.
//!
//! `main()` builds the runtime (two worker threads) before `wait_for_requests()`, so it is
//! frozen with the program: every request finds the workers parked and the runtime ready, and
//! the request VM's reset puts them back. A GET runs, inside `block_on`:
//!
//! * 8 spawned tasks (they run on the worker threads) whose results come back through their
//!   join handles, and a producer task feeding an mpsc channel;
//! * a timer: `tokio::time::sleep(20 ms)`;
//! * a TCP connection to a Redis-like line service (`LINEDB=host:port` in the program's
//!   environment; the network policy must allow it, e.g. `"allow_net": ["127.0.0.1:6380"]`):
//!   `INCR tokio:<page>`, answered `:N`.
//!
//! Configuration: `"environment": ["LINEDB=127.0.0.1:6380"]`. A worker thread's first
//! allocation in a request makes glibc create an arena, reserving 128 MiB of address space
//! with `PROT_NONE`: reservations count against neither `max_memory` nor `max_request_memory`
//! (only what the arena makes accessible does), so this needs no `MALLOC_ARENA_MAX`.
//!
//! GET /tokio/<page> answers `<page>: N views (tasks 8 sum S, channel C, slept 20 ms, workers W)`.
use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edgevm_guest as kvm;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

static RT: OnceLock<Runtime> = OnceLock::new();
static SERVICE: OnceLock<String> = OnceLock::new();

async fn views(page: &str) -> std::io::Result<String> {
    let addr = SERVICE.get().expect("set in main");
    let stream = TcpStream::connect(addr.as_str()).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("INCR tokio:{page}\r\nQUIT\r\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    Ok(line.trim_end().trim_start_matches(':').to_string())
}

async fn handle(page: String) -> String {
    // Tasks on the worker threads.
    let tasks: Vec<_> = (1..=8u64)
        .map(|i| {
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                ((1..=1000u64).map(|x| x * i).sum::<u64>(), std::thread::current().id())
            })
        })
        .collect();
    // A producer task and a channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(4);
    tokio::spawn(async move {
        for i in 1..=10 {
            if tx.send(i).await.is_err() {
                return;
            }
        }
    });
    // A timer, while the tasks run.
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let slept = start.elapsed() >= Duration::from_millis(20);
    let mut sum = 0;
    let mut threads = HashSet::new();
    for t in tasks {
        let (s, id) = t.await.expect("task");
        sum += s;
        threads.insert(id);
    }
    let mut channel = 0;
    while let Some(v) = rx.recv().await {
        channel += v;
    }
    let n = match views(&page).await {
        Ok(n) => n,
        Err(e) => format!("(service: {e})"),
    };
    format!(
        "{page}: {n} views (tasks 8 sum {sum}, channel {channel}, slept 20 ms {}, on worker threads {})\n",
        if slept { "yes" } else { "NO" },
        if threads.contains(&std::thread::current().id()) { "no" } else { "yes" },
    )
}

fn on_get(url: &str, _arg: &str) {
    let page: String = url
        .rsplit('/')
        .next()
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    let text = RT.get().expect("built in main").block_on(handle(page));
    kvm::backend_response_str(200, "text/plain", &text);
}

fn main() {
    let Ok(service) = std::env::var("LINEDB") else {
        eprintln!("example_tokio: set LINEDB=host:port in the program's environment");
        std::process::exit(1);
    };
    SERVICE.set(service).expect("once");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    RT.set(rt).ok().expect("once");
    if !kvm::is_sandboxed() {
        // As a Linux process with BENCH_CALLS=N: N calls of the same handler code, natively
        // (the benchmark beside a request, docs/BENCHMARKS.md).
        let n: u32 = std::env::var("BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        if n == 0 {
            println!("example_tokio: run me inside edgevm (or with BENCH_CALLS=N)");
            return;
        }
        let rt = RT.get().expect("built above");
        let start = Instant::now();
        let mut last = String::new();
        for _ in 0..n {
            last = rt.block_on(handle("bench".into()));
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        print!("{n} calls, {us:.1} us/call; last: {last}");
        return;
    }
    kvm::on_get(on_get);
    kvm::wait_for_requests();
}
