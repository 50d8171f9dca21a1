//! The native "Hello World!" baseline server of the benchmarks (same hyper stack, no VM).

use super::*;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tracing::info;

use crate::listen::Listener;

/// The native baseline for benchmarks: answer `Hello World!` (text/plain) on every path with
/// the same hyper stack and default [`HttpOptions`] limits, until `shutdown` completes.
pub async fn serve_static_hello(
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    serve_static_hello_on(listener, shutdown).await
}

/// [`serve_static_hello`] on an already bound listener.
pub async fn serve_static_hello_on(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let opts = HttpOptions::new(listener.local_addr()?);
    info!(addr = %opts.listen, "static hello baseline listening");
    accept_loop(
        Listener::Tcp(listener),
        &opts,
        |_| {
            service_fn(|_req: Request<Incoming>| async {
                let mut resp = Response::new(http_body_util::Either::Left(Full::new(
                    Bytes::from_static(b"Hello World!\n"),
                )));
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(13u32));
                Ok::<_, Infallible>(resp)
            })
        },
        shutdown,
    )
    .await
}

/// Blocking convenience for the baseline: 2 worker threads, until SIGTERM or SIGINT.
pub fn run_static_hello(listen: SocketAddr) -> io::Result<()> {
    let rt = http_runtime()?;
    let result = rt.block_on(async {
        let stop = shutdown_signal()?;
        serve_static_hello(listen, stop).await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}
