//! Unit tests for the configuration loader.

use std::path::PathBuf;
use std::time::Duration;

use crate::*;

fn vars() -> PathVars {
    PathVars {
        home: Some("/home/user".to_string()),
        pwd: Some("/srv/app".to_string()),
    }
}

fn load(text: &str) -> Config {
    load_named("compute.json", text)
}

fn load_named(name: &str, text: &str) -> Config {
    Config::from_sources(&[(name.to_string(), text.to_string())], &vars())
        .unwrap_or_else(|e| panic!("whole-file error: {e}"))
}

fn load_err(text: &str) -> ConfigError {
    Config::from_sources(&[("compute.json".to_string(), text.to_string())], &vars())
        .expect_err("expected a whole-file error")
}

fn load_many(files: &[(&str, &str)]) -> Config {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    Config::from_sources(&sources, &vars()).unwrap_or_else(|e| panic!("whole-file error: {e}"))
}

fn ok<'a>(cfg: &'a Config, name: &str) -> &'a ProgramConfig {
    match cfg.programs.get(name) {
        Some(Ok(p)) => p,
        Some(Err(e)) => panic!("program '{name}' failed: {e}"),
        None => panic!("program '{name}' missing; have {:?}", cfg.programs.keys()),
    }
}

fn err<'a>(cfg: &'a Config, name: &str) -> &'a ConfigError {
    match cfg.programs.get(name) {
        Some(Err(e)) => e,
        Some(Ok(p)) => panic!("program '{name}' unexpectedly valid: {p:?}"),
        None => panic!("program '{name}' missing"),
    }
}

/// A one-program document with extra keys.
fn prog(extra: &str) -> String {
    format!(
        r#"{{ "demo": {{ "filename": "/tmp/demo"{}{extra} }} }}"#,
        if extra.is_empty() { "" } else { ", " }
    )
}

fn prog_err(extra: &str) -> String {
    err(&load(&prog(extra)), "demo").to_string()
}

// ---------------------------------------------------------------- glossary

#[test]
fn glossary_non_trivial_example() {
    let cfg = load(
        r#"{
	"compute": {
		"concurrency": 8,
		"max_boot_time": 8.0,
		"max_request_time": 6.0,
		"max_memory": 64,
		"max_request_memory": 48,
		"req_mem_limit_after_reset": 16 /* Mbytes */
	},
	"demo": {
		"group": "compute",
		"uri": "https://some.where/kvmprograms/demo",
		"filename": "/tmp/compute_demo",
		"concurrency": 1
	}
}"#,
    );
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.programs.len(), 1);
    assert!(cfg.groups.contains_key("compute"));
    assert!(cfg.groups.contains_key("test"));
    let demo = ok(&cfg, "demo");
    assert_eq!(demo.name, "demo");
    assert_eq!(demo.group, "compute");
    assert_eq!(
        demo.uri.as_deref(),
        Some("https://some.where/kvmprograms/demo")
    );
    assert_eq!(demo.filename, Some(PathBuf::from("/tmp/compute_demo")));
    assert_eq!(demo.concurrency, 1);
    assert_eq!(demo.max_boot_time, Duration::from_secs(8));
    assert_eq!(demo.max_request_time, Duration::from_secs(6));
    assert_eq!(demo.max_storage_time, Duration::from_secs(10));
    assert_eq!(demo.max_memory, 64 * MB);
    assert_eq!(demo.max_request_memory, 48 * MB);
    assert_eq!(demo.limit_workmem_after_req, 16 * MB);
    assert_eq!(demo.workmem_limit_after_request(), Some(16 * MB));
    assert_eq!(demo.address_space, 64 * MB);
    assert!(demo.ephemeral);
    assert!(!cfg.has_errors());
}

#[test]
fn glossary_group_and_program_snippets() {
    let cfg = load(
        r#"{
	"compute": {
		"concurrency": 4,
		"max_boot_time": 8.0,
		"max_request_time": 6.0,
		"max_memory": 64,
		"max_request_memory": 48,
		"req_mem_limit_after_reset": 16 /* Mbytes */
	},
	"inflate": {
		"group": "compute",
		"uri": "https://some.where/kvmprograms/inflate",
		"filename": "/tmp/compute_inflate"
	}
}"#,
    );
    let p = ok(&cfg, "inflate");
    assert_eq!(p.concurrency, 4);
    assert_eq!(p.max_request_memory, 48 * MB);
    let group = cfg.groups["compute"].as_ref().unwrap();
    assert_eq!(group.name, "compute");
    assert_eq!(group.concurrency, 4);
}

#[test]
fn glossary_setting_examples_parse() {
    let cfg = load(
        r#"{ "demo": {
	"filename": "/tmp/demo",
	"main_arguments": [
		"--jitless"
	],
	"environment": [
		"VERBOSE=1"
	],
	"warmup": {
		"num_requests": 50,
		"url": "/warmup",
		"headers": [
			"Host: localhost",
			"X-Request-Id: warmup"
		]
	}
} }"#,
    );
    let p = ok(&cfg, "demo");
    assert_eq!(p.main_arguments, vec!["--jitless"]);
    assert_eq!(p.environment, vec!["VERBOSE=1"]);
    let w = p.warmup.as_ref().unwrap();
    assert_eq!(w.num_requests, 50);
    assert_eq!(w.url, "/warmup");
    assert_eq!(w.method, "GET");
    assert_eq!(w.headers, vec!["Host: localhost", "X-Request-Id: warmup"]);
}

#[test]
fn glossary_blackout_example_has_a_trailing_comma_and_is_rejected() {
    // The glossary's own blackout_area example ends its object with a
    // trailing comma; the format forbids that.
    let text = "{ \"demo\": {\n\t\"filename\": \"/tmp/demo\",\n\t\"blackout_area\": {\n\t\t\"unmap_before_caged_heap\": [\"0x200000000\", \"0x1000000000\"],\n\t}\n} }";
    let e = load_err(text);
    assert_eq!(e.to_string(), "compute.json:4:61: trailing comma");
}

#[test]
fn defaults_match_the_glossary() {
    let p = ProgramConfig::default();
    assert_eq!(p.group, "test");
    assert_eq!(p.concurrency, 2);
    assert_eq!(p.max_boot_time, Duration::from_secs(16));
    assert_eq!(p.max_request_time, Duration::from_secs(8));
    assert_eq!(p.max_storage_time, Duration::from_secs(10));
    assert_eq!(p.max_memory, 256 * MB);
    assert_eq!(p.max_request_memory, 64 * MB);
    assert_eq!(p.limit_workmem_after_req, 0);
    assert_eq!(p.workmem_limit_after_request(), None);
    assert_eq!(p.shared_memory, 0);
    assert_eq!(p.address_space, 256 * MB);
    assert!(p.ephemeral);
    assert!(!p.ephemeral_keep_working_memory);
    assert!(p.split_hugepages);
    assert!(p.mmap_backed_files);
    assert!(p.relocate_fixed_mmap);
    assert_eq!(p.current_working_directory, "/");
    assert!(!p.storage && !p.start && !p.control_ephemeral);
}

#[test]
fn for_run_gives_defaults_with_name_and_file() {
    let p = ProgramConfig::for_run("hello", "./hello");
    assert_eq!(p.name, "hello");
    assert_eq!(p.filename, Some(PathBuf::from("./hello")));
    assert_eq!(p.group, DEFAULT_GROUP);
    assert_eq!(p.concurrency, 2);
    assert_eq!(p.max_memory, 256 * MB);
}

// ---------------------------------------------------------------- syntax

#[test]
fn real_world_config_with_both_comment_kinds_and_many_programs() {
    let cfg = load(
        r#"// Production edge programs
/* Groups first,
   then programs. A multi-line block comment must not
   shift line numbers. */
{
	"compute": {
		"concurrency": 16, // per program
		"max_memory": 512,
		"max_request_memory": 128 /* MB */,
		"ephemeral_keep_working_memory": true
	},
	"small": { "max_memory": 64, "max_request_time": 0.5 },
	// Programs
	"avif":    { "group": "compute", "filename": "$HOME/programs/avif", "key": "s3cr3t" },
	"gzip":    { "group": "compute", "filename": "/opt/edge/gzip", "storage": true },
	"hello":   { "group": "small",   "filename": "/opt/edge/hello", "start": true },
	"counter": { "group": "small",   "uri": "https://example.com/counter.tar.xz",
	             "filename": "/var/cache/edgevm/counter" },
	"url//with": { "filename": "/tmp/a//b" /* not a comment */ },
	"plain":   { "filename": "/opt/edge/plain" }
}"#,
    );
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.programs.len(), 6);
    // `//` in a string is no comment; that program name is unreachable by URL, though.
    assert!(err(&cfg, "url//with")
        .to_string()
        .contains("cannot be reached by a URL"));
    assert_eq!(cfg.errors().count(), 1);
    let avif = ok(&cfg, "avif");
    assert_eq!(avif.concurrency, 16);
    assert_eq!(avif.max_memory, 512 * MB);
    assert_eq!(avif.max_request_memory, 128 * MB);
    assert!(avif.ephemeral_keep_working_memory && avif.ephemeral);
    assert_eq!(
        avif.filename,
        Some(PathBuf::from("/home/user/programs/avif"))
    );
    assert_eq!(avif.key, "s3cr3t");
    assert!(ok(&cfg, "gzip").storage);
    let hello = ok(&cfg, "hello");
    assert!(hello.start);
    assert_eq!(hello.max_request_time, Duration::from_millis(500));
    assert_eq!(hello.max_memory, 64 * MB);
    assert_eq!(hello.concurrency, 2);
    let cfg2 = load(r#"{ "p": { "filename": "/tmp/a//b" /* not a comment */ } }"#);
    assert_eq!(ok(&cfg2, "p").filename, Some(PathBuf::from("/tmp/a//b")));
    assert_eq!(ok(&cfg, "plain").group, "test");
    assert_eq!(cfg.valid_programs().count(), 5);
    assert_eq!(cfg.program("gzip").unwrap().group, "compute");
}

#[test]
fn trailing_comma_reports_file_line_and_column() {
    let e = load_err("{\n  \"demo\": {\n    \"filename\": \"/tmp/demo\",\n  }\n}");
    match &e {
        ConfigError::Syntax {
            source_name,
            line,
            column,
            message,
        } => {
            assert_eq!(source_name, "compute.json");
            assert_eq!((*line, *column), (3, 28), "the comma itself");
            assert_eq!(message, "trailing comma");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(e.to_string(), "compute.json:3:28: trailing comma");
}

#[test]
fn trailing_comma_in_top_level_and_array() {
    assert_eq!(
        load_err("{\n\"a\": {\"filename\": \"/x\"},\n}").to_string(),
        "compute.json:2:24: trailing comma"
    );
    let e = load_err(r#"{"a": {"filename": "/x", "main_arguments": ["a",]}}"#);
    assert!(e.to_string().starts_with("compute.json:1:"), "{e}");
    assert!(e.to_string().contains("trailing comma"), "{e}");
}

#[test]
fn line_numbers_survive_multi_line_block_comments() {
    let e = load_err("/*\n\n\n*/{\n\"a\": {\"filename\": \"/x\",}\n}");
    assert_eq!(e.to_string(), "compute.json:5:23: trailing comma");
}

#[test]
fn other_syntax_errors_have_positions() {
    let e = load_err("{\n  \"a\": { \"filename\": \"/x\" \n  \"b\": 1 }\n}");
    let ConfigError::Syntax { line, .. } = e else {
        panic!("unexpected {e:?}")
    };
    assert_eq!(line, 3);
    assert!(matches!(load_err(""), ConfigError::Syntax { .. }));
    assert!(load_err("{ /x }").to_string().contains("invalid comment"));
}

#[test]
fn top_level_must_be_an_object_of_objects() {
    let e = load_err("[1, 2]");
    assert!(matches!(e, ConfigError::Structure { .. }));
    assert!(e.to_string().contains("top level must be an object"), "{e}");
    let e = load_err(r#"{"demo": 5}"#);
    assert_eq!(
        e.to_string(),
        "compute.json: 'demo' must be an object (a program or a group), got a number (5)"
    );
}

#[test]
fn empty_document_warns_about_no_programs() {
    let cfg = load("{ /* nothing */ }");
    assert!(cfg.programs.is_empty());
    assert_eq!(cfg.warnings, vec!["compute.json: no programs defined"]);
    // The built-in group always exists.
    assert!(cfg.groups["test"].is_ok());
}

// ---------------------------------------------------------------- values

#[test]
fn wrong_types_are_errors_naming_program_and_key() {
    assert_eq!(
        prog_err(r#""concurrency": "4""#),
        "compute.json: demo: 'concurrency' must be a number, got a string (\"4\")"
    );
    assert_eq!(
        prog_err(r#""ephemeral": 1"#),
        "compute.json: demo: 'ephemeral' must be true or false, got a number (1)"
    );
    assert_eq!(
        prog_err(r#""max_boot_time": "8s""#),
        "compute.json: demo: 'max_boot_time' must be a number of seconds, got a string (\"8s\")"
    );
    assert!(prog_err(r#""main_arguments": "--jitless""#).contains("must be an array of strings"));
    assert!(prog_err(r#""main_arguments": [1]"#).contains("entry 0 must be a string"));
    assert!(prog_err(r#""environment": ["NOEQUALS"]"#).contains("NAME=value"));
    assert!(prog_err(r#""warmup": []"#).contains("'warmup' must be an object"));
    assert!(prog_err(r#""warmup": {"url": "warmup"}"#).contains("starting with '/'"));
    assert!(prog_err(r#""warmup": {"headers": ["nocolon"]}"#).contains("Name: value"));
    assert!(prog_err(r#""key": 5"#).contains("'key' must be a string"));
    assert!(prog_err(r#""max_memory": null"#).contains("got null"));
}

#[test]
fn request_hugepages_true_is_a_type_error_not_one_megabyte() {
    // Reference bug not copied: `"request_hugepages": true` became 1 MB.
    assert_eq!(
        prog_err(r#""request_hugepages": true"#),
        "compute.json: demo: 'request_hugepages' must be a number of megabytes, got a boolean (true)"
    );
}

#[test]
fn negative_values_are_errors() {
    assert_eq!(
        prog_err(r#""max_memory": -64"#),
        "compute.json: demo: 'max_memory' must not be negative, got -64"
    );
    assert!(prog_err(r#""max_request_time": -1.5"#).contains("must not be negative, got -1.5"));
    assert!(prog_err(r#""concurrency": -1"#).contains("must not be negative"));
    assert!(prog_err(r#""shared_memory": -2.0"#).contains("must not be negative"));
}

#[test]
fn out_of_range_values_are_errors() {
    assert_eq!(
        prog_err(r#""concurrency": 0"#),
        "compute.json: demo: 'concurrency' must be between 1 and 255, got 0"
    );
    assert!(prog_err(r#""concurrency": 256"#).contains("between 1 and 255, got 256"));
    assert_eq!(
        ok(&load(&prog(r#""concurrency": 255"#)), "demo").concurrency,
        255
    );
    assert!(prog_err(r#""max_memory": 1048576"#).contains("at most 524288 MB (512 GB)"));
    assert!(prog_err(r#""address_space": 524290"#).contains("at most 524288 MB"));
    assert!(prog_err(r#""max_request_time": 0"#).contains("greater than 0"));
    assert!(prog_err(r#""max_boot_time": 1e9"#).contains("at most 86400 seconds"));
    assert!(prog_err(r#""max_memory": 0"#).contains("at least 2 MB"));
    assert!(prog_err(r#""max_request_memory": 0"#).contains("at least 1 MB"));
    assert!(prog_err(r#""smp": 17"#).contains("between 0 and 16"));
    assert_eq!(ok(&load(&prog(r#""smp": 16"#)), "demo").smp, 16);
    assert!(prog_err(r#""warmup": {"num_requests": 70000}"#).contains("between 0 and 65535"));
    assert!(prog_err(r#""concurrency": 2.5"#).contains("whole number"));
}

#[test]
fn granularity_is_enforced_not_rounded() {
    assert_eq!(
        prog_err(r#""max_memory": 3"#),
        "compute.json: demo: 'max_memory' must be a multiple of 2 MB, got 3"
    );
    assert!(prog_err(r#""shared_memory": 5"#).contains("multiple of 2 MB"));
    assert!(prog_err(r#""address_space": 1025"#).contains("multiple of 2 MB"));
    assert!(prog_err(r#""limit_workmem_after_req": 7"#).contains("multiple of 2 MB"));
    assert!(prog_err(r#""hugepage_arena_size": 1"#).contains("multiple of 2 MB"));
    // max_request_memory has a 1 MB granularity.
    assert_eq!(
        ok(&load(&prog(r#""max_request_memory": 33"#)), "demo").max_request_memory,
        33 * MB
    );
    // Integral floats are fine.
    assert_eq!(
        ok(&load(&prog(r#""max_memory": 64.0"#)), "demo").max_memory,
        64 * MB
    );
}

#[test]
fn several_errors_in_one_program_are_all_reported() {
    let e = err(&load(&prog(r#""max_memory": 3, "concurrency": 0"#)), "demo").clone();
    let ConfigError::Multiple(list) = &e else {
        panic!("unexpected {e:?}")
    };
    assert_eq!(list.len(), 2);
    assert_eq!(e.iter().count(), 2);
    let text = e.to_string();
    assert!(
        text.contains("'concurrency'") && text.contains("'max_memory'"),
        "{text}"
    );
}

#[test]
fn a_bad_program_does_not_affect_the_others() {
    let cfg = load(
        r#"{
		"good": { "filename": "/opt/good" },
		"bad": { "filename": "/opt/bad", "max_memory": 3 },
		"other": { "filename": "/opt/other", "websocket_server": { "port": 8081, "max_message": 3 } }
	}"#,
    );
    assert!(ok(&cfg, "good").filename.is_some());
    assert!(err(&cfg, "bad").to_string().contains("multiple of 2 MB"));
    let e = err(&cfg, "other").to_string();
    assert!(
        e.contains("websocket_server")
            && e.contains("\"max_message\" must be a whole number from 125"),
        "{e}"
    );
    assert!(cfg.has_errors());
    assert_eq!(cfg.errors().count(), 2);
    assert_eq!(
        cfg.valid_programs().map(|(n, _)| n).collect::<Vec<_>>(),
        vec!["good"]
    );
    cfg.log_errors();
}

#[test]
fn max_storage_time_sets_the_storage_time() {
    // Reference bug not copied: max_storage_time wrote max_request_time.
    let p = ok(
        &load(&prog(r#""max_storage_time": 3.0, "max_request_time": 7"#)),
        "demo",
    )
    .clone();
    assert_eq!(p.max_storage_time, Duration::from_secs(3));
    assert_eq!(p.max_request_time, Duration::from_secs(7));
    assert_eq!(p.max_boot_time, Duration::from_secs(16));
}

#[test]
fn program_without_filename_or_uri_is_an_error() {
    let cfg = load(r#"{ "g": {}, "demo": { "group": "g" } }"#);
    assert_eq!(
        err(&cfg, "demo").to_string(),
        "demo: a program needs a 'filename' or a 'uri'"
    );
    let cfg = load(r#"{ "demo": { "uri": "https://x/demo" } }"#);
    assert!(ok(&cfg, "demo").filename.is_none());
    assert!(load(&prog(r#""uri": """#)).programs["demo"].is_err());
    let e = load(&prog(r#""uri": "ftp://x/y""#)).programs["demo"]
        .clone()
        .unwrap_err();
    assert!(e.to_string().contains("unsupported uri"), "{e}");
}

// ---------------------------------------------------------------- groups

#[test]
fn unknown_group_names_program_and_group() {
    let cfg = load(r#"{ "demo": { "group": "nope", "filename": "/tmp/demo" } }"#);
    let e = err(&cfg, "demo");
    assert_eq!(
        *e,
        ConfigError::UnknownGroup {
            program: "demo".into(),
            group: "nope".into(),
            hint: " (groups: test)".into()
        }
    );
    assert_eq!(e.to_string(), "demo: unknown group 'nope' (groups: test)");
    // A typo of a defined group: did you mean.
    let cfg = load(
        r#"{ "edge": { "max_memory": 64 }, "demo": { "group": "egde", "filename": "/tmp/demo" } }"#,
    );
    assert_eq!(
        err(&cfg, "demo").to_string(),
        "demo: unknown group 'egde' (did you mean 'edge'?)"
    );
    assert!(cfg.has_errors());
}

#[test]
fn typo_keys_get_did_you_mean() {
    let cfg = load(
        r#"{ "demo": { "filename": "/tmp/demo", "concurency": 2, "max_memry": 64, "wholly_unknown": 1 },
             "server": { "max_conections": 5 } }"#,
    );
    let all = cfg.warnings.join("\n");
    assert!(
        all.contains("Unknown configuration key for 'demo': concurency (<test>) (did you mean 'concurrency'?)")
            || all.contains("concurency") && all.contains("(did you mean 'concurrency'?)"),
        "{all}"
    );
    assert!(all.contains("(did you mean 'max_memory'?)"), "{all}");
    assert!(all.contains("(did you mean 'max_connections'?)"), "{all}");
    let unknown = cfg
        .warnings
        .iter()
        .find(|w| w.contains("wholly_unknown"))
        .unwrap();
    assert!(!unknown.contains("did you mean"), "{unknown}");
}

#[test]
fn reserved_and_unreachable_program_names_are_errors() {
    for (name, why) in [
        ("metrics", "reserved"),
        ("_edgevm", "reserved"),
        ("my prog", "cannot be reached by a URL"),
        ("a/b", "cannot be reached by a URL"),
        ("caf\u{e9}", "cannot be reached by a URL"),
        ("q?x", "cannot be reached by a URL"),
        ("100%", "cannot be reached by a URL"),
        ("..", "dot segment"),
    ] {
        let text = format!(
            r#"{{ {}: {{ "filename": "/tmp/x" }}, "fine-name_1.2~": {{ "filename": "/tmp/y" }} }}"#,
            serde_json::to_string(name).unwrap()
        );
        let cfg = load(&text);
        let e = err(&cfg, name).to_string();
        assert!(e.contains(why), "{name}: {e}");
        assert!(cfg.program("fine-name_1.2~").is_some(), "{name}");
        assert!(cfg.has_errors());
    }
    // Group names never appear in URLs: anything goes.
    let cfg = load(r#"{ "my group": {}, "p": { "group": "my group", "filename": "/tmp/p" } }"#);
    assert!(cfg.program("p").is_some());
}

#[test]
fn invalid_group_fails_its_programs_only() {
    let cfg = load(
        r#"{
		"broken": { "max_memory": 3 },
		"a": { "group": "broken", "filename": "/a" },
		"b": { "filename": "/b" }
	}"#,
    );
    assert!(cfg.groups["broken"].is_err());
    let e = err(&cfg, "a").to_string();
    assert_eq!(
        e,
        "a: group 'broken' is invalid: compute.json: broken: 'max_memory' must be a multiple of 2 MB, got 3"
    );
    ok(&cfg, "b");
}

#[test]
fn program_settings_override_group_settings() {
    let cfg = load(
        r#"{
		"g": { "concurrency": 8, "max_memory": 128, "environment": ["A=1"], "main_arguments": ["--g"] },
		"p": { "group": "g", "filename": "/p", "max_memory": 1024,
		       "environment": ["B=2"], "main_arguments": ["--p"] }
	}"#,
    );
    let p = ok(&cfg, "p");
    assert_eq!(p.concurrency, 8);
    assert_eq!(p.max_memory, 1024 * MB);
    assert_eq!(p.environment, vec!["A=1", "B=2"]);
    assert_eq!(p.main_arguments, vec!["--p"]);
}

#[test]
fn the_test_group_can_be_customised() {
    let cfg = load(r#"{ "test": { "concurrency": 3 }, "demo": { "filename": "/d" } }"#);
    assert_eq!(ok(&cfg, "demo").concurrency, 3);
    assert_eq!(ok(&cfg, "demo").group, "test");
}

#[test]
fn invalid_group_key_type() {
    let cfg = load(r#"{ "demo": { "group": 5, "filename": "/d" } }"#);
    assert!(err(&cfg, "demo")
        .to_string()
        .contains("'group' must be a string"));
}

// ---------------------------------------------------------------- warnings

#[test]
fn unknown_key_is_a_warning() {
    let cfg = load(&prog(r#""colour": "blue""#));
    ok(&cfg, "demo");
    assert_eq!(
        cfg.warnings,
        vec!["Unknown configuration key for 'demo': colour (compute.json)"]
    );
}

#[test]
fn unknown_keys_in_groups_and_nested_objects_are_warnings() {
    let cfg = load(
        r#"{ "g": { "flavour": 1 },
		"demo": { "group": "g", "filename": "/d", "warmup": { "num_requests": 1, "speed": 9 } } }"#,
    );
    ok(&cfg, "demo");
    assert_eq!(cfg.warnings.len(), 2, "{:?}", cfg.warnings);
    assert!(cfg.warnings[0].starts_with("Unknown configuration key for 'g': flavour"));
    assert!(cfg.warnings[1].starts_with("Unknown configuration key for 'demo': warmup.speed"));
}

// ---------------------------------------------------------------- layering

#[test]
fn later_file_overrides_program_keys() {
    let cfg = load_many(&[
        (
            "base.json",
            r#"{ "g": { "concurrency": 4 },
			   "demo": { "group": "g", "filename": "/tmp/demo", "max_memory": 64,
			             "environment": ["A=1"] } }"#,
        ),
        (
            "site.json",
            r#"{ "demo": { "concurrency": 1, "max_request_time": 2.5, "environment": ["B=2"] } }"#,
        ),
    ]);
    assert_eq!(cfg.sources, vec!["base.json", "site.json"]);
    let p = ok(&cfg, "demo");
    assert_eq!(p.group, "g");
    assert_eq!(p.concurrency, 1);
    assert_eq!(p.max_memory, 64 * MB);
    assert_eq!(p.max_request_time, Duration::from_millis(2500));
    assert_eq!(p.environment, vec!["A=1", "B=2"]);
    // The override object has no program keys, yet it is not a group.
    assert!(!cfg.groups.contains_key("demo"));
}

#[test]
fn later_file_overrides_group_for_all_its_programs() {
    let cfg = load_many(&[
        (
            "base.json",
            r#"{ "g": { "concurrency": 4, "max_memory": 64 }, "demo": { "group": "g", "filename": "/d" } }"#,
        ),
        ("site.json", r#"{ "g": { "max_memory": 128 } }"#),
    ]);
    let p = ok(&cfg, "demo");
    assert_eq!(p.concurrency, 4);
    assert_eq!(p.max_memory, 128 * MB);
}

#[test]
fn later_file_can_add_programs_and_use_earlier_groups() {
    let cfg = load_many(&[
        ("a.json", r#"{ "g": { "concurrency": 5 } }"#),
        ("b.json", r#"{ "p": { "group": "g", "filename": "/p" } }"#),
    ]);
    assert_eq!(ok(&cfg, "p").concurrency, 5);
}

#[test]
fn group_of_an_existing_program_cannot_change() {
    let cfg = load_many(&[
        (
            "base.json",
            r#"{ "g": {}, "h": {}, "demo": { "group": "g", "filename": "/d" }, "other": { "filename": "/o" } }"#,
        ),
        (
            "site.json",
            r#"{ "demo": { "group": "h" }, "other": { "group": "g" } }"#,
        ),
    ]);
    assert_eq!(
        err(&cfg, "demo").to_string(),
        "demo: the group of an existing program cannot be changed (was 'g', site.json says 'h')"
    );
    // No group at first means the built-in one; moving away is refused too.
    assert!(matches!(
        err(&cfg, "other"),
        ConfigError::GroupChanged { .. }
    ));
}

#[test]
fn repeating_the_same_group_in_an_override_is_fine() {
    let cfg = load_many(&[
        (
            "a.json",
            r#"{ "g": {}, "demo": { "group": "g", "filename": "/d" } }"#,
        ),
        (
            "b.json",
            r#"{ "demo": { "group": "g", "concurrency": 7 } }"#,
        ),
    ]);
    assert_eq!(ok(&cfg, "demo").concurrency, 7);
}

#[test]
fn a_syntax_error_in_any_file_fails_the_load() {
    let sources = vec![
        (
            "a.json".to_string(),
            r#"{ "demo": { "filename": "/d" } }"#.to_string(),
        ),
        (
            "b.json".to_string(),
            "{ \"demo\": { \"concurrency\": 1, } }".to_string(),
        ),
    ];
    let e = Config::from_sources(&sources, &vars()).unwrap_err();
    assert_eq!(e.to_string(), "b.json:1:29: trailing comma");
}

#[test]
fn load_files_reads_and_merges_files() {
    let dir = std::env::temp_dir().join(format!("edgevm-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.json");
    let b = dir.join("b.json");
    std::fs::write(&a, r#"{ "demo": { "filename": "/d" } } // base"#).unwrap();
    std::fs::write(&b, r#"{ "demo": { "concurrency": 9 } }"#).unwrap();
    let cfg = Config::load_files(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(ok(&cfg, "demo").concurrency, 9);
    assert_eq!(
        cfg.sources,
        vec![a.display().to_string(), b.display().to_string()]
    );
    let missing = dir.join("missing.json");
    let e = Config::load_files(std::slice::from_ref(&missing)).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(
        e.to_string().starts_with(&missing.display().to_string()),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn from_str_uses_the_source_name() {
    let e = Config::from_str("{,}", "inline").unwrap_err();
    assert!(e.to_string().starts_with("inline:1:2: "), "{e}");
    let cfg = Config::from_str(r#"{ "demo": { "filename": "/d" } }"#, "inline").unwrap();
    assert_eq!(cfg.sources, vec!["inline"]);
}

// ---------------------------------------------------------------- special keys

#[test]
fn req_mem_limit_after_reset_is_an_alias() {
    let a = ok(&load(&prog(r#""req_mem_limit_after_reset": 16"#)), "demo").clone();
    let b = ok(&load(&prog(r#""limit_workmem_after_req": 16"#)), "demo").clone();
    assert_eq!(a, b);
    assert_eq!(a.limit_workmem_after_req, 16 * MB);
    let e = prog_err(r#""req_mem_limit_after_reset": 16, "limit_workmem_after_req": 8"#);
    assert!(e.contains("is given twice"), "{e}");
}

#[test]
fn ephemeral_keep_working_memory_implies_ephemeral() {
    let cfg = load(
        r#"{
		"nonephemeral": { "ephemeral": false },
		"a": { "group": "nonephemeral", "filename": "/a", "ephemeral_keep_working_memory": true },
		"b": { "group": "nonephemeral", "filename": "/b" },
		"kwm": { "ephemeral_keep_working_memory": true },
		"c": { "group": "kwm", "filename": "/c", "ephemeral": false },
		"d": { "group": "kwm", "filename": "/d" },
		"e": { "filename": "/e", "ephemeral": false, "ephemeral_keep_working_memory": true },
		"f": { "filename": "/f", "ephemeral": true, "ephemeral_keep_working_memory": true }
	}"#,
    );
    let a = ok(&cfg, "a");
    assert!(a.ephemeral && a.ephemeral_keep_working_memory);
    let b = ok(&cfg, "b");
    assert!(!b.ephemeral && !b.ephemeral_keep_working_memory);
    // Turning ephemeral off clears keep-working-memory inherited from the group.
    let c = ok(&cfg, "c");
    assert!(!c.ephemeral && !c.ephemeral_keep_working_memory);
    let d = ok(&cfg, "d");
    assert!(d.ephemeral && d.ephemeral_keep_working_memory);
    assert!(err(&cfg, "e").to_string().contains("requires 'ephemeral'"));
    let f = ok(&cfg, "f");
    assert!(f.ephemeral && f.ephemeral_keep_working_memory);
}

#[test]
fn address_space_is_raised_to_fit_memory() {
    let p = ok(
        &load(&prog(r#""max_memory": 1024, "address_space": 64"#)),
        "demo",
    )
    .clone();
    assert_eq!(p.address_space, 1024 * MB);
    let p = ok(
        &load(&prog(r#""max_memory": 1024, "shared_memory": 64"#)),
        "demo",
    )
    .clone();
    assert_eq!(p.address_space, 1088 * MB);
    let p = ok(&load(&prog(r#""address_space": 65536"#)), "demo").clone();
    assert_eq!(p.address_space, 65536 * MB);
    assert_eq!(p.max_memory, 256 * MB);
    // Small max_memory: the address space follows it.
    let p = ok(&load(&prog(r#""max_memory": 64"#)), "demo").clone();
    assert_eq!(p.address_space, 64 * MB);
    // Raised from a group's max_memory too.
    let cfg = load(
        r#"{ "g": { "max_memory": 2048 }, "demo": { "group": "g", "filename": "/d", "address_space": 1024 } }"#,
    );
    assert_eq!(ok(&cfg, "demo").address_space, 2048 * MB);
    // Too big together.
    let e = prog_err(r#""max_memory": 524288, "shared_memory": 2"#);
    assert!(e.contains("exceed the 512 GB address space"), "{e}");
}

#[test]
fn home_and_pwd_are_expanded() {
    let cfg = load(
        r#"{ "demo": {
		"filename": "$HOME/bin/demo",
		"main_arguments": ["--root=$PWD/www", "$HOMEDIR", "$$HOME"],
		"environment": ["DATA=$HOME/data", "CWD=$PWD"],
		"allowed_paths": ["$HOME/share"]
	} }"#,
    );
    assert_eq!(ok(&cfg, "demo").allowed_paths[0].real, "/home/user/share");
    let cfg = load(
        r#"{ "demo": {
		"filename": "$HOME/bin/demo",
		"main_arguments": ["--root=$PWD/www", "$HOMEDIR", "$$HOME"],
		"environment": ["DATA=$HOME/data", "CWD=$PWD"]
	} }"#,
    );
    let p = ok(&cfg, "demo");
    assert_eq!(p.filename, Some(PathBuf::from("/home/user/bin/demo")));
    assert_eq!(
        p.main_arguments,
        vec!["--root=/srv/app/www", "$HOMEDIR", "$/home/user"]
    );
    assert_eq!(p.environment, vec!["DATA=/home/user/data", "CWD=/srv/app"]);
}

#[test]
fn expansion_of_an_unset_variable_is_an_error() {
    let vars = PathVars {
        home: None,
        pwd: Some("/srv".into()),
    };
    let cfg = Config::from_sources(
        &[(
            "c.json".to_string(),
            r#"{ "demo": { "filename": "$HOME/demo" } }"#.to_string(),
        )],
        &vars,
    )
    .unwrap();
    assert_eq!(
        err(&cfg, "demo").to_string(),
        "c.json: demo: 'filename' uses $HOME, but HOME is not set"
    );
    assert_eq!(vars.expand("$PWD/x").unwrap(), "/srv/x");
    assert_eq!(vars.expand("no vars").unwrap(), "no vars");
    assert_eq!(vars.expand("trailing $").unwrap(), "trailing $");
}

#[test]
fn path_vars_from_env_has_a_pwd() {
    assert!(PathVars::from_env().pwd.is_some());
}

// ---------------------------------------------------------------- snapshots

#[test]
fn cold_start_file_and_snapshot_dir() {
    let cfg = load(&prog(
        r#""cold_start_file": "/var/lib/edgevm/demo.snapshot""#,
    ));
    let p = ok(&cfg, "demo");
    assert_eq!(
        p.cold_start_file.as_deref(),
        Some(std::path::Path::new("/var/lib/edgevm/demo.snapshot"))
    );
    for bad in [r#""""#, "3", "true"] {
        let cfg = load(&prog(&format!("\"cold_start_file\": {bad}")));
        err(&cfg, "demo");
    }
    let cfg = load(&prog(r#""storage": true, "cold_start_file": "/s/demo""#));
    assert!(err(&cfg, "demo")
        .to_string()
        .contains("'cold_start_file' cannot be used with 'storage'"));
    let mut s = ServerConfig::default();
    s.set_from_str("snapshot_dir", "/var/lib/edgevm/snapshots")
        .unwrap();
    assert_eq!(
        s.snapshot_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/edgevm/snapshots"))
    );
    assert!(s.set_from_str("snapshot_dir", "").is_err());
}

// ---------------------------------------------------------------- not supported yet

#[test]
fn not_supported_keys_are_fine_at_their_default() {
    let cfg = load(&prog(
        r#""allowed_paths": [], "current_working_directory": "/",
        "mmap_backed_files": true,
        "hugepages": false, "hugepage_arena_size": 0, "request_hugepage_arena_size": 0,
        "split_hugepages": true, "remapping": {}, "blackout_area": {}, "verbose_pagetables": false,
        "download": [], "smp": 0, "stdout": false, "cold_start_file": null, "transparent_hugepages": false,
        "executable_heap": false, "relocate_fixed_mmap": true"#
            .replace(r#", "cold_start_file": null"#, "")
            .as_str(),
    ));
    ok(&cfg, "demo");
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn pins_need_a_uri_and_downloads_a_known_scheme() {
    let sha = "ab".repeat(32);
    let cfg = load(&prog(&format!(r#""sha256": "{sha}""#)));
    let e = err(&cfg, "demo").to_string();
    assert!(e.contains("this program has no 'uri'"), "{e}");
    let cfg = load(&format!(
        r#"{{ "demo": {{ "uri": "https://x/demo", "filename": "/tmp/demo", "md5": "{}",
            "download": [{{ "uri": "file:///srv/model", "filepath": "/tmp/m", "sha256": "{sha}" }}] }} }}"#,
        "cd".repeat(16)
    ));
    let p = ok(&cfg, "demo");
    assert_eq!(p.md5.as_deref(), Some("cd".repeat(16).as_str()));
    assert_eq!(p.download[0].sha256.as_deref(), Some(sha.as_str()));
    let cfg = load(&prog(
        r#""download": [{ "uri": "ftp://x/y", "filepath": "/tmp/y" }]"#,
    ));
    let e = err(&cfg, "demo").to_string();
    assert!(e.contains("unsupported uri"), "{e}");
}

#[test]
fn a_websocket_server_inherited_from_a_group_applies_to_its_programs() {
    let cfg = load(
        r#"{ "ws": { "websocket_server": { "port": 8081 } },
		"a": { "group": "ws", "filename": "/a" },
		"b": { "filename": "/b" } }"#,
    );
    assert!(cfg.groups["ws"].is_ok());
    let w = ok(&cfg, "a").websocket_server.clone().unwrap();
    assert_eq!(w.max_message, Some(1 << 20));
    assert!(ok(&cfg, "b").websocket_server.is_none());
}

#[test]
fn debug_keys() {
    let cfg = load(&prog(
        r#""allow_debug": true, "remote_debug_on_exception": true, "debug_listen": "localhost:3000""#,
    ));
    let p = ok(&cfg, "demo");
    assert!(p.allow_debug && p.remote_debug_on_exception);
    assert_eq!(p.debug_listen.to_string(), "127.0.0.1:3000");
    let cfg = load(&prog(r#""allow_debug": true"#));
    assert_eq!(ok(&cfg, "demo").debug_listen.to_string(), "127.0.0.1:2159");
    assert!(prog_err(r#""debug_listen": "2159""#).contains("address and port"));
    assert!(prog_err(r#""debug_listen": 2159"#).contains("must be a string"));
    assert!(prog_err(r#""allow_debug": "yes""#).contains("must be true or false"));
}

#[test]
fn not_supported_keys_are_still_validated() {
    assert!(prog_err(r#""hugepages": "yes""#).contains("must be true or false"));
    assert!(prog_err(r#""allowed_paths": [{"virtual": "/x"}]"#).contains("needs a \"real\" path"));
    assert!(prog_err(r#""remapping": {"h": ["0x100", 2]}"#).contains("below the minimum 0x20000"));
    assert!(prog_err(r#""sha256": "xyz""#).contains("64 hexadecimal digits"));
    assert!(prog_err(r#""current_working_directory": "rel""#).contains("absolute path"));
    assert!(prog_err(r#""server": 8080"#).contains("must be an object"));
    assert!(prog_err(r#""download": [{"uri": "https://x"}]"#).contains("needs \"filepath\""));
}

#[test]
fn key_table_reports_support() {
    assert_eq!(key_support("concurrency"), Some(Support::Supported));
    assert_eq!(
        key_support("req_mem_limit_after_reset"),
        Some(Support::Supported)
    );
    assert_eq!(key_support("request_hugepages"), Some(Support::Supported));
    assert_eq!(key_support("colour"), None);
    let names: Vec<_> = known_keys().map(|(n, _)| n).collect();
    for glossary_key in [
        "group",
        "uri",
        "filename",
        "concurrency",
        "start",
        "storage",
        "max_boot_time",
        "max_request_time",
        "max_storage_time",
        "max_memory",
        "max_request_memory",
        "limit_workmem_after_req",
        "shared_memory",
        "address_space",
        "hugepages",
        "hugepage_arena_size",
        "request_hugepage_arena_size",
        "split_hugepages",
        "ephemeral",
        "ephemeral_keep_working_memory",
        "control_ephemeral",
        "allow_debug",
        "remote_debug_on_exception",
        "main_arguments",
        "environment",
        "allowed_paths",
        "current_working_directory",
        "mmap_backed_files",
        "verbose",
        "verbose_syscalls",
        "verbose_pagetables",
        "remapping",
        "blackout_area",
        "warmup",
    ] {
        assert!(names.contains(&glossary_key), "{glossary_key}");
    }
}

// ---------------------------------------------------------------- remapping and paths

/// Parse a not-supported-yet key's value through a group (groups are not
/// checked for support), to inspect the parsed form.
fn group_settings(extra: &str) -> ProgramConfig {
    let cfg = load(&format!(r#"{{ "g": {{ {extra} }} }}"#));
    match &cfg.groups["g"] {
        Ok(g) => g.clone(),
        Err(e) => panic!("group failed: {e}"),
    }
}

#[test]
fn remapping_object_form() {
    let g = group_settings(
        r#""remapping": { "caged_heap": ["0x1000000000", 256], "another_heap": ["0xC00000000", "0xC04000000"] }"#,
    );
    assert_eq!(
        g.remapping,
        vec![
            Remapping {
                name: "another_heap".into(),
                address: 0xC_0000_0000,
                size: 64 * MB
            },
            Remapping {
                name: "caged_heap".into(),
                address: 0x10_0000_0000,
                size: 256 * MB
            },
        ]
    );
    assert_eq!(g.remapping[0].end(), 0xC_0400_0000);
}

#[test]
fn remapping_array_forms() {
    let g = group_settings(r#""remapping": ["0x1000000000", 256]"#);
    assert_eq!(
        g.remapping,
        vec![Remapping {
            name: "remapping[0]".into(),
            address: 0x10_0000_0000,
            size: 256 * MB
        }]
    );
    let g =
        group_settings(r#""blackout_area": [["0x200000000", "0x1000000000"], ["40000000", 2]]"#);
    assert_eq!(g.blackout_area.len(), 2);
    assert_eq!(g.blackout_area[0].name, "blackout_area[0]");
    assert_eq!(g.blackout_area[0].size, 0x10_0000_0000 - 0x2_0000_0000);
    assert_eq!(g.blackout_area[1].address, 0x4000_0000);
    assert_eq!(g.blackout_area[1].size, 2 * MB);
}

#[test]
fn remapping_errors() {
    let e = |v: &str| prog_err(&format!(r#""remapping": {v}"#));
    assert!(e(r#"{"h": ["0x1000000000"]}"#).contains("wrong length"));
    assert!(e(r#"{"h": ["zz", 2]}"#).contains("hex string"));
    assert!(e(r#"{"h": [4096, 2]}"#).contains("hex string"));
    assert!(e(r#"{"h": ["0x1000000000", "0x100000"]}"#).contains("must be above"));
    assert!(e(r#"{"h": ["0x1000000000", 0]}"#).contains("at least 1 MB"));
    assert!(e(r#"{"h": ["0x1000000001", 2]}"#).contains("4 KiB aligned"));
    assert!(e(r#"{"h": ["0xFFFFFFFFFFFFF000", 2]}"#).contains("does not fit"));
    assert!(e("5").contains("must be an object"));
}

#[test]
fn allowed_paths_strings_and_objects() {
    let g = group_settings(
        r#""allowed_paths": [
			"/dev/urandom",
			"$HOME/deno",
			{ "virtual": "/main.ts", "real": "/home/deno/main.ts" },
			{ "real": "/home/gonzo/.cache/deno/remote", "writable": true, "prefix": true },
			{ "virtual": "/proc/self/exe", "real": "/home/user/myprogram.elf", "symlink": true }
		]"#,
    );
    let p = &g.allowed_paths;
    assert_eq!(p.len(), 5);
    assert_eq!(p[0].real, "/dev/urandom");
    assert_eq!(p[0].virtual_path, "/dev/urandom");
    assert_eq!(p[1].real, "/home/user/deno");
    assert_eq!(p[2].virtual_path, "/main.ts");
    assert_eq!(p[2].real, "/home/deno/main.ts");
    assert!(p[3].writable && p[3].prefix && !p[3].symlink);
    assert_eq!(p[3].virtual_path, p[3].real);
    assert!(p[4].symlink);
}

#[test]
fn current_working_directory_expands_vars() {
    let g = group_settings(r#""current_working_directory": "$PWD/root""#);
    assert_eq!(g.current_working_directory, "/srv/app/root");
}

// ---------------------------------------------------------------- rendering

#[test]
fn render_check_lists_everything() {
    let cfg = load(
        r#"{
		"good": { "filename": "/opt/good", "colour": 1 },
		"bad": { "filename": "/opt/bad", "max_memory": 3 }
	}"#,
    );
    let out = cfg.render_check();
    assert!(
        out.starts_with(
            "2 program(s): 1 ok, 1 failed; 1 group(s); 1 warning(s); sources: compute.json"
        ),
        "{out}"
    );
    assert!(
        out.contains("warning: Unknown configuration key for 'good': colour"),
        "{out}"
    );
    assert!(
        out.contains(
            "error: program 'bad': compute.json: 'max_memory' must be a multiple of 2 MB, got 3"
        ),
        "{out}"
    );
    assert!(out.contains("\"good\": {"), "{out}");
    assert!(out.contains("\"max_memory\": 256"), "{out}");
    assert!(out.contains("\"max_request_time\": 8.0"), "{out}");
    assert!(!out.contains("\"bad\": {"), "{out}");
}

#[test]
fn rendered_settings_load_back_identically() {
    let cfg = load(
        r#"{
		"g": { "concurrency": 8, "max_memory": 1024, "max_request_time": 2.5 },
		"demo": { "group": "g", "filename": "/tmp/demo", "uri": "https://x/demo",
		          "environment": ["A=B"], "main_arguments": ["-v"],
		          "warmup": { "num_requests": 3, "url": "/w", "method": "post", "headers": ["X: y"] },
		          "shared_memory": 16, "limit_workmem_after_req": 32,
		          "ephemeral_keep_working_memory": true, "storage": true }
	}"#,
    );
    let demo = ok(&cfg, "demo").clone();
    assert_eq!(demo.warmup.as_ref().unwrap().method, "POST");
    let json = demo.to_pretty_json();
    let mut text = String::from("{ \"g\": {}, \"demo\": ");
    text.push_str(&json);
    text.push('}');
    let again = load(&text);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    assert_eq!(*ok(&again, "demo"), demo);
}

#[test]
fn rendered_remapping_uses_object_form() {
    let g = group_settings(
        r#""remapping": { "h": ["0x1000000000", 256], "odd": ["0x40000000", "0x40001000"] }"#,
    );
    let v: serde_json::Value = serde_json::from_str(&g.to_pretty_json()).unwrap();
    assert_eq!(
        v["remapping"]["h"],
        serde_json::json!(["0x1000000000", 256])
    );
    assert_eq!(
        v["remapping"]["odd"],
        serde_json::json!(["0x40000000", "0x40001000"])
    );
}

#[test]
fn config_error_helpers() {
    assert_eq!(ConfigError::combine(vec![]), None);
    let one = ConfigError::NotSupported {
        name: "p".into(),
        key: "k".into(),
    };
    assert_eq!(ConfigError::combine(vec![one.clone()]), Some(one.clone()));
    assert_eq!(one.iter().count(), 1);
}

#[test]
#[ignore = "prints a sample report; run with --ignored --nocapture"]
fn print_sample_report() {
    let cfg = load(
        r#"{ "compute": { "concurrency": 4 },
		"demo": { "group": "compute", "filename": "/tmp/demo", "colour": 1,
		          "remapping": {} },
		"bad": { "filename": "/tmp/bad", "max_memory": 3, "hugepages": 1 } }"#,
    );
    println!("{}", cfg.render_check());
}

#[test]
fn duplicate_names_and_keys_are_warnings() {
    let cfg = load(
        r#"{
		"demo": { "filename": "/a" },
		"demo": { "filename": "/b", "concurrency": 3, "concurrency": 4 }
	}"#,
    );
    assert_eq!(ok(&cfg, "demo").filename, Some(PathBuf::from("/b")));
    assert_eq!(ok(&cfg, "demo").concurrency, 4);
    assert_eq!(
        cfg.warnings,
        vec![
            "compute.json: 'demo'.'concurrency' is given more than once; the last one is used",
            "compute.json: 'demo' is given more than once; the last one is used",
        ]
    );
}

#[test]
fn truncated_and_mutated_documents_never_panic() {
    let text = r#"{ "g": { "max_memory": 64, "remapping": {"h": ["0x1000000000", 2]} },
	/* c */ "p": { "group": "g", "filename": "$HOME/p", "warmup": {"headers": ["A: b"]},
	"allowed_paths": ["/x", {"real": "/y"}], "environment": ["A=1"] } // end
}"#;
    for end in 0..=text.len() {
        if text.is_char_boundary(end) {
            let _ = Config::from_sources(&[("t".into(), text[..end].to_string())], &vars());
        }
    }
    for (i, _) in text.char_indices() {
        for replacement in ["", ",", "-", "1e400", "\"", "[", "{}", "true", "null"] {
            let mut t = text.to_string();
            t.replace_range(i..i + 1, replacement);
            if let Ok(cfg) = Config::from_sources(&[("t".into(), t)], &vars()) {
                let _ = cfg.render_check();
            }
        }
    }
}

#[test]
fn server_section_sets_server_settings_and_is_not_a_program() {
    let cfg = load(
        r#"{ "server": { "listen": "0.0.0.0:9000", "max_connections": 50,
		"header_timeout": 2.5, "idle_timeout": 30, "body_timeout": 5,
		"max_header_size": 16, "max_headers": 40, "max_body_size": 0.5 },
		"p": { "filename": "/p" } }"#,
    );
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert!(!cfg.groups.contains_key("server") && !cfg.programs.contains_key("server"));
    let s = &cfg.server;
    assert_eq!(s.listen, Some("0.0.0.0:9000".parse().unwrap()));
    assert_eq!(s.max_connections, Some(50));
    assert_eq!(s.header_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(s.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(s.body_timeout, Some(Duration::from_secs(5)));
    assert_eq!(s.max_header_size, Some(16 << 10));
    assert_eq!(s.max_headers, Some(40));
    assert_eq!(s.max_body_size, Some(512 << 10));
    let report = cfg.render_check();
    assert!(
        report.contains(r#"server settings: {"body_timeout":5.0"#),
        "{report}"
    );
    // Without a server section, nothing is set and the report does not mention it.
    let plain = load(r#"{ "p": { "filename": "/p" } }"#);
    assert!(plain.server.is_empty());
    assert!(!plain.render_check().contains("server settings"));
}

#[test]
fn server_section_layers_and_validates() {
    let cfg = load_many(&[
        (
            "a.json",
            r#"{ "server": { "idle_timeout": 30, "max_connections": 10 }, "p": { "filename": "/p" } }"#,
        ),
        (
            "b.json",
            r#"{ "server": { "max_connections": 20, "colour": 1 } }"#,
        ),
    ]);
    assert_eq!(cfg.server.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(cfg.server.max_connections, Some(20));
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(
        cfg.warnings[0].starts_with("Unknown configuration key for 'server': colour (b.json)"),
        "{:?}",
        cfg.warnings
    );

    for (bad, why) in [
        (r#""max_connections": 0"#, "from 1 to 1000000"),
        (r#""max_connections": 1.5"#, "whole number"),
        (r#""max_headers": 513"#, "from 1 to 512"),
        (r#""header_timeout": 0"#, "greater than 0"),
        (r#""idle_timeout": -1"#, "greater than 0"),
        (r#""body_timeout": "5""#, "must be a number"),
        (r#""max_body_size": 17"#, "at most 16"),
        (r#""max_header_size": 257"#, "at most 256"),
        (r#""listen": "localhost""#, "address and port"),
        (r#""listen": 8080"#, "must be a string"),
        (r#""listen": "localhost:99999""#, "address and port"),
        (r#""listen": "example.com:80""#, "address and port"),
        (r#""log_requests": 1"#, "true or false"),
        (r#""error_details": "yes""#, "true or false"),
    ] {
        let e = load_err(&format!(
            r#"{{ "server": {{ {bad} }}, "p": {{ "filename": "/p" }} }}"#
        ))
        .to_string();
        assert!(
            e.contains("server: '") && e.contains(why),
            "{bad}: {e} (wanted {why:?})"
        );
    }
    let e = load_err(r#"{ "server": 1 }"#).to_string();
    assert!(e.contains("'server' must be an object"), "{e}");
    let e = load_err(r#"{ "server": { "filename": "/p" } }"#).to_string();
    assert!(e.contains("cannot be a program"), "{e}");
    // Two bad values: both reported.
    let e = load_err(r#"{ "server": { "max_headers": 0, "idle_timeout": 0 } }"#).to_string();
    assert!(
        e.contains("max_headers") && e.contains("idle_timeout"),
        "{e}"
    );
}

#[test]
fn server_settings_from_the_command_line_are_validated_like_json() {
    let mut s = ServerConfig::default();
    s.set_from_str("listen", "127.0.0.1:1234").unwrap();
    s.set_from_str("max_body_size", "2").unwrap();
    s.set_from_str("header_timeout", "0.25").unwrap();
    assert_eq!(s.listen, Some("127.0.0.1:1234".parse().unwrap()));
    assert_eq!(s.max_body_size, Some(2 << 20));
    assert_eq!(s.header_timeout, Some(Duration::from_millis(250)));
    let e = s
        .set_from_str("max_body_size", "100")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("command line") && e.contains("at most 16"),
        "{e}"
    );
    let e = s
        .set_from_str("idle_timeout", "abc")
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be a number"), "{e}");
    assert!(s.set_from_str("nonsense", "1").is_err());
    // localhost is 127.0.0.1; the switches take true/false.
    s.set_from_str("listen", "localhost:8081").unwrap();
    assert_eq!(s.listen, Some("127.0.0.1:8081".parse().unwrap()));
    s.set_from_str("log_requests", "false").unwrap();
    s.set_from_str("error_details", "true").unwrap();
    assert_eq!((s.log_requests, s.error_details), (Some(false), Some(true)));
    assert!(s.set_from_str("log_requests", "maybe").is_err());
}

#[test]
fn listen_on_a_unix_socket_with_mode_owner_and_a_drain_period() {
    let cfg = load(
        r#"{ "server": { "listen": "unix:/run/edgevm/e.sock", "listen_mode": "0660",
		"listen_owner": "edgevm:varnish", "drain_seconds": 0 },
		"p": { "filename": "/p" } }"#,
    );
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let s = &cfg.server;
    assert_eq!(s.listen, None);
    assert_eq!(
        s.listen_unix.as_deref(),
        Some(std::path::Path::new("/run/edgevm/e.sock"))
    );
    assert_eq!(s.listen_mode, Some(0o660));
    assert_eq!(s.listen_owner.as_deref(), Some("edgevm:varnish"));
    assert_eq!(s.drain_seconds, Some(Duration::ZERO));
    s.check().unwrap();
    let report = cfg.render_check();
    assert!(
        report.contains(r#""listen":"unix:/run/edgevm/e.sock""#)
            && report.contains(r#""listen_mode":"0660""#),
        "{report}"
    );
    // A later TCP address replaces the socket, and the other way round.
    let mut s = s.clone();
    s.set_from_str("listen", "127.0.0.1:80").unwrap();
    assert_eq!(
        (s.listen, s.listen_unix.clone()),
        (Some("127.0.0.1:80".parse().unwrap()), None)
    );
    // Mode and owner without a socket mean nothing: refused.
    let e = s.check().unwrap_err().to_string();
    assert!(
        e.contains("listen_mode") && e.contains("Unix socket only"),
        "{e}"
    );
    s.set_from_str("listen", "unix:/tmp/s").unwrap();
    assert_eq!(s.listen, None);
    s.check().unwrap();

    for (bad, why) in [
        (r#""listen": "unix:relative""#, "absolute path"),
        (r#""listen": "unix:""#, "absolute path"),
        (r#""listen_mode": 660"#, "as a string"),
        (r#""listen_mode": "0999""#, "octal"),
        (r#""listen_mode": "01777""#, "octal"),
        (r#""listen_mode": """#, "octal"),
        (r#""listen_owner": "a:b:c""#, "user:group"),
        (r#""listen_owner": "-rf""#, "user:group"),
        (r#""listen_owner": ":""#, "user:group"),
        (r#""listen_owner": 0"#, "must be a string"),
        (r#""drain_seconds": -1"#, "from 0 to"),
        (r#""drain_seconds": "5""#, "must be a number"),
        (r#""trusted_frontends": "127.0.0.1""#, "must be a list"),
        (r#""trusted_frontends": [1]"#, "must be strings"),
        (r#""trusted_frontends": ["10.0.0.0/33"]"#, "a network"),
        (r#""trusted_frontends": ["localhost"]"#, "a network"),
    ] {
        let e = load_err(&format!(
            r#"{{ "server": {{ {bad} }}, "p": {{ "filename": "/p" }} }}"#
        ))
        .to_string();
        assert!(e.contains(why), "{bad}: {e} (wanted {why:?})");
    }
}

// ---------------------------------------------------------------- scale (issue 18)

#[test]
fn max_queue_and_free_idle_vms_after() {
    let d = ok(&load(&prog("")), "demo").clone();
    assert_eq!(d.max_queue, crate::DEFAULT_MAX_QUEUE);
    assert_eq!(d.free_idle_vms_after, None);
    let c = load(&prog(r#""max_queue": 0, "free_idle_vms_after": 1.5"#));
    let p = ok(&c, "demo");
    assert_eq!(p.max_queue, 0);
    assert_eq!(p.free_idle_vms_after, Some(Duration::from_millis(1500)));
    assert_eq!(
        ok(&load(&prog(r#""free_idle_vms_after": 0"#)), "demo").free_idle_vms_after,
        None
    );
    for bad in [
        r#""max_queue": -1"#,
        r#""max_queue": 8193"#,
        r#""max_queue": "many""#,
        r#""free_idle_vms_after": -1"#,
        r#""free_idle_vms_after": "soon""#,
        r#""free_idle_vms_after": 1e12"#,
    ] {
        let c = load(&prog(bad));
        let e = err(&c, "demo").to_string();
        assert!(
            e.contains("max_queue") || e.contains("free_idle_vms_after"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn trusted_frontends_match_addresses_networks_and_the_unix_socket() {
    use crate::TrustedFrontend as T;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let net = T::parse("10.1.0.0/16").unwrap();
    assert!(net.contains_ip(ip("10.1.200.3")));
    assert!(!net.contains_ip(ip("10.2.0.1")));
    // IPv4-mapped IPv6 peers count as IPv4.
    assert!(net.contains_ip(ip("::ffff:10.1.0.9")));
    let one = T::parse("127.0.0.1").unwrap();
    assert!(one.contains_ip(ip("127.0.0.1")) && !one.contains_ip(ip("127.0.0.2")));
    assert!(!one.contains_ip(ip("::1")));
    let all = T::parse("0.0.0.0/0").unwrap();
    assert!(all.contains_ip(ip("192.0.2.1")) && !all.contains_ip(ip("2001:db8::1")));
    let v6 = T::parse("fd00::/8").unwrap();
    assert!(v6.contains_ip(ip("fd12::1")) && !v6.contains_ip(ip("fe80::1")));
    let unix = T::parse("unix").unwrap();
    assert!(unix.is_unix() && !unix.contains_ip(ip("127.0.0.1")));
    let cfg = load(
        r#"{ "server": { "trusted_frontends": ["127.0.0.1", "10.0.0.0/8", "unix"] },
		"p": { "filename": "/p" } }"#,
    );
    assert_eq!(cfg.server.trusted_frontends.as_ref().map(Vec::len), Some(3));
    assert!(
        cfg.render_check()
            .contains(r#""trusted_frontends":["127.0.0.1/32","10.0.0.0/8","unix"]"#),
        "{}",
        cfg.render_check()
    );
}

#[test]
fn server_mode_keys() {
    let cfg = load(&prog(
        r#""server": { "port": 6390, "systems": 3, "idle_timeout": 5 }"#,
    ));
    let s = ok(&cfg, "demo").server.clone().unwrap();
    assert_eq!(
        s.listen,
        crate::TcpListen::Tcp("127.0.0.1:6390".parse().unwrap())
    );
    assert_eq!((s.systems, s.max_connections), (3, 1024));
    assert_eq!(s.idle_timeout, std::time::Duration::from_secs(5));
    // `edgevm check` shows it with its own keys.
    assert_eq!(
        serde_json::to_value(&s).unwrap(),
        serde_json::json!({ "port": 6390, "address": "127.0.0.1", "systems": 3,
                            "max_connections": 1024, "idle_timeout": 5.0 })
    );
    let cfg = load(&prog(r#""server": { "path": "/run/x.sock" }"#));
    let s = ok(&cfg, "demo").server.clone().unwrap();
    assert_eq!(s.listen, crate::TcpListen::Unix("/run/x.sock".into()));
    assert_eq!(key_support("server"), Some(Support::Supported));
    assert!(prog_err(r#""server": { "port": 70000 }"#).contains("from 1 to 65535"));
    assert!(prog_err(r#""server": { "port": 1, "systems": 0 }"#).contains("\"systems\""));
    assert!(prog_err(r#""server": { "path": "/x", "address": "::1" }"#).contains("not with"));
    let long = "/".to_string() + &"a".repeat(120);
    assert!(prog_err(&format!(r#""server": {{ "path": "{long}" }}"#)).contains("usable"));
    // max_message is the WebSocket server's only.
    assert!(prog_err(r#""server": { "port": 1, "max_message": 200 }"#).contains("unknown key"));
}

#[test]
fn websocket_server_keys() {
    let cfg = load(&prog(
        r#""websocket_server": { "port": 6391, "systems": 2, "max_message": 4096 }"#,
    ));
    let p = ok(&cfg, "demo");
    assert!(p.server.is_none());
    let s = p.websocket_server.clone().unwrap();
    assert_eq!(
        s.listen,
        crate::TcpListen::Tcp("127.0.0.1:6391".parse().unwrap())
    );
    assert_eq!((s.systems, s.max_message), (2, Some(4096)));
    assert_eq!(
        serde_json::to_value(&s).unwrap(),
        serde_json::json!({ "port": 6391, "address": "127.0.0.1", "systems": 2,
                            "max_connections": 1024, "idle_timeout": 60.0, "max_message": 4096 })
    );
    assert_eq!(key_support("websocket_server"), Some(Support::Supported));
    let cfg = load(&prog(r#""websocket_server": { "path": "/run/ws.sock" }"#));
    let s = ok(&cfg, "demo").websocket_server.clone().unwrap();
    assert_eq!(s.max_message, Some(1 << 20));
    for (bad, says) in [
        (
            r#"{ "port": 1, "max_message": 124 }"#,
            "from 125 to 16777216",
        ),
        (
            r#"{ "port": 1, "max_message": 16777217 }"#,
            "from 125 to 16777216",
        ),
        (r#"{ "port": 1, "colour": 1 }"#, "max_message"),
        (r#"{ "address": "::1" }"#, "needs a \"port\""),
        ("7", "must be an object"),
    ] {
        let e = prog_err(&format!(r#""websocket_server": {bad}"#));
        assert!(e.contains(says), "{bad}: {e}");
    }
    // Not both modes, and not where another program listens.
    let cfg = load(
        r#"{ "a": { "filename": "/a", "server": { "port": 7000 }, "websocket_server": { "port": 7001 } },
             "b": { "filename": "/b", "server": { "port": 7002 } },
             "c": { "filename": "/c", "websocket_server": { "port": 7002 } } }"#,
    );
    assert!(err(&cfg, "a").to_string().contains("not both"));
    ok(&cfg, "b");
    let e = err(&cfg, "c").to_string();
    assert!(
        e.contains("'websocket_server' listens where program 'b'"),
        "{e}"
    );
}

#[test]
fn two_programs_cannot_listen_at_the_same_place() {
    let cfg = load(
        r#"{ "a": { "filename": "/a", "server": { "port": 7000, "address": "0.0.0.0" } },
             "b": { "filename": "/b", "server": { "port": 7000 } },
             "c": { "filename": "/c", "server": { "port": 7001 } },
             "server": { "listen": "127.0.0.1:7001" } }"#,
    );
    ok(&cfg, "a");
    assert!(err(&cfg, "b").to_string().contains("program 'a'"));
    assert!(err(&cfg, "c").to_string().contains("HTTP server"));
}
