//! Fuzz target `config`: the configuration parser.

use edgevm_config::{Config, PathVars, MAX_ADDRESS_SPACE, MAX_CONCURRENCY, MAX_TIME_SECS};

/// Parse the input as one to three configuration files (split at NUL bytes), render the
/// `edgevm check` report, and check that every valid program is within the documented ranges.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let sources: Vec<(String, String)> = text
        .splitn(3, '\0')
        .enumerate()
        .map(|(i, t)| (format!("fuzz{i}.json"), t.to_string()))
        .collect();
    let vars = PathVars {
        home: Some("/home/fuzz".into()),
        pwd: None,
    };
    let Ok(cfg) = Config::from_sources(&sources, &vars) else {
        return;
    };
    let report = cfg.render_check();
    assert!(report.contains("effective settings"), "{report}");
    let max_time = std::time::Duration::from_secs_f64(MAX_TIME_SECS);
    for (name, p) in cfg.valid_programs() {
        assert!(!name.is_empty());
        assert!(
            (1..=MAX_CONCURRENCY).contains(&p.concurrency),
            "{name}: concurrency {}",
            p.concurrency
        );
        assert!(p.max_memory > 0 && p.max_memory <= MAX_ADDRESS_SPACE);
        assert!(
            p.address_space >= p.max_memory + p.shared_memory,
            "{name}: address space {} < {} + {}",
            p.address_space,
            p.max_memory,
            p.shared_memory
        );
        assert!(p.address_space <= MAX_ADDRESS_SPACE);
        for t in [p.max_boot_time, p.max_request_time, p.max_storage_time] {
            assert!(!t.is_zero() && t <= max_time, "{name}: time limit {t:?}");
        }
        assert!(p.filename.is_some() || p.uri.is_some());
        if p.ephemeral_keep_working_memory {
            assert!(p.ephemeral);
        }
    }
}
