//! Fuzz target `http`: raw client bytes into the HTTP front end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgevm_runtime::{GuestRequest, GuestResponse, ProgramHost, ServeError, ServeFuture};
use edgevm_server::http::{serve_io, AdminHandler, AdminRequest, HttpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A program host that answers at once (`/slow`: after 30 s), as a hostile program could: it sends the request's
/// own headers back as response headers, with a status and content type taken from the
/// request (so invalid statuses and header values reach the response path).
struct EchoHost;

impl ProgramHost for EchoHost {
    fn serve(&self, program: &str, req: GuestRequest) -> ServeFuture {
        let result = match program {
            "fail" => Err(ServeError::ProgramError("fuzz".into())),
            "gone" => Err(ServeError::ProgramUnavailable("fuzz".into())),
            "slow" => {
                // A program that takes its time (the real runtime bounds it with
                // max_request_time); the clock is paused, so this costs nothing.
                return Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(GuestResponse {
                        status: 200,
                        ..Default::default()
                    })
                });
            }
            _ => Ok(GuestResponse {
                status: req
                    .headers
                    .iter()
                    .find(|(k, _)| k == "x-status")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(200),
                content_type: req.content_type.clone(),
                headers: req.headers.clone(),
                body: req.body.clone(),
                ..Default::default()
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

struct Admin;

impl AdminHandler for Admin {
    fn handle(&self, req: &AdminRequest) -> Option<GuestResponse> {
        (req.path == "/metrics").then(|| GuestResponse {
            status: 200,
            content_type: "text/plain".into(),
            headers: vec![],
            body: req.body.clone(),
            ..Default::default()
        })
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
}

/// Serve one connection whose client sends the input (in pieces: the first byte gives the
/// piece size) and then closes its sending side. Checked: the server ends the connection
/// (tokio's paused clock fires every timeout at once when the server waits, so nothing can
/// hang), and what it wrote is empty or starts with an HTTP/1.x status line.
pub fn http(data: &[u8]) {
    let Some((&piece, bytes)) = data.split_first() else {
        return;
    };
    let piece = (piece as usize).max(1) * 16;
    let mut opts = HttpOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    opts.max_body_bytes = 64 << 10;
    opts.max_header_bytes = 16 << 10;
    opts.max_headers = 32;
    opts.header_read_timeout = Some(Duration::from_secs(10));
    opts.idle_timeout = Some(Duration::from_secs(60));
    opts.body_timeout = Some(Duration::from_secs(60));
    let input = bytes.to_vec();
    RT.with(|rt| {
        rt.block_on(async move {
            let (client, server) = tokio::io::duplex(64 << 10);
            let conn = tokio::spawn(serve_io(
                server,
                opts,
                Arc::new(EchoHost),
                Some(Arc::new(Admin)),
            ));
            let (mut rd, mut wr) = tokio::io::split(client);
            let writer = tokio::spawn(async move {
                for chunk in input.chunks(piece) {
                    if wr.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = wr.shutdown().await;
            });
            let mut out = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(3600), rd.read_to_end(&mut out));
            assert!(read.await.is_ok(), "the server never closed the connection");
            let _ = conn.await;
            let _ = writer.await;
            assert!(
                out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            );
        })
    });
}
