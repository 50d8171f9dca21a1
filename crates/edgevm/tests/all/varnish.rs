//! edgevm behind a real Varnish (Debian's varnish 7.1, installed by scripts/deps.sh): the
//! varnishtest files in crates/edgevm/tests/varnish/ start real `edgevm serve` nodes and a
//! real varnishd with the shipped VCL (deploy/varnish/edgevm.vcl), all on loopback or Unix
//! sockets, each bounded by varnishtest's timeout.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::harness::free_port;

/// varnishtest, with /usr/sbin (varnishd) on its PATH.
fn varnishtest() -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("varnishtest"))
        .find(|p| p.exists())
        .expect("varnishtest not found: run scripts/deps.sh (Debian package varnish)");
    assert!(
        Path::new("/usr/sbin/varnishd").exists() || path.contains("sbin"),
        "varnishd not found: run scripts/deps.sh (Debian package varnish)"
    );
    let mut c = Command::new(found);
    c.env("PATH", format!("{path}:/usr/sbin:/usr/local/sbin"));
    c
}

/// Owner group for edgevm's Unix socket so varnishd's worker can connect: as root varnishd
/// runs it as `vcache` in group `varnish`; otherwise as ourselves.
fn socket_owner() -> String {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 {
        ":varnish".into()
    } else {
        format!(":{gid}")
    }
}

/// Run one .vtc file with the macros every file uses (and `extra`); panics with its log on
/// failure.
pub fn run_vtc(name: &str, extra: &[(&str, String)]) -> String {
    require_kvm();
    let root = root();
    let file = root.join("crates/edgevm/tests/varnish").join(name);
    let mut cmd = varnishtest();
    // -b: the test log holds Varnish's whole shared-memory log (1 MB is too small for the
    // fleet's load).
    cmd.arg("-t").arg("150").arg("-b").arg("128M");
    let mut defs: Vec<(&str, String)> = vec![
        ("edgevm", env!("CARGO_BIN_EXE_edgevm").to_string()),
        ("guests", guests().display().to_string()),
        ("vcldir", root.join("deploy/varnish").display().to_string()),
        ("port1", free_port().to_string()),
        ("port2", free_port().to_string()),
        ("port3", free_port().to_string()),
        ("sockowner", socket_owner()),
    ];
    defs.extend(extra.iter().cloned());
    for (k, v) in &defs {
        cmd.arg("-D").arg(format!("{k}={v}"));
    }
    let out = cmd.arg(&file).output().expect("run varnishtest");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        // The first failure and what led to it.
        let lines: Vec<&str> = log.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("---- "))
            .unwrap_or(lines.len().saturating_sub(1));
        let from = at.saturating_sub(60);
        panic!(
            "varnishtest {name} failed ({}):\n{}",
            out.status,
            lines[from..(at + 5).min(lines.len())].join("\n")
        );
    }
    log
}

#[test]
fn varnish_in_front_over_tcp() {
    run_vtc("tcp.vtc", &[]);
}

#[test]
fn varnish_in_front_over_a_unix_socket() {
    run_vtc("uds.vtc", &[]);
}

#[test]
fn a_chain_route_through_varnish() {
    run_vtc("chain.vtc", &[]);
}

#[test]
fn a_streamed_response_through_varnish_arrives_in_pieces() {
    run_vtc("stream.vtc", &[]);
}

/// The fleet scenario, short (scripts/fleet.sh runs it long and prints the counts): three
/// nodes, kill -9 of one under load, a rolling live update under load and a restart, a node
/// whose program cannot boot. Every GET through Varnish must answer 200.
#[test]
fn a_fleet_of_three_nodes_survives_kill_rolling_update_and_a_failed_boot() {
    let dir = scratch("varnish-fleet");
    let counts = dir.join("counts.txt");
    run_vtc(
        "fleet.vtc",
        &[
            ("reqs", "100".to_string()),
            ("counts", counts.display().to_string()),
        ],
    );
    let text = std::fs::read_to_string(&counts).unwrap();
    eprintln!("{text}");
    assert_eq!(text.matches("MAIN.client_req").count(), 3, "{text}");
}
