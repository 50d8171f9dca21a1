//! The connection timeouts of [`crate::limits`] on tokio's paused clock, over an in-memory
//! connection (no KVM, no real time): crates/edgevm/tests/all/clients.rs tests them on real
//! sockets and a real program.
use super::*;
use edgevm_runtime::{GuestRequest, GuestResponse, ProgramHost, ServeFuture};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

struct Ok200;
impl ProgramHost for Ok200 {
    fn serve(&self, _: &str, req: GuestRequest) -> ServeFuture {
        Box::pin(std::future::ready(Ok(GuestResponse {
            status: 200,
            content_type: "text/plain".into(),
            headers: vec![],
            body: format!("len={}", req.body.len()).into_bytes(),
            ..Default::default()
        })))
    }
}

/// Answers after 200 s (tokio's clock): longer than every connection timeout.
struct Slow;
impl ProgramHost for Slow {
    fn serve(&self, _: &str, _: GuestRequest) -> ServeFuture {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(200)).await;
            Ok(GuestResponse {
                status: 200,
                content_type: "text/plain".into(),
                headers: vec![],
                body: b"slow".to_vec(),
                ..Default::default()
            })
        })
    }
}

/// A served in-memory connection: header 10 s, idle 60 s, body 30 s.
fn connection() -> (DuplexStream, tokio::task::JoinHandle<hyper::Result<()>>) {
    connection_to(Arc::new(Ok200))
}

fn connection_to(
    host: Arc<dyn ProgramHost>,
) -> (DuplexStream, tokio::task::JoinHandle<hyper::Result<()>>) {
    let mut o = HttpOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    o.header_read_timeout = Some(Duration::from_secs(10));
    o.idle_timeout = Some(Duration::from_secs(60));
    o.body_timeout = Some(Duration::from_secs(30));
    let (client, server) = tokio::io::duplex(1 << 16);
    (client, tokio::spawn(serve_io(server, o, host, None)))
}

/// Read until EOF; what arrived and when (paused clock).
async fn until_closed(c: &mut DuplexStream) -> (String, Duration) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out).await;
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

async fn read_response(c: &mut DuplexStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_must_send_its_head_within_the_header_timeout() {
    let (mut c, task) = connection();
    c.write_all(b"GET /p HTTP/1.1\r\nHo").await.unwrap();
    // Keep trickling: it does not extend the deadline.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.write_all(b"o").await.unwrap();
    }
    let (out, t) = until_closed(&mut c).await;
    assert!(out.is_empty(), "{out}");
    assert!(t <= Duration::from_secs(6), "{t:?}");
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn kept_alive_connections_get_the_idle_timeout_then_the_header_timeout() {
    let (mut c, task) = connection();
    c.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    // Idle for 50 s (past the header timeout, within the idle timeout): still served.
    tokio::time::sleep(Duration::from_secs(50)).await;
    c.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    // A head started and never finished: closed 10 s after its first byte.
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.write_all(b"GET /p HT").await.unwrap();
    let (out, t) = until_closed(&mut c).await;
    assert!(out.is_empty(), "{out}");
    assert!(
        t >= Duration::from_secs(9) && t <= Duration::from_secs(11),
        "{t:?}"
    );
    task.await.unwrap().unwrap();

    let (mut c, task) = connection();
    c.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    let (_, t) = until_closed(&mut c).await;
    assert!(
        t >= Duration::from_secs(59) && t <= Duration::from_secs(61),
        "idle connection closed after {t:?}"
    );
    task.await.unwrap().unwrap();
}

/// The supervisor is not told when a request starts or ends; it looks again every step
/// (10 s here). A request running past every timeout is not cut, and the idle timeout
/// after it counts from its end.
#[tokio::test(start_paused = true)]
async fn a_request_in_progress_outlives_the_timeouts_and_idle_counts_from_its_end() {
    let (mut c, task) = connection_to(Arc::new(Slow));
    let t0 = Instant::now();
    c.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_response(&mut c).await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("slow"),
        "{out}"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(200),
        "{:?}",
        t0.elapsed()
    );
    let (_, t) = until_closed(&mut c).await;
    assert!(
        t >= Duration::from_secs(59) && t <= Duration::from_secs(61),
        "idle connection closed {t:?} after the answer"
    );
    task.await.unwrap().unwrap();
}

/// A head that starts while the supervisor sleeps towards a later deadline (here the idle
/// one) is still closed 10 s after its first byte, not at that later deadline.
#[tokio::test(start_paused = true)]
async fn a_head_started_while_the_supervisor_sleeps_is_timed_from_its_first_byte() {
    let (mut c, task) = connection();
    for wait in [0, 15] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        c.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    c.write_all(b"GET /p HT").await.unwrap();
    let (out, t) = until_closed(&mut c).await;
    assert!(out.is_empty(), "{out}");
    assert!(
        t >= Duration::from_secs(9) && t <= Duration::from_secs(11),
        "{t:?}"
    );
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_body_must_arrive_within_the_body_timeout() {
    let (mut c, task) = connection();
    c.write_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
        .await
        .unwrap();
    let (out, t) = until_closed(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(t <= Duration::from_secs(31), "{t:?}");
    task.await.unwrap().unwrap();
    // In time: answered.
    let (mut c, _task) = connection();
    c.write_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n0123")
        .await
        .unwrap();
    let out = read_response(&mut c).await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("len=4"),
        "{out}"
    );
}
