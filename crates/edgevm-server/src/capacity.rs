//! What a configuration needs from the process's limits, checked once at start.
//!
//! A node with many programs holds, for each program that has booted, its frozen image (one
//! memfd) and `concurrency` request VMs (a KVM VM and a vCPU: two file descriptors, and about
//! [`MAPS_PER_VM`] memory mappings each); a program with `storage` adds a storage VM. Nothing
//! of this exists before a program's first request (or `start`), but a server must not start
//! in a state where booting its configured programs runs out of open files or mappings in the
//! middle of serving. [`check`] compares the worst case (every program booted) with the limits:
//! the open-file limit is raised to its hard limit beforehand
//! ([`crate::limits::raise_fd_limit`]); `vm.max_map_count` is a system setting edgevm cannot
//! raise, so the start-up message names the number needed. Measured figures (1,000 programs on
//! one node) are in docs/BENCHMARKS.md, "Many programs".

use edgevm_config::Config;

/// File descriptors of one KVM VM with its one vCPU.
pub const FDS_PER_VM: u64 = 2;
/// File descriptors of one program's frozen image (its memfd).
pub const FDS_PER_IMAGE: u64 = 1;
/// Memory mappings of one request VM, rounded up (measured: about 8 on this machine's
/// kernel: guest memory views, the vCPU's run area).
pub const MAPS_PER_VM: u64 = 10;
/// Memory mappings of one frozen image.
pub const MAPS_PER_IMAGE: u64 = 2;
/// Mappings of the process itself (binary, libraries, thread stacks), kept free.
pub const MAPS_RESERVE: u64 = 1024;

/// What every configured program booted at once would hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Programs that can run (configuration errors left out).
    pub programs: u64,
    /// KVM VMs: request VMs plus storage VMs.
    pub vms: u64,
    /// Open files for those VMs and images, plus [`crate::limits::FD_RESERVE`].
    pub fds: u64,
    /// Memory mappings for them, plus [`MAPS_RESERVE`].
    pub maps: u64,
}

/// The worst case of `cfg`: every valid program booted with all its request VMs.
pub fn needs(cfg: &Config) -> Needs {
    let mut n = Needs::default();
    for (_, p) in cfg.valid_programs() {
        n.programs += 1;
        let vms = u64::from(p.concurrency.max(1)) + u64::from(p.storage);
        let images = 1 + u64::from(p.storage);
        n.vms += vms;
        n.fds += vms * FDS_PER_VM + images * FDS_PER_IMAGE;
        n.maps += vms * MAPS_PER_VM + images * MAPS_PER_IMAGE;
    }
    n.fds += crate::limits::FD_RESERVE;
    n.maps += MAPS_RESERVE;
    n
}

/// `vm.max_map_count` (mappings a process may hold), if it can be read.
pub fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Start-up lines about the limits: `Ok` lines are information, `Err` lines warnings that
/// name the limit that is too low and the number needed. `fd_limit` is the open-file limit in
/// force (after raising it); `connections` the connections that may be open at once.
pub fn check(
    needs: &Needs,
    fd_limit: u64,
    connections: u64,
    map_limit: Option<u64>,
) -> Vec<Result<String, String>> {
    let mut out = Vec::new();
    let fds = needs.fds.saturating_add(connections);
    let lim = |l: u64| {
        if l == u64::MAX {
            "unlimited".to_string()
        } else {
            l.to_string()
        }
    };
    out.push(Ok(format!(
        "{} program(s) need up to {} KVM VM(s), {} open files with {} connection(s) (limit {}) and {} memory mappings (vm.max_map_count {})",
        needs.programs,
        needs.vms,
        fds,
        connections,
        lim(fd_limit),
        needs.maps,
        map_limit.map_or_else(|| "unknown".into(), lim),
    )));
    if needs.fds > fd_limit {
        out.push(Err(format!(
            "the open-file limit {fd_limit} is below the {} files that the configured programs need once all have booted (without connections); programs that boot beyond it fail (503) or run with fewer request VMs: raise the hard limit (ulimit -Hn, LimitNOFILE=) to at least {fds}",
            needs.fds
        )));
    } else if fds > fd_limit {
        out.push(Err(format!(
            "the open-file limit {fd_limit} is below the {fds} files that the configured programs and {connections} connection(s) need together; connections beyond it are refused: raise the hard limit (ulimit -Hn, LimitNOFILE=) to at least {fds}"
        )));
    }
    if let Some(m) = map_limit {
        if needs.maps > m {
            out.push(Err(format!(
                "vm.max_map_count {m} is below the {} memory mappings that the configured programs need once all have booted; programs that boot beyond it fail (503) or run with fewer request VMs: raise it (sysctl -w vm.max_map_count={})",
                needs.maps, needs.maps
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_str(text, "test.json").unwrap()
    }

    #[test]
    fn needs_count_request_and_storage_vms() {
        let c = config(
            r#"{ "a": { "filename": "/x", "concurrency": 3 },
                 "b": { "filename": "/y", "concurrency": 1, "storage": true },
                 "bad": { "filename": "/z", "concurrency": "many" } }"#,
        );
        let n = needs(&c);
        assert_eq!(n.programs, 2);
        assert_eq!(n.vms, 3 + 2);
        assert_eq!(
            n.fds,
            5 * FDS_PER_VM + 3 * FDS_PER_IMAGE + crate::limits::FD_RESERVE
        );
        assert_eq!(n.maps, 5 * MAPS_PER_VM + 3 * MAPS_PER_IMAGE + MAPS_RESERVE);
    }

    #[test]
    fn limits_too_low_are_named_with_the_number_needed() {
        let n = Needs {
            programs: 1000,
            vms: 2000,
            fds: 5256,
            maps: 24024,
        };
        let all_ok = check(&n, 1 << 20, 100, Some(65530));
        assert_eq!(all_ok.len(), 1);
        assert!(all_ok[0].as_ref().unwrap().contains("2000 KVM VM"));
        let low = check(&n, 1024, 100, Some(10000));
        let warnings: Vec<_> = low.iter().filter_map(|l| l.as_ref().err()).collect();
        assert_eq!(warnings.len(), 2, "{low:?}");
        assert!(warnings[0].contains("at least 5356"), "{}", warnings[0]);
        assert!(
            warnings[1].contains("vm.max_map_count=24024"),
            "{}",
            warnings[1]
        );
        // Enough for the programs, not with every connection open.
        let conns = check(&n, 6000, 1000, None);
        let w: Vec<_> = conns.iter().filter_map(|l| l.as_ref().err()).collect();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("connections beyond it are refused"),
            "{}",
            w[0]
        );
    }
}
