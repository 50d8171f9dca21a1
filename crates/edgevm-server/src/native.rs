//! The native baselines of the benchmark (`scripts/bench.sh`, docs/BENCHMARKS.md): a minimal
//! hyper server that gives byte-identical answers to the bundled examples served by edgevm
//! (same status, same headers in the same order, same body; only the `Date` header and the
//! counter values differ), without any VM:
//!
//! | path (first segment) | answers like | response |
//! |---|---|---|
//! | `/scounter...` | `guest/examples/scounter.c` (`shared_memory`) | `Hello N World!`, N from 0 |
//! | `/counter...` | `guest/examples/counter.c` (`storage: true`) | `X-Counter: N` (from 1), `Hello Compute World!` |
//! | anything else | `guest/examples/hello.c` | `X-Powered-By: edgevm`, `Hello World!` |
//!
//! Every response also carries `Content-Type: text/plain`, `Content-Length` and
//! `Server: edgevm` like edgevm's own, and hyper adds `Date` as for edgevm. The counters are
//! `AtomicU64`s shared by all connections. The integration test `bench_native` proves the
//! equality against a real `edgevm serve`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The counters behind `/scounter` and `/counter`.
#[derive(Default)]
struct Counters {
    shared: AtomicU64,
    storage: AtomicU64,
}

fn text_response(extra: Option<(&'static str, HeaderValue)>, body: Bytes) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    if let Some((name, value)) = extra {
        h.insert(name, value);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::SERVER, HeaderValue::from_static("edgevm"));
    resp
}

fn answer(path: &str, c: &Counters) -> Response<Full<Bytes>> {
    let first = path
        .trim_start_matches('/')
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    match first {
        "scounter" => {
            let n = c.shared.fetch_add(1, Ordering::Relaxed);
            text_response(None, Bytes::from(format!("Hello {n} World!\n")))
        }
        "counter" => {
            let n = c.storage.fetch_add(1, Ordering::Relaxed) + 1;
            text_response(
                Some(("x-counter", HeaderValue::from(n))),
                Bytes::from_static(b"Hello Compute World!\n"),
            )
        }
        _ => text_response(
            Some(("x-powered-by", HeaderValue::from_static("edgevm"))),
            Bytes::from_static(b"Hello World!\n"),
        ),
    }
}

/// Serve the baselines on `listener` until `shutdown` completes (open connections are then
/// dropped).
pub async fn serve_native_on(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let counters = Arc::new(Counters::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let c = counters.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let resp = answer(req.uri().path(), &c);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

/// A tokio runtime with as many workers as edgevm's front end (`EDGEVM_HTTP_THREADS`).
fn runtime() -> io::Result<tokio::runtime::Runtime> {
    let workers = edgevm_runtime::env::http_threads();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("native-http")
        .enable_all()
        .build()
}

/// Blocking: serve the baselines on `listen` until SIGTERM or SIGINT.
pub fn run_native(listen: SocketAddr) -> io::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let listener = TcpListener::bind(listen).await?;
        serve_native_on(listener, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await
    })
}

/// The baselines on a background thread (for tests); stopped when dropped.
pub struct NativeServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl NativeServer {
    /// Start on `listen` (port 0: any free port).
    pub fn start(listen: SocketAddr) -> io::Result<NativeServer> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let rt = runtime()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("native-baseline".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener)?;
                    serve_native_on(listener, async move {
                        let _ = rx.await;
                    })
                    .await
                })
            })?;
        Ok(NativeServer {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for NativeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
