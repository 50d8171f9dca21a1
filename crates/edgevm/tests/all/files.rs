//! The file sandbox end to end (issue 15, items 1 and 2): `allowed_paths` and
//! `current_working_directory` through `edgevm serve`, seen by a real handler
//! (guest/tests/files.c, glibc and musl): virtual names, directory listings, symlinks in and
//! out of an allowed tree, writes refused outside writable paths and from requests, the
//! descriptor the frozen program held (same offset every request), descriptors a request
//! opens (closed by the reset), file mappings.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::common::*;
use crate::harness::*;

/// dir/tree: a.txt, sub/b.txt, links in and out; dir/rw (writable); dir/secret.txt.
fn tree(dir: &Path) {
    let t = dir.join("tree");
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("rw")).unwrap();
    std::fs::write(t.join("a.txt"), "hello world").unwrap();
    std::fs::write(t.join("sub/b.txt"), "bee").unwrap();
    std::fs::write(dir.join("secret.txt"), "secret").unwrap();
    symlink("sub/b.txt", t.join("in")).unwrap();
    symlink("../secret.txt", t.join("out")).unwrap();
    symlink(dir.join("secret.txt"), t.join("abs")).unwrap();
    symlink("/proc/self/root/etc", t.join("proc")).unwrap();
}

fn config(dir: &Path, names: &[(&str, &str)]) -> String {
    let paths = format!(
        r#"[{{"virtual": "/data", "real": {}}}, {{"virtual": "/rw", "real": {}, "writable": true}},
            {{"virtual": "/proc/self/exe", "real": "/srv/prog.elf", "symlink": true}}]"#,
        js(dir.join("tree").to_str().unwrap()),
        js(dir.join("rw").to_str().unwrap())
    );
    let progs: Vec<String> = names
        .iter()
        .map(|(name, g)| {
            format!(
                r#"{}: {{ "filename": {}, "allowed_paths": {paths},
                    "current_working_directory": "/data/sub" }}"#,
                js(name),
                js(guest(g).to_str().unwrap())
            )
        })
        .collect();
    format!("{{ {} }}", progs.join(",\n"))
}

#[test]
fn a_handler_sees_only_allowed_paths_under_their_virtual_names() {
    let dir = scratch("files-sandbox");
    tree(&dir);
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, config(&dir, &[("f", "files"), ("fm", "files_musl")])).unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    for p in ["f", "fm"] {
        let ok = |action: &str| s.ok(&format!("/{p}/{action}"));
        assert_eq!(ok("read?p=/data/a.txt"), "hello world", "{p}");
        assert_eq!(ok("read?p=/data/in"), "bee", "a symlink inside the tree");
        assert_eq!(ok("ls?p=/data"), ".,..,a.txt,abs,in,out,proc,sub");
        assert_eq!(
            ok("ls?p=/"),
            ".,..,data,etc,proc,rw,state",
            "state: the state file"
        );
        assert_eq!(ok("ls?p=/proc/self"), ".,..,exe");
        assert_eq!(ok("stat?p=/data/a.txt"), "size=11 dir=0 link=0");
        assert_eq!(
            ok("stat?p=/data/sub"),
            "size=4096 dir=1 link=0".replace(
                "4096",
                &std::fs::metadata(dir.join("tree/sub"))
                    .unwrap()
                    .len()
                    .to_string()
            )
        );
        assert_eq!(ok("readlink?p=/proc/self/exe"), "/srv/prog.elf");
        assert_eq!(ok("readlink?p=/data/in"), "sub/b.txt");
        assert_eq!(ok("cwd"), "cwd=/data/sub b.txt=bee");
        // Ways out: refused (by name, or by the kernel below the tree).
        let real = dir.join("tree/a.txt");
        assert_eq!(ok(&format!("read?p={}", real.display())), "error=ENOENT");
        for out in [
            "/data/../secret.txt",
            "../../secret.txt",
            "/etc/passwd",
            "/proc/self/maps",
        ] {
            assert_eq!(ok(&format!("read?p={out}")), "error=ENOENT", "{out}");
        }
        assert_eq!(ok("read?p=/data/out"), "error=EXDEV");
        assert_eq!(ok("read?p=/data/abs"), "error=EXDEV");
        assert_eq!(ok("read?p=/data/proc/passwd"), "error=EXDEV");
        assert_eq!(ok("stat?p=/data/out"), "link=1 target_error=EXDEV");
        // Requests never write: not in the tree, not in the writable path.
        assert_eq!(ok("write?p=/data/a.txt"), "error=EROFS");
        assert_eq!(ok("write?p=/data/new"), "error=EROFS");
        assert_eq!(ok("write?p=/rw/new"), "error=EROFS");
        assert_eq!(ok("mkdir?p=/rw/d"), "error=EROFS");
        assert_eq!(ok("unlink?p=/rw/init.txt"), "error=EROFS");
        assert_eq!(ok("rename?p=/rw/init.txt"), "error=EROFS");
        assert_eq!(ok("unlink?p=/data/a.txt"), "error=EROFS");
        // The main VM wrote the writable path while it initialized.
        assert_eq!(ok("read?p=/rw/init.txt"), "written by main");
        // The descriptor main() held: offset 2 in every request; what a request opens is
        // closed by its reset.
        for _ in 0..3 {
            assert_eq!(ok("held"), "held=3:llo");
            assert_eq!(ok("leak"), "fd=4");
        }
        assert_eq!(ok("mmap?p=/data/a.txt"), "hello");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("tree/a.txt")).unwrap(),
        "hello world"
    );
    let mut rw: Vec<_> = std::fs::read_dir(dir.join("rw"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    rw.sort();
    assert_eq!(rw, ["init.txt"], "requests created nothing");
    s.stop();
}

#[test]
fn a_working_directory_outside_the_allowed_paths_fails_the_program_with_the_reason() {
    let dir = scratch("files-cwd");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "f": {{ "filename": {}, "current_working_directory": "/nowhere" }} }}"#,
            js(guest("files").to_str().unwrap())
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    let r = s.get("/f/cwd");
    assert_eq!(r.status, 503, "{}", r.text());
    let log = s.wait_log(
        "current_working_directory",
        std::time::Duration::from_secs(10),
    );
    assert!(log.contains("\"/nowhere\": ENOENT"), "{log}");
    s.stop();
}

/// guest/examples/<dir> seen at /app.
fn app(dir: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../guest/examples")
        .join(dir);
    format!(
        r#"{{ "virtual": "/app", "real": {} }}"#,
        js(p.canonicalize().unwrap().to_str().unwrap())
    )
}

#[test]
fn espeak_like_lua_cpython_and_quickjs_programs_read_their_data_through_allowed_paths() {
    let dir = scratch("files-runtimes");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "voices": {{ "filename": {}, "allowed_paths": [{}] }},
                 "lua": {{ "filename": {}, "allowed_paths": [{}] }},
                 "python": {{ "filename": {}, "max_memory": 256,
                             "allowed_paths": ["/usr/lib/python3.11", {}] }},
                 "js": {{ "filename": {}, "main_arguments": ["/app/handler.js"],
                         "allowed_paths": [{}] }} }}"#,
            js(guest("example_datatree").to_str().unwrap()),
            app("voices").replace("/app", "/data"),
            js(guest("example_lua").to_str().unwrap()),
            app("lua"),
            js(guest("example_python").to_str().unwrap()),
            app("python"),
            js(guest("example_quickjs").to_str().unwrap()),
            app("quickjs/app"),
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(
        s.ok("/voices"),
        "3 voices in 3 directories (125 bytes): english english-us german\n"
    );
    assert_eq!(s.ok("/voices/german"), "Hallo (/data/lang/de/voice)\n");
    assert_eq!(s.ok("/voices/english-us"), "Howdy (/data/lang/en/us)\n");
    for _ in 0..3 {
        assert_eq!(
            s.ok("/lua/a/b?x=1"),
            "Hello from Lua 5.4! url=/lua/a/b?x=1 words=4 request=1\n"
        );
        let py = s.ok("/python/a/b?x=1&y=2");
        assert!(
            py.starts_with("{\"path\": \"/python/a/b\", \"python\": \"3.11.")
                && py.ends_with("\"query\": {\"x\": \"1\", \"y\": \"2\"}, \"request\": 1}\n"),
            "{py}"
        );
        assert_eq!(
            s.ok("/js/a/b?x=1&y=2"),
            "Hello from QuickJS! {\"method\":\"GET\",\"words\":3,\"params\":{\"x\":\"1\",\"y\":\"2\"},\"request\":1,\"started\":true}\n"
        );
        let r = s.req(
            "POST",
            "/js/p",
            &[("Content-Type", "application/json")],
            b"{\"n\": [1, 2]}",
        );
        assert_eq!(
            r.text(),
            "Hello from QuickJS! {\"method\":\"POST\",\"words\":2,\"params\":{},\"request\":1,\"started\":true,\"body\":{\"n\":[1,2]}}\n"
        );
        // A script error is the request's 500, and the next request is served as before.
        let r = s.req("POST", "/js/p", &[], b"not json");
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(r.text().contains("unexpected token"), "{}", r.text());
    }
    s.stop();
}

#[test]
fn dynamically_linked_programs_boot_through_their_host_loader_with_their_libraries_allowed() {
    let dir = scratch("files-dynamic");
    let libs = r#"["/lib/x86_64-linux-gnu"]"#;
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "dy": {{ "filename": {}, "allowed_paths": {libs} }},
                 "nolibs": {{ "filename": {} }} }}"#,
            js(guest("dynamic").to_str().unwrap()),
            js(guest("dynamic").to_str().unwrap()),
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    for _ in 0..3 {
        assert_eq!(
            s.ok("/dy"),
            "dynamic: cos(0)=1.0",
            "libc loaded, libm dlopen()ed"
        );
    }
    // Without its libraries listed, ld.so says so and the program is not served.
    assert_eq!(s.get("/nolibs").status, 503);
    s.wait_log(
        "libc.so.6: cannot open shared object file",
        std::time::Duration::from_secs(10),
    );
    s.stop();

    // Debian's own /usr/bin/python3.11 (dynamically linked, not PIE) runs a script.
    let python = Path::new("/usr/bin/python3.11");
    if !python.exists() {
        panic!("/usr/bin/python3.11 is missing: scripts/deps.sh installs python3");
    }
    let script = dir.join("hello.py");
    std::fs::write(
        &script,
        "import json, sys\nprint('python', sys.version_info[:2], json.dumps({'ok': True}))\n",
    )
    .unwrap();
    let pcfg = dir.join("python.json");
    std::fs::write(
        &pcfg,
        format!(
            r#"{{ "py": {{ "filename": "/usr/bin/python3.11", "max_memory": 512,
                "allowed_paths": ["/lib/x86_64-linux-gnu", "/usr/lib/python3.11", {}] }} }}"#,
            js(script.to_str().unwrap())
        ),
    )
    .unwrap();
    let r = edgevm_run(&[
        "run",
        "--raw",
        "--config",
        pcfg.to_str().unwrap(),
        "--program",
        "py",
        "/usr/bin/python3.11",
        "--",
        script.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert_eq!(r.stdout, "python (3, 11) {\"ok\": true}\n", "{}", r.all());

    // The loader named by PT_INTERP boots the program: musl's (its libc is the loader) ...
    let musl = guest("dynamic_musl");
    let r = edgevm_run(&["run", "--raw", musl.to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(r.stdout.starts_with("interp ok: "), "{}", r.all());
    // ... and a PT_INTERP that is not a known loader is refused before anything is read.
    let bad = guest("bad_interp");
    let r = edgevm_run(&["run", "--raw", bad.to_str().unwrap()]);
    assert_ne!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.all()
            .contains("interpreter (PT_INTERP) \"/etc/passwd\" is not a dynamic loader"),
        "{}",
        r.all()
    );
}

#[test]
fn a_request_reading_large_files_does_not_hold_the_http_worker() {
    // One HTTP worker; a request reads a 64 MiB file 16 times (1 GiB in 4 MiB read() calls,
    // each a host read on the thread running the VM): after its inline slice it runs on a
    // blocking thread, so requests to another program are answered meanwhile.
    let dir = scratch("files-stall");
    tree(&dir);
    std::fs::write(dir.join("tree/big.bin"), vec![7u8; 64 << 20]).unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        config(&dir, &[("slow", "files"), ("hello", "example_hello")]),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[("EDGEVM_HTTP_THREADS", "1")]);
    assert_eq!(s.ok("/slow/slurp?p=/data/big.bin&n=1"), "bytes=67108864");
    crate::inline::others_are_served_during(&s, "/slow/slurp?p=/data/big.bin&n=16", 200);
    s.stop();
}
