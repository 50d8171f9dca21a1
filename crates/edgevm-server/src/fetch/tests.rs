//! Tests for [`super`]: a tiny hand-written HTTP/1.1 server on 127.0.0.1 plays the origin.

use super::*;
use edgevm_config::Download;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One canned answer of the test server.
#[derive(Clone, Default)]
struct Route {
    status: u16,
    body: Vec<u8>,
    last_modified: Option<SystemTime>,
    /// Sleep this long before answering.
    delay: Duration,
    /// Answer 304 when the request carries If-Modified-Since >= `last_modified` (or any
    /// If-Modified-Since when `last_modified` is None).
    honour_ims: bool,
}

impl Route {
    fn ok(body: Vec<u8>) -> Route {
        Route {
            status: 200,
            body,
            ..Route::default()
        }
    }
}

/// What the server saw: path and If-Modified-Since header.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    ims: Option<String>,
}

struct Server {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(routes: Vec<(&str, Route)>) -> Server {
        let routes: Arc<HashMap<String, Route>> =
            Arc::new(routes.into_iter().map(|(p, r)| (p.to_owned(), r)).collect());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let routes = routes.clone();
                let seen = seen2.clone();
                thread::spawn(move || handle(conn, &routes, &seen));
            }
        });
        Server { base, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn handle(conn: TcpStream, routes: &HashMap<String, Route>, seen: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut ims = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("if-modified-since") {
                ims = Some(v.trim().to_owned());
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        ims: ims.clone(),
    });
    let route = routes.get(&path).cloned().unwrap_or(Route {
        status: 404,
        body: b"not found".to_vec(),
        ..Route::default()
    });
    thread::sleep(route.delay);
    let not_modified = route.honour_ims
        && match (&ims, route.last_modified) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(i), Some(lm)) => httpdate::parse_http_date(i).is_ok_and(|t| t >= lm),
        };
    let (status, body): (u16, &[u8]) = if not_modified {
        (304, b"")
    } else {
        (route.status, &route.body)
    };
    let reason = match status {
        200 => "OK",
        304 => "Not Modified",
        404 => "Not Found",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    if let Some(lm) = route.last_modified {
        head.push_str(&format!(
            "Last-Modified: {}\r\n",
            httpdate::fmt_http_date(lm)
        ));
    }
    if status != 304 {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut conn = conn;
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

/// Some bytes that look like an ELF program (never executed here).
fn elf(tag: &str) -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\0".to_vec();
    v.resize(64, 0);
    v.extend_from_slice(tag.as_bytes());
    v.resize(4096 + tag.len(), 0x90);
    v
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn xz_of(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    liblzma::read::XzEncoder::new(data, 6)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A scratch directory, removed on drop.
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(tag: &str) -> TmpDir {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "edgevm-fetch-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

fn no_temp_files(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".tmp."), "leftover temp file {n}");
    }
}

fn date(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn raw_elf_download_then_304() {
    let lm = date(1_700_000_000);
    let srv = Server::start(vec![(
        "/prog",
        Route {
            last_modified: Some(lm),
            honour_ims: true,
            ..Route::ok(elf("v1"))
        },
    )]);
    let dir = tmpdir("raw");
    let file = dir.join("cache/prog"); // parent is created
                                       // A stale storage file from an earlier archive version must go away.
    fs::create_dir_all(dir.join("cache")).unwrap();
    fs::write(storage_path(&file), b"stale").unwrap();

    let p = obtain("prog", Some(&srv.url("/prog")), Some(&file), TIMEOUT).unwrap();
    assert_eq!(p.request, elf("v1"));
    assert_eq!(p.storage, None);
    assert_eq!(p.origin, Origin::Remote);
    assert!(!p.cached);
    assert!(p.download_time.is_some());
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    assert_eq!(p.path, file);
    assert_eq!(fs::read(&file).unwrap(), elf("v1"));
    assert!(!storage_path(&file).exists());
    assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), lm);
    no_temp_files(&dir.join("cache"));

    // Second fetch: If-Modified-Since with the server's Last-Modified → 304 → cache.
    let p = obtain("prog", Some(&srv.url("/prog")), Some(&file), TIMEOUT).unwrap();
    assert!(p.cached);
    assert_eq!(p.origin, Origin::Remote);
    assert_eq!(p.request, elf("v1"));
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.path == "/prog"), "{seen:?}");
    assert_eq!(seen[0].ims, None);
    assert_eq!(
        seen[1].ims.as_deref(),
        Some(httpdate::fmt_http_date(lm).as_str())
    );
}

#[test]
fn download_without_last_modified_keeps_now_and_sends_ims() {
    let srv = Server::start(vec![("/p", Route::ok(elf("x")))]);
    let dir = tmpdir("nolm");
    let file = dir.join("p");
    let before = SystemTime::now() - Duration::from_secs(5);
    obtain("p", Some(&srv.url("/p")), Some(&file), TIMEOUT).unwrap();
    assert!(fs::metadata(&file).unwrap().modified().unwrap() >= before);
    // The server ignores If-Modified-Since: a fresh 200 replaces the file.
    let p = obtain("p", Some(&srv.url("/p")), Some(&file), TIMEOUT).unwrap();
    assert!(!p.cached);
    assert!(srv.seen()[1].ims.is_some());
}

#[test]
fn http_404_without_cache_is_an_error() {
    let srv = Server::start(vec![]);
    let dir = tmpdir("404");
    let uri = srv.url("/nope");
    let e = obtain("myprog", Some(&uri), Some(&dir.join("f")), TIMEOUT).unwrap_err();
    assert!(matches!(e, FetchError::Status { status: 404, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("myprog"), "{msg}");
    assert!(msg.contains(&uri), "{msg}");
    assert!(msg.contains("404"), "{msg}");
    assert!(!dir.join("f").exists());
}

fn cached_setup(tag: &str) -> (TmpDir, PathBuf) {
    let dir = tmpdir(tag);
    let file = dir.join("cached");
    fs::write(&file, elf("cached")).unwrap();
    fs::write(storage_path(&file), elf("cached-storage")).unwrap();
    (dir, file)
}

fn assert_used_cache(p: &FetchedProgram, file: &Path, what: &str) {
    assert!(p.cached);
    assert_eq!(p.origin, Origin::Remote);
    assert_eq!(p.request, elf("cached"));
    assert_eq!(p.storage, Some(elf("cached-storage")));
    assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
    let note = &p.notes[0];
    assert!(note.contains("using cached"), "{note}");
    assert!(note.contains(&file.display().to_string()), "{note}");
    assert!(note.contains(what), "{note}");
}

#[test]
fn http_404_with_cache_uses_cache() {
    let srv = Server::start(vec![]);
    let (_dir, file) = cached_setup("404c");
    let p = obtain("p", Some(&srv.url("/nope")), Some(&file), TIMEOUT).unwrap();
    assert_used_cache(&p, &file, "404");
}

fn refused_uri() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/prog")
}

#[test]
fn connection_refused_with_and_without_cache() {
    let uri = refused_uri();
    let (dir, file) = cached_setup("refused");
    let p = obtain("p", Some(&uri), Some(&file), TIMEOUT).unwrap();
    assert_used_cache(&p, &file, "network error");

    let e = obtain("p", Some(&uri), Some(&dir.join("absent")), TIMEOUT).unwrap_err();
    assert!(matches!(e, FetchError::Download { .. }), "{e:?}");
    assert!(e.to_string().contains(&uri), "{e}");
}

#[test]
fn slow_server_times_out_in_bounded_time() {
    let srv = Server::start(vec![(
        "/slow",
        Route {
            delay: Duration::from_secs(4),
            ..Route::ok(elf("slow"))
        },
    )]);
    let timeout = Duration::from_millis(500);
    let (dir, file) = cached_setup("slow");

    let t = Instant::now();
    let p = obtain("p", Some(&srv.url("/slow")), Some(&file), timeout).unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_used_cache(&p, &file, "timed out");

    let t = Instant::now();
    let e = obtain("p", Some(&srv.url("/slow")), Some(&dir.join("x")), timeout).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(e.to_string().contains("timed out"), "{e}");
}

#[test]
fn tar_and_tar_xz_archives() {
    let tarball = tar_of(&[
        ("c/counter", &elf("request")),
        ("c/counter_storage", &elf("storage")),
    ]);
    let srv = Server::start(vec![
        ("/a.tar", Route::ok(tarball.clone())),
        // Detected by magic, not by name.
        ("/a.bin", Route::ok(xz_of(&tarball))),
    ]);
    for path in ["/a.tar", "/a.bin"] {
        let dir = tmpdir("tar");
        let file = dir.join("counter");
        let p = obtain("counter", Some(&srv.url(path)), Some(&file), TIMEOUT).unwrap();
        assert_eq!(p.request, elf("request"));
        assert_eq!(p.storage, Some(elf("storage")));
        assert_eq!(fs::read(&file).unwrap(), elf("request"));
        assert_eq!(fs::read(storage_path(&file)).unwrap(), elf("storage"));
        let n = elf("request").len();
        assert!(
            p.info.contains(&format!(
                "Found 'c/counter' size={n}, used as request program"
            )),
            "{:?}",
            p.info
        );
        assert!(
            p.info.iter().any(|l| l.contains("used as storage program")),
            "{:?}",
            p.info
        );
        no_temp_files(&dir);
    }
}

#[test]
fn archive_without_storage_and_with_directories() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    b.append_data(&mut h, "c/", io::empty()).unwrap();
    let data = elf("only");
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "c/only", &data[..]).unwrap();
    let u = unpack(&b.into_inner().unwrap()).unwrap();
    assert_eq!(u.request, data);
    assert_eq!(u.storage, None);
}

#[test]
fn confusing_archives() {
    let two = tar_of(&[("a", &elf("a")), ("b", &elf("b"))]);
    let srv = Server::start(vec![("/two.tar", Route::ok(two.clone()))]);
    let dir = tmpdir("confusing");
    let (_cache_dir, cached) = cached_setup("confusing-cache");
    for file in [dir.join("f"), cached] {
        let e = obtain("p", Some(&srv.url("/two.tar")), Some(&file), TIMEOUT).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, FetchError::Content { .. }), "{e:?}");
        assert!(msg.contains("Confusing archive"), "{msg}");
        assert!(msg.contains("'a'") && msg.contains("'b'"), "{msg}");
    }
    assert!(!dir.join("f").exists());

    let only_storage = tar_of(&[("x_storage", &elf("s"))]);
    assert!(unpack(&only_storage)
        .unwrap_err()
        .contains("Confusing archive"));
    let two_storage = tar_of(&[("p", &elf("p")), ("s1storage", b"1"), ("s2storage", b"2")]);
    assert!(unpack(&two_storage)
        .unwrap_err()
        .contains("Confusing archive"));
    assert!(unpack(&tar_of(&[])).is_err());
}

#[test]
fn corrupt_archives() {
    let tarball = tar_of(&[("p", &elf("p")), ("p_storage", &elf("s"))]);
    let mut xz = xz_of(&tarball);
    let mid = xz.len() / 2;
    xz.truncate(mid);
    let srv = Server::start(vec![
        ("/bad.tar.xz", Route::ok(xz.clone())),
        ("/junk", Route::ok(b"<html>hello</html>".to_vec())),
    ]);
    let dir = tmpdir("corrupt");
    let e = obtain(
        "p",
        Some(&srv.url("/bad.tar.xz")),
        Some(&dir.join("f")),
        TIMEOUT,
    )
    .unwrap_err();
    assert!(e.to_string().contains("corrupt .xz"), "{e}");
    assert!(!dir.join("f").exists());

    let e = obtain("p", Some(&srv.url("/junk")), Some(&dir.join("f")), TIMEOUT).unwrap_err();
    assert!(e.to_string().contains("neither an ELF"), "{e}");

    // Garbage after a valid xz header.
    let mut garbage = XZ_MAGIC.to_vec();
    garbage.extend_from_slice(&[0x55; 200]);
    assert!(unpack(&garbage).unwrap_err().contains("corrupt .xz"));

    // A truncated tar: header claims more data than present.
    let mut t = tar_of(&[("p", &elf("p"))]);
    t.truncate(700);
    assert!(unpack(&t).unwrap_err().contains("corrupt tar"));
}

#[test]
fn file_uri() {
    let dir = tmpdir("fileuri");
    let src = dir.join("src.tar.xz");
    fs::write(
        &src,
        xz_of(&tar_of(&[("prog", &elf("r")), ("prog_storage", &elf("s"))])),
    )
    .unwrap();
    let uri = format!("file://{}", src.display());

    // No filename: read in place, nothing written.
    let p = obtain("p", Some(&uri), None, TIMEOUT).unwrap();
    assert_eq!(
        (p.request.clone(), p.storage.clone()),
        (elf("r"), Some(elf("s")))
    );
    assert_eq!(p.origin, Origin::Remote);
    assert!(!p.cached);
    assert_eq!(p.path, src);

    // With a filename: unpacked copies are written there.
    let file = dir.join("out");
    let p = obtain("p", Some(&uri), Some(&file), TIMEOUT).unwrap();
    assert_eq!(p.path, file);
    assert_eq!(fs::read(&file).unwrap(), elf("r"));
    assert_eq!(fs::read(storage_path(&file)).unwrap(), elf("s"));

    // Raw ELF whose filename is the source itself: not rewritten.
    let raw = dir.join("raw");
    fs::write(&raw, elf("raw")).unwrap();
    let p = obtain(
        "p",
        Some(&format!("file://localhost{}", raw.display())),
        Some(&raw),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(p.request, elf("raw"));
    no_temp_files(&dir);

    // Missing source: clear error, no fallback.
    let e = obtain(
        "p",
        Some("file:///nonexistent/edgevm/x"),
        Some(&file),
        TIMEOUT,
    )
    .unwrap_err();
    assert!(matches!(e, FetchError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/edgevm/x"), "{e}");

    let e = obtain("p", Some("file://relative/x"), None, TIMEOUT).unwrap_err();
    assert!(matches!(e, FetchError::BadUri { .. }), "{e:?}");
}

#[test]
fn local_filename() {
    let dir = tmpdir("local");
    let file = dir.join("prog");
    fs::write(&file, elf("local")).unwrap();
    let p = obtain("prog", None, Some(&file), TIMEOUT).unwrap();
    assert_eq!(p.request, elf("local"));
    assert_eq!(p.storage, None);
    assert_eq!(p.origin, Origin::Local);
    assert!(p.cached);
    assert_eq!(p.download_time, None);

    fs::write(storage_path(&file), elf("st")).unwrap();
    let p = obtain("prog", None, Some(&file), TIMEOUT).unwrap();
    assert_eq!(p.storage, Some(elf("st")));

    let missing = dir.join("missing");
    let e = obtain("ghost", None, Some(&missing), TIMEOUT).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("ghost"), "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    let e = obtain("ghost", None, None, TIMEOUT).unwrap_err();
    assert!(matches!(e, FetchError::NoSource { .. }), "{e:?}");

    let e = obtain("p", Some("ftp://x/y"), Some(&file), TIMEOUT).unwrap_err();
    assert!(matches!(e, FetchError::BadUri { .. }), "{e:?}");
}

#[test]
fn uri_without_filename_uses_default_cache_path() {
    let name = format!("edgevm test/{}", std::process::id());
    let path = default_cache_path(&name);
    assert!(path.starts_with(std::env::temp_dir()));
    assert!(!path.file_name().unwrap().to_string_lossy().contains('/'));
    let _ = fs::remove_file(&path);
    let srv = Server::start(vec![("/p", Route::ok(elf("d")))]);
    let p = obtain(&name, Some(&srv.url("/p")), None, TIMEOUT).unwrap();
    assert_eq!(p.path, path);
    assert_eq!(fs::read(&path).unwrap(), elf("d"));
    let _ = fs::remove_file(&path);
}

#[test]
fn storage_path_appends_suffix() {
    assert_eq!(
        storage_path(Path::new("/tmp/compute_inflate")),
        PathBuf::from("/tmp/compute_inflate_storage")
    );
}

fn sha(bytes: &[u8]) -> Pin {
    let p = Pin::Sha256(String::new());
    Pin::Sha256(p.digest_of(bytes))
}

#[test]
fn a_pinned_program_uses_a_matching_cache_without_asking_and_refuses_other_content() {
    let srv = Server::start(vec![
        ("/prog", Route::ok(elf("v2"))),
        (
            "/down",
            Route {
                status: 503,
                ..Route::default()
            },
        ),
    ]);
    let dir = tmpdir("pin");
    let file = dir.join("prog");
    fs::write(&file, elf("v1")).unwrap();
    // The cache has the pinned digest: used, the server is not asked.
    let pin = sha(&elf("v1"));
    let p = obtain_pinned(
        "prog",
        Some(&srv.url("/prog")),
        Some(&file),
        Some(&pin),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(p.request, elf("v1"));
    assert!(
        p.cached && p.info[0].contains("pinned sha256"),
        "{:?}",
        p.info
    );
    assert!(srv.seen().is_empty(), "{:?}", srv.seen());
    // Pinned to v2: the cache (v1) does not match, v2 is downloaded (no If-Modified-Since).
    let pin2 = sha(&elf("v2"));
    let p = obtain_pinned(
        "prog",
        Some(&srv.url("/prog")),
        Some(&file),
        Some(&pin2),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(p.request, elf("v2"));
    assert_eq!(fs::read(&file).unwrap(), elf("v2"));
    assert!(srv.seen()[0].ims.is_none());
    // Pinned to v3: the server's v2 is refused and the cache is left as it was.
    let pin3 =
        Pin::from_config(None, Some(&Pin::Md5(String::new()).digest_of(&elf("v3")))).unwrap();
    let e = obtain_pinned(
        "prog",
        Some(&srv.url("/prog")),
        Some(&file),
        Some(&pin3),
        TIMEOUT,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not match") && e.contains("md5"), "{e}");
    assert_eq!(fs::read(&file).unwrap(), elf("v2"));
    // A failed download is not replaced by a cache that does not match the pin.
    let e = obtain_pinned(
        "prog",
        Some(&srv.url("/down")),
        Some(&file),
        Some(&pin3),
        TIMEOUT,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("503"), "{e}");
    // file:// sources are checked too.
    let src = dir.join("src");
    fs::write(&src, elf("v4")).unwrap();
    let uri = format!("file://{}", src.display());
    let e = obtain_pinned("prog", Some(&uri), None, Some(&pin3), TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match"), "{e}");
    assert!(obtain_pinned("prog", Some(&uri), None, Some(&sha(&elf("v4"))), TIMEOUT).is_ok());
    no_temp_files(&dir);
}

fn dl(uri: String, filepath: PathBuf, sha256: Option<String>) -> Download {
    Download {
        uri,
        filepath,
        sha256,
        md5: None,
    }
}

#[test]
fn downloads_are_fetched_in_parallel_checked_and_kept_on_failure() {
    let lm = date(1_700_000_000);
    let srv = Server::start(vec![
        (
            "/model",
            Route {
                last_modified: Some(lm),
                honour_ims: true,
                ..Route::ok(b"model bytes".to_vec())
            },
        ),
        ("/data", Route::ok(b"data bytes".to_vec())),
        (
            "/down",
            Route {
                status: 500,
                ..Route::default()
            },
        ),
    ]);
    let dir = tmpdir("downloads");
    let model = dir.join("sub/model.bin");
    let data = dir.join("data.bin");
    let good = sha(b"data bytes").digest_of(b"data bytes");
    let list = vec![
        dl(srv.url("/model"), model.clone(), None),
        dl(srv.url("/data"), data.clone(), Some(good.clone())),
    ];
    let notes = fetch_downloads("p", &list, TIMEOUT).unwrap();
    assert_eq!(notes.len(), 2);
    assert_eq!(fs::read(&model).unwrap(), b"model bytes");
    assert_eq!(fs::read(&data).unwrap(), b"data bytes");
    assert_eq!(fs::metadata(&model).unwrap().modified().unwrap(), lm);
    // Again: the model is not modified (304), the pinned data file is not fetched at all.
    let before = srv.seen().len();
    let notes = fetch_downloads("p", &list, TIMEOUT).unwrap();
    assert!(
        notes.iter().any(|(_, l)| l.contains("not modified")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|(_, l)| l.contains("pinned sha256")),
        "{notes:?}"
    );
    let seen = srv.seen();
    assert_eq!(seen.len(), before + 1, "{seen:?}");
    assert_eq!(seen.last().unwrap().path, "/model");
    // A failed download keeps an unpinned file (a warning) ...
    let keep = vec![dl(srv.url("/down"), model.clone(), None)];
    let notes = fetch_downloads("p", &keep, TIMEOUT).unwrap();
    assert!(notes[0].0 && notes[0].1.contains("keeping"), "{notes:?}");
    // ... and fails the boot without one, or when pinned content does not match.
    let missing = vec![dl(srv.url("/down"), dir.join("none"), None)];
    let e = fetch_downloads("p", &missing, TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("program 'p'") && e.contains("500"), "{e}");
    let wrong = vec![dl(srv.url("/model"), dir.join("m2"), Some(good))];
    let e = fetch_downloads("p", &wrong, TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused") && e.contains("sha256"), "{e}");
    assert!(!dir.join("m2").exists());
    // file:// entries are copied.
    let copy = vec![dl(
        format!("file://{}", data.display()),
        dir.join("copy.bin"),
        None,
    )];
    fetch_downloads("p", &copy, TIMEOUT).unwrap();
    assert_eq!(fs::read(dir.join("copy.bin")).unwrap(), b"data bytes");
    no_temp_files(&dir);
    no_temp_files(&dir.join("sub"));
}
