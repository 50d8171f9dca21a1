//! Unit tests of the HTTP layer against a fake [`ProgramHost`] and a raw TCP client.

use super::*;
use edgevm_runtime::ServeFuture;
use edgevm_runtime::{GuestRequest, GuestResponse, ServeError};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(10);

/// A fake runtime: behaviour chosen by program name; answers from a blocking thread like the
/// real one does for slow requests.
#[derive(Default)]
struct FakeHost {
    seen: Mutex<Vec<(String, GuestRequest)>>,
}

impl FakeHost {
    fn last(&self) -> (String, GuestRequest) {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

fn query_param(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

fn ok(status: u16, body: &str) -> GuestResponse {
    GuestResponse {
        status,
        content_type: "text/plain".into(),
        headers: vec![],
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

impl ProgramHost for FakeHost {
    fn serve(&self, program: &str, req: GuestRequest) -> ServeFuture {
        self.seen
            .lock()
            .unwrap()
            .push((program.to_owned(), req.clone()));
        let program = program.to_owned();
        let task = tokio::task::spawn_blocking(move || match program.as_str() {
            "echo" => {
                let mut text = format!(
                    "method={}\nurl={}\nct={}\nlen={}\n",
                    req.method,
                    req.url,
                    req.content_type,
                    req.body.len()
                );
                for (n, v) in &req.headers {
                    text.push_str(&format!("{n}: {v}\n"));
                }
                Ok(ok(200, &text))
            }
            "slow" => {
                let ms = query_param(&req.url, "ms").map_or(300, |v| v.parse().unwrap());
                std::thread::sleep(Duration::from_millis(ms));
                Ok(ok(200, "slept"))
            }
            "status" => {
                let code = query_param(&req.url, "code").unwrap().parse().unwrap();
                Ok(ok(code, "body"))
            }
            "headers" => Ok(GuestResponse {
                status: 201,
                content_type: "text/html".into(),
                headers: vec![
                    ("X-A".into(), "1".into()),
                    ("X-A".into(), "2".into()),
                    ("Content-Type".into(), "text/plain".into()),
                    ("Content-Length".into(), "999".into()),
                    ("Transfer-Encoding".into(), "chunked".into()),
                    ("Connection".into(), "close".into()),
                    ("Keep-Alive".into(), "timeout=1".into()),
                    ("Bad Name".into(), "x".into()),
                    ("X-Bad-Value".into(), "a\nb".into()),
                    ("Cache-Control".into(), "max-age=60".into()),
                ],
                body: b"<p>hi</p>".to_vec(),
                ..Default::default()
            }),
            "notfound" => Err(ServeError::ProgramNotFound(program.clone())),
            "unavailable" => Err(ServeError::ProgramUnavailable("bad ELF".into())),
            "queue" => Err(ServeError::QueueTimeout),
            "crash" => Err(ServeError::ProgramError("guest crashed".into())),
            "shutting" => Err(ServeError::ShuttingDown),
            "panic" => panic!("fake runtime panics"),
            other => Err(ServeError::ProgramNotFound(other.to_owned())),
        });
        Box::pin(async move {
            task.await.unwrap_or_else(|_| {
                Err(ServeError::ProgramError(
                    "internal error in edgevm while handling the request".into(),
                ))
            })
        })
    }
}

/// An admin handler answering `/metrics` and counting recorded requests.
#[derive(Default)]
struct FakeAdmin {
    records: AtomicUsize,
    last_status: AtomicUsize,
}

impl AdminHandler for FakeAdmin {
    fn handle(&self, req: &AdminRequest) -> Option<GuestResponse> {
        (req.path == "/metrics").then(|| {
            ok(
                200,
                &format!("requests {}", self.records.load(Ordering::SeqCst)),
            )
        })
    }

    fn record(&self, record: &RequestRecord<'_>) {
        self.records.fetch_add(1, Ordering::SeqCst);
        self.last_status
            .store(record.status as usize, Ordering::SeqCst);
    }
}

struct TestServer {
    addr: SocketAddr,
    host: Arc<FakeHost>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl TestServer {
    async fn start(
        tweak: impl FnOnce(&mut HttpOptions),
        admin: Option<Arc<dyn AdminHandler>>,
    ) -> TestServer {
        let mut opts = HttpOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        tweak(&mut opts);
        let host = Arc::new(FakeHost::default());
        let server = HttpServer::bind(opts, host.clone(), admin).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            host,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(T, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            r: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.r.get_mut().write_all(raw).await.unwrap();
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
        self.response(false).await.expect("a response")
    }

    /// Read one response; `None` if the connection closed before a status line.
    async fn response(&mut self, head: bool) -> Option<Resp> {
        tokio::time::timeout(T, self.read_response(head))
            .await
            .expect("response in time")
    }

    async fn read_response(&mut self, head: bool) -> Option<Resp> {
        let mut line = String::new();
        if self.r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).await.ok()?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head || status == 204 || status == 304 {
            return Some(resp);
        }
        match resp.header("content-length") {
            Some(len) => {
                let mut body = vec![0; len.parse().unwrap()];
                self.r.read_exact(&mut body).await.ok()?;
                resp.body = body;
            }
            None => {
                self.r.read_to_end(&mut resp.body).await.ok()?;
            }
        }
        Some(resp)
    }

    /// True if the server closed the connection (EOF or reset) within the timeout.
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(T, self.r.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_passes_url_method_and_headers_exactly() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    c.send(b"GET /echo/a/b?x=1&y=%20z&x=2 HTTP/1.1\r\nHost: test\r\nX-Custom: one\r\nAccept: */*\r\nX-Custom: two\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("server"), Some("edgevm"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(
        r.text().contains("url=/echo/a/b?x=1&y=%20z&x=2\n"),
        "{}",
        r.text()
    );

    let (program, req) = s.host.last();
    assert_eq!(program, "echo");
    assert_eq!(req.method, "GET");
    assert_eq!(req.url, "/echo/a/b?x=1&y=%20z&x=2");
    assert_eq!(req.content_type, "");
    assert!(req.body.is_empty());
    assert!(!req.warmup);
    let h: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        h,
        [
            ("host", "test"),
            ("x-custom", "one"),
            ("x-custom", "two"),
            ("accept", "*/*")
        ]
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_name_is_first_segment() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    for (path, program) in [("/echo", "echo"), ("/echo/", "echo"), ("/echo?q", "echo")] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        let (p, req) = s.host.last();
        assert_eq!(p, program);
        assert_eq!(req.url, path);
    }
    // Absolute-form target (proxy style): the program sees path and query only.
    let r = c.get("http://test/echo/abs?q=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(s.host.last().1.url, "/echo/abs?q=1");
    let r = c.get("/other/x").await;
    assert_eq!(r.status, 404);
    assert_eq!(s.host.last().0, "other");
    assert!(
        r.text()
            .starts_with("404 Not Found: no such program (request id "),
        "{}",
        r.text()
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_empty_program_are_404_without_calling_the_host() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    for path in ["/", "/?x=1", "//echo"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.text().contains("no program"), "{}", r.text());
    }
    assert!(s.host.seen.lock().unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_length_but_no_body_and_program_sees_head() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    let full = c.get("/echo/h").await;
    c.send(b"HEAD /echo/h HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let r = c.response(true).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(s.host.last().1.method, "HEAD");
    // The echo body differs only in "method=HEAD" vs "method=GET": one byte longer.
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, full.body.len() + 1);
    // No body bytes on the wire: the next response on the connection parses cleanly.
    let next = c.get("/echo/after").await;
    assert_eq!(next.status, 200);
    assert!(next.text().starts_with("method=GET\nurl=/echo/after\n"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_and_content_type() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    c.send(b"POST /echo/p HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\": 123}\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 200);
    let (_, req) = s.host.last();
    assert_eq!(req.method, "POST");
    assert_eq!(req.content_type, "application/json");
    assert_eq!(req.body, b"{\"a\": 123}\n");

    // Chunked, on the same connection.
    c.send(b"PUT /echo/c HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 200);
    let (_, req) = s.host.last();
    assert_eq!(req.method, "PUT");
    assert_eq!(req.body, b"hello world");

    // Other methods pass through.
    c.send(b"DELETE /echo/d HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.unwrap().status, 200);
    assert_eq!(s.host.last().1.method, "DELETE");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    for i in 0..3 {
        let r = c.get(&format!("/echo/{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None);
    }
    assert_eq!(s.host.seen.lock().unwrap().len(), 3);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_body_over_limit_is_413_without_reading_it() {
    let s = TestServer::start(|o| o.max_body_bytes = 10, None).await;
    let mut c = s.connect().await;
    // The body is never sent: the server must answer from the announced length alone.
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
    assert!(s.host.seen.lock().unwrap().is_empty());

    // With Expect: 100-continue the client is told 413 instead of "continue".
    let mut c = s.connect().await;
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    )
    .await;
    assert_eq!(c.response(false).await.unwrap().status, 413);

    // At the limit is fine.
    let mut c = s.connect().await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n0123456789")
        .await;
    assert_eq!(c.response(false).await.unwrap().status, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_limit_is_413() {
    let s = TestServer::start(|o| o.max_body_bytes = 10, None).await;
    let mut c = s.connect().await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n01234567\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 413);
    assert!(s.host.seen.lock().unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_rejected_and_server_keeps_serving() {
    let s = TestServer::start(|_| {}, None).await; // 64 KiB default
    let mut c = s.connect().await;
    let big = "x".repeat(70 << 10);
    c.send(format!("GET /echo HTTP/1.1\r\nHost: test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let r = c.response(false).await.expect("431 response");
    assert_eq!(r.status, 431);
    assert!(c.closed().await);

    // Far larger: 431, or a reset when the unread rest arrives after hyper closed.
    let mut c = s.connect().await;
    let huge = format!(
        "GET /echo HTTP/1.1\r\nHost: test\r\nX-Huge: {}\r\n\r\n",
        "z".repeat(1 << 20)
    );
    let _ = c.r.get_mut().write_all(huge.as_bytes()).await;
    if let Some(r) = c.response(false).await {
        assert_eq!(r.status, 431);
    }
    assert!(s.host.seen.lock().unwrap().is_empty());

    // Too many headers.
    let mut c = s.connect().await;
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    c.send(format!("GET /echo HTTP/1.1\r\nHost: test\r\n{many}\r\n").as_bytes())
        .await;
    if let Some(r) = c.response(false).await {
        assert_eq!(r.status, 431);
    }

    // Headers just under the limit still work; and the server still serves.
    let mut c = s.connect().await;
    let ok_size = "y".repeat(60 << 10);
    c.send(format!("GET /echo HTTP/1.1\r\nHost: test\r\nX-Ok: {ok_size}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(c.response(false).await.unwrap().status, 200);
    assert_eq!(s.connect().await.get("/echo").await.status, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_errors_map_to_statuses() {
    // By default: status, a short reason and the request id, nothing of the details.
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    let mut ids = Vec::new();
    for (program, status, text) in [
        ("notfound", 404, "404 Not Found: no such program"),
        (
            "unavailable",
            503,
            "503 Service Unavailable: program 'unavailable' is unavailable",
        ),
        (
            "queue",
            503,
            "503 Service Unavailable: timed out waiting for a free VM",
        ),
        (
            "crash",
            500,
            "500 Internal Server Error: program 'crash' failed",
        ),
        (
            "shutting",
            503,
            "503 Service Unavailable: server is shutting down",
        ),
    ] {
        let r = c.get(&format!("/{program}/x")).await;
        assert_eq!(r.status, status, "{program}");
        let id = r.header("x-request-id").expect("X-Request-Id").to_owned();
        assert_eq!(r.text(), format!("{text} (request id {id})\n"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "request ids are unique: {ids:?}");
    s.shutdown().await;
    // error_details: the whole error.
    let s = TestServer::start(|o| o.error_details = true, None).await;
    let mut c = s.connect().await;
    for (program, text) in [
        ("notfound", "no such program: 'notfound'"),
        ("unavailable", "program unavailable: bad ELF"),
        ("crash", "program error: guest crashed"),
    ] {
        let r = c.get(&format!("/{program}/x")).await;
        let id = r.header("x-request-id").unwrap().to_owned();
        assert_eq!(r.text(), format!("{text} (request id {id})\n"));
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_status_is_500() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    for code in [0u16, 100, 199, 600, 700, 1000] {
        let r = c.get(&format!("/status?code={code}")).await;
        assert_eq!(r.status, 500, "{code}");
        assert_eq!(r.text(), format!("program error: invalid status {code}\n"));
    }
    for code in [200u16, 302, 404, 418, 599] {
        let r = c.get(&format!("/status?code={code}")).await;
        assert_eq!(r.status, code);
        assert_eq!(r.text(), "body");
    }
    // Bodyless statuses: no body, no length, and the connection stays usable.
    for code in [204u16, 304] {
        let r = c.get(&format!("/status?code={code}")).await;
        assert_eq!(r.status, code);
        assert_eq!(r.header("content-length"), None);
    }
    assert_eq!(c.get("/echo").await.status, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_headers_are_sent_except_framing_ones() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    let r = c.get("/headers").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body, b"<p>hi</p>");
    assert_eq!(r.all("x-a"), ["1", "2"]);
    assert_eq!(r.all("content-type"), ["text/html"]);
    assert_eq!(r.all("content-length"), ["9"]);
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-bad-value"), None);
    // The program's "Connection: close" did not close the connection.
    assert_eq!(c.get("/echo").await.status, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_panic_is_500() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    let r = c.get("/panic").await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("program 'panic' failed"), "{}", r.text());
    assert_eq!(c.get("/echo").await.status, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_request() {
    let s = TestServer::start(|_| {}, None).await;
    let addr = s.addr;
    let mut idle = s.connect().await;
    assert_eq!(idle.get("/echo").await.status, 200);

    let mut c = s.connect().await;
    c.send(b"GET /slow?ms=500 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    // Let the request reach the host before shutting down.
    while s.host.seen.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let shutdown = tokio::spawn(s.shutdown());
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slept");
    // The in-flight connection is closed after its response; so is the idle one.
    assert!(c.closed().await);
    assert!(idle.closed().await);
    tokio::time::timeout(T, shutdown).await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    // No longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_gives_up_after_grace() {
    let s = TestServer::start(|o| o.shutdown_grace = Duration::from_millis(200), None).await;
    let mut c = s.connect().await;
    c.send(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    while s.host.seen.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    s.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_paths_are_reserved() {
    // Without an admin handler: 404 and never routed to a program.
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    for path in ["/metrics", "/metrics/x", "/_edgevm/stats"] {
        assert_eq!(c.get(path).await.status, 404, "{path}");
    }
    assert!(s.host.seen.lock().unwrap().is_empty());
    s.shutdown().await;

    // With one: it answers what it knows, 404 for the rest, and sees every request.
    let admin = Arc::new(FakeAdmin::default());
    let s = TestServer::start(|_| {}, Some(admin.clone())).await;
    let mut c = s.connect().await;
    assert_eq!(c.get("/echo").await.status, 200);
    assert_eq!(admin.last_status.load(Ordering::SeqCst), 200);
    assert_eq!(c.get("/crash").await.status, 500);
    assert_eq!(admin.last_status.load(Ordering::SeqCst), 500);
    let r = c.get("/metrics?x=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "requests 2");
    assert_eq!(c.get("/_edgevm/nothing").await.status, 404);
    assert_eq!(admin.records.load(Ordering::SeqCst), 4);
    assert_eq!(s.host.seen.lock().unwrap().len(), 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_method_is_refused() {
    let s = TestServer::start(|_| {}, None).await;
    let mut c = s.connect().await;
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 405);
    assert!(s.host.seen.lock().unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_hello_answers_every_path() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_static_hello_on(listener, async {
        let _ = stopped.await;
    }));
    let mut c = Client::connect(addr).await;
    for path in ["/", "/x/y?z"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"Hello World!\n");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("content-length"), Some("13"));
    }
    stop.send(()).unwrap();
    tokio::time::timeout(T, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn run_server_stops_on_sigterm() {
    // Pick a free port, then let run_server bind it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = std::thread::spawn(move || {
        run_server(HttpOptions::new(addr), Arc::new(FakeHost::default()), None)
    });
    // Wait until it serves.
    let deadline = Instant::now() + T;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGTERM to our own process: tokio's handler takes it (and stays installed for the rest
    // of the process, so the default action never kills the test binary).
    // SAFETY: kill(2) on our own pid with a valid signal; a handler is installed (serving
    // started after run_server registered it).
    let rc = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    assert_eq!(rc, 0);
    let result = server.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
}
