//! edgevm-load: an open-loop HTTP/1.1 load generator for the overload benchmark
//! (scripts/bench-overload.sh, docs/BENCHMARKS.md "Overload").
//!
//! `edgevm-load URL RATE SECONDS CONNS` sends RATE requests a second for SECONDS over CONNS
//! keep-alive connections (one thread each; connection j sends requests j, j+CONNS, ...) and
//! prints one JSON object: per status, the count and latency percentiles in microseconds.
//! Unlike wrk (closed loop: a new request only when an answer came back), the offered load
//! does not drop when the server slows down: each request has a due time, and its latency is
//! counted from that time, so time spent waiting for a busy connection counts too (no
//! "coordinated omission"). Status 0 counts requests that got no answer (connection refused
//! or closed, or a 10 s read timeout). Every thread stops at the end of SECONDS plus at most
//! one 10 s read timeout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Target {
    addr: String,
    head: Vec<u8>,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the URL must start with http://")?;
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: edgevm-load\r\n\r\n");
    Ok(Target {
        addr: addr.to_string(),
        head: head.into_bytes(),
    })
}

/// Send one request on `conn` (connecting first if needed) and read the answer: its status,
/// or None when the connection failed (it is dropped then).
fn one(t: &Target, conn: &mut Option<BufReader<TcpStream>>) -> Option<u16> {
    if conn.is_none() {
        let s = TcpStream::connect(&t.addr).ok()?;
        s.set_nodelay(true).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        *conn = Some(BufReader::new(s));
    }
    let r = (|| {
        let c = conn.as_mut()?;
        c.get_mut().write_all(&t.head).ok()?;
        let mut line = String::new();
        c.read_line(&mut line).ok()?;
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        let (mut len, mut close) = (0usize, false);
        loop {
            line.clear();
            if c.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':')?;
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            } else if k.eq_ignore_ascii_case("connection") && v.trim() == "close" {
                close = true;
            }
        }
        let mut body = vec![0; len];
        c.read_exact(&mut body).ok()?;
        Some((status, close))
    })();
    match r {
        Some((status, close)) => {
            if close {
                *conn = None;
            }
            Some(status)
        }
        None => {
            *conn = None;
            None
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: edgevm-load URL RATE SECONDS CONNS";
    if args.len() != 4 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let target = parse_url(&args[0]).unwrap_or_else(|e| {
        eprintln!("edgevm-load: {e}");
        std::process::exit(2)
    });
    let num = |s: &str| -> f64 {
        s.parse()
            .ok()
            .filter(|v: &f64| *v > 0.0)
            .unwrap_or_else(|| {
                eprintln!("{usage} (RATE, SECONDS and CONNS are positive numbers)");
                std::process::exit(2)
            })
    };
    let (rate, secs, conns) = (num(&args[1]), num(&args[2]), num(&args[3]) as usize);
    let conns = conns.clamp(1, 4096);
    let total = (rate * secs) as u64;
    let interval = 1.0 / rate;
    let target = std::sync::Arc::new(target);
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..conns)
        .map(|j| {
            let t = target.clone();
            std::thread::spawn(move || {
                let mut conn = None;
                let mut by_status: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
                let mut i = j as u64;
                while i < total {
                    let due = start + Duration::from_secs_f64(i as f64 * interval);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let status = one(&t, &mut conn).unwrap_or(0);
                    let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    by_status.entry(status).or_default().push(us);
                    i += conns as u64;
                }
                by_status
            })
        })
        .collect();
    let mut all: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for h in threads {
        for (s, v) in h.join().unwrap_or_default() {
            all.entry(s).or_default().extend(v);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut out = format!(
        "{{\"offered_per_s\": {rate}, \"seconds\": {elapsed:.3}, \"connections\": {conns}, \"requests\": {total}, \"status\": {{"
    );
    for (n, (status, mut v)) in all.into_iter().enumerate() {
        v.sort_unstable();
        out.push_str(&format!(
            "{}\"{status}\": {{\"count\": {}, \"p50_us\": {}, \"p99_us\": {}, \"max_us\": {}}}",
            if n > 0 { ", " } else { "" },
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(0)
        ));
    }
    out.push_str("}}");
    println!("{out}");
}
