//! A program's request: reading the body, running the program, mapping its answer or error
//! to an HTTP response.

use super::*;
use crate::limits;
use crate::logtext::client_text;
use bytes::Bytes;
use edgevm_runtime::{GuestRequest, GuestResponse, ServeError};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tracing::{debug, warn};

/// A response before the final touches of [`finish`].
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// Close the connection after this response (e.g. an unread request body).
    pub(super) close: bool,
    /// A streamed body (`begin_streaming_response`), sent chunked instead of `body`.
    pub(super) stream: Option<edgevm_runtime::BodyStream>,
}

impl Answer {
    /// A short `text/plain` answer: `msg` and a newline.
    pub(super) fn text(status: StatusCode, msg: impl std::fmt::Display) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Answer {
            status,
            headers,
            body: Bytes::from(format!("{msg}\n")),
            close: false,
            stream: None,
        }
    }
}

/// What routing decided about a request.
pub(super) struct Outcome {
    pub(super) answer: Answer,
    pub(super) program: Option<String>,
    pub(super) error: Option<ServeError>,
    pub(super) exits: Option<u64>,
}

impl From<Answer> for Outcome {
    fn from(answer: Answer) -> Outcome {
        Outcome {
            answer,
            program: None,
            error: None,
            exits: None,
        }
    }
}

/// A request id: unique in this process, and (its first part being the server's start time)
/// across restarts. Error responses carry it (body and `X-Request-Id`), log lines too.
#[derive(Clone, Copy)]
pub(super) struct RequestId(u32, u64);

impl RequestId {
    pub(super) fn next() -> RequestId {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        static START: OnceLock<u32> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let start = *START.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32)
        });
        RequestId(start, NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}-{:x}", self.0, self.1)
    }
}

/// Read the body, hand the request to the program and wait for its answer.
pub(super) async fn run_program(
    shared: &Shared,
    program: &str,
    req: Request<Incoming>,
    id: RequestId,
) -> Outcome {
    let max = shared.opts.max_body_bytes;
    let url = request_target(&req).to_owned();
    let (parts, body) = req.into_parts();
    let opts = &shared.opts;
    if !hyper::body::Body::is_end_stream(&body) && shared.host.streams_body(program).await {
        return run_streamed_body(shared, program, url, parts, body, id).await;
    }
    let (body, _lease) =
        match limits::read_body(body, max, opts.body_timeout, &opts.body_memory).await {
            Ok(b) => b,
            Err(e) => {
                crate::client_warn!(program = %client_text(program), "{e}");
                return body_error(e).into();
            }
        };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let (arg, headers) = take_arg(&shared.opts, &parts);
    let greq = GuestRequest {
        method: parts.method.as_str().to_owned(),
        url,
        arg,
        headers,
        content_type,
        body: body.into(),
        body_in: None,
        warmup: false,
        self_depth: 0,
    };
    serve_guest(shared, program, greq, id).await
}

/// A request whose program takes its body streamed (`set_backend_stream_post`): the body is
/// not buffered and not limited by `max_body_size`; its frames go to the program as they
/// arrive (a few ahead at most), and the client must keep sending: the whole body within
/// `body_timeout` of the head, not counting the time the program takes for the segments.
async fn run_streamed_body(
    shared: &Shared,
    program: &str,
    url: String,
    parts: hyper::http::request::Parts,
    mut body: Incoming,
    id: RequestId,
) -> Outcome {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<edgevm_runtime::stream::Chunk>(4);
    let failed: std::sync::Arc<std::sync::Mutex<Option<limits::BodyError>>> = Default::default();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timeout = shared.opts.body_timeout;
    let (f2, d2) = (failed.clone(), done.clone());
    tokio::spawn(async move {
        let mut deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let fail = |e: limits::BodyError| {
            let why = e.to_string();
            *f2.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            why
        };
        loop {
            let frame = match deadline {
                Some(d) => match tokio::time::timeout_at(d, body.frame()).await {
                    Ok(f) => f,
                    Err(_) => {
                        let why = fail(limits::BodyError::TimedOut(timeout.unwrap_or_default()));
                        let _ = tx.send(Err(why)).await;
                        return;
                    }
                },
                None => body.frame().await,
            };
            let data = match frame {
                None => {
                    d2.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
                Some(Err(e)) => {
                    let why = fail(limits::BodyError::Failed(e.to_string()));
                    let _ = tx.send(Err(why)).await;
                    return;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) if !d.is_empty() => d,
                    _ => continue,
                },
            };
            // Time the program takes for the segments is not the client's.
            let t = tokio::time::Instant::now();
            if tx.send(Ok(data.to_vec())).await.is_err() {
                return; // the program answered (or failed) before the end of the body
            }
            deadline = deadline.map(|d| d + t.elapsed());
        }
    });
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let (arg, headers) = take_arg(&shared.opts, &parts);
    let greq = GuestRequest {
        method: parts.method.as_str().to_owned(),
        url,
        arg,
        headers,
        content_type,
        body_in: Some(edgevm_runtime::BodyStream::new(rx, u64::MAX)),
        ..Default::default()
    };
    let mut outcome = serve_guest(shared, program, greq, id).await;
    let err = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(e) = err {
        // The client's fault, not the program's: 408 or 400, as for a buffered body.
        crate::client_warn!(program = %client_text(program), "{e}");
        outcome.answer = body_error(e);
    } else if !done.load(std::sync::atomic::Ordering::Acquire) {
        // Answered before the end of the body: the rest is not read.
        outcome.answer.close = true;
    }
    outcome
}

/// Run `greq` in `program` and map its answer or error to the client's response.
pub(super) async fn serve_guest(
    shared: &Shared,
    program: &str,
    greq: GuestRequest,
    id: RequestId,
) -> Outcome {
    match shared.host.serve(program, greq).await {
        Ok(resp) => Outcome {
            exits: resp.exits,
            answer: guest_answer(resp),
            program: None,
            error: None,
        },
        Err(err @ ServeError::ProgramNotFound(_)) => {
            // The name is the client's: no echo of it in the log line.
            crate::client_warn!(program = %client_text(program), "request for an unknown program");
            Outcome {
                answer: error_answer(shared.opts.error_details, program, &err, id),
                program: None,
                error: Some(err),
                exits: None,
            }
        }
        Err(err) => {
            let mut answer = error_answer(shared.opts.error_details, program, &err, id);
            if matches!(err, ServeError::QueueFull | ServeError::QueueTimeout) {
                // Overload: the client may try again shortly. Not logged per request (an
                // overloaded server would spend its time logging): the stats count them.
                answer
                    .headers
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                overload_warning(program, &err);
            } else {
                warn!(program, "request failed: {err} (request id {id})");
            }
            Outcome {
                answer,
                program: None,
                error: Some(err),
                exits: None,
            }
        }
    }
}

/// The answer to a request the program did not answer: the status, a short reason and the
/// request id (also in `X-Request-Id`); with `details`, the whole error (crash report, host
/// paths) and the request id.
pub(super) fn error_answer(
    details: bool,
    program: &str,
    err: &ServeError,
    id: RequestId,
) -> Answer {
    let status = error_status(err);
    let mut a = if details {
        Answer::text(status, format_args!("{err} (request id {id})"))
    } else {
        let reason = match err {
            ServeError::ProgramNotFound(_) => "no such program".to_string(),
            ServeError::ProgramUnavailable(_) => format!("program '{program}' is unavailable"),
            ServeError::ProgramError(_) => format!("program '{program}' failed"),
            other => other.to_string(),
        };
        Answer::text(
            status,
            format_args!(
                "{} {}: {reason} (request id {id})",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        )
    };
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        a.headers.insert("x-request-id", v);
    }
    a
}

/// The answer to a request whose body could not be read: the connection is closed after it.
pub(super) fn body_error(e: limits::BodyError) -> Answer {
    let mut a = Answer::text(e.status(), &e);
    a.close = true;
    if matches!(e, limits::BodyError::OverBudget) {
        a.headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    a
}

/// Log a refused request: every one at debug level, at most one a second as a warning.
pub(super) fn overload_warning(program: &str, err: &ServeError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1;
    if LAST.swap(now, Ordering::Relaxed) != now {
        warn!(program, "request refused: {err} (more are counted in /_edgevm/stats: queue_full, queue_timeouts)");
    } else {
        debug!(program, "request refused: {err}");
    }
}

/// The HTTP status for a [`ServeError`].
pub fn error_status(err: &ServeError) -> StatusCode {
    match err {
        ServeError::ProgramNotFound(_) => StatusCode::NOT_FOUND,
        ServeError::ProgramUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServeError::QueueTimeout | ServeError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
        ServeError::ProgramError(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Headers a program may not set: framing and hop-by-hop headers, owned by the server.
pub(super) fn is_forbidden_response_header(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Turn a program's (or admin handler's) response into an [`Answer`].
pub(super) fn guest_answer(resp: GuestResponse) -> Answer {
    let status = match StatusCode::from_u16(resp.status) {
        Ok(s) if (200..=599).contains(&resp.status) => s,
        _ => {
            warn!(status = resp.status, "program answered an invalid status");
            return Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format_args!("program error: invalid status {}", resp.status),
            );
        }
    };
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + 1);
    for (name, value) in &resp.headers {
        let Ok(hname) = HeaderName::from_bytes(name.trim().as_bytes()) else {
            warn!(header = %name, "program set an invalid header name; dropped");
            continue;
        };
        if is_forbidden_response_header(&hname) {
            debug!(header = %name, "program set a framing/hop-by-hop header; ignored");
            continue;
        }
        let Ok(hvalue) = HeaderValue::from_str(value.trim()) else {
            warn!(header = %name, "program set an invalid header value; dropped");
            continue;
        };
        headers.append(hname, hvalue);
    }
    if !resp.content_type.is_empty() {
        match HeaderValue::from_str(resp.content_type.trim()) {
            Ok(v) => {
                headers.insert(header::CONTENT_TYPE, v);
            }
            Err(_) => warn!("program set an invalid content type; dropped"),
        }
    }
    Answer {
        status,
        headers,
        body: Bytes::from(resp.body),
        close: false,
        stream: resp.stream,
    }
}

/// Final touches: framing headers, `Server`, HEAD and no-body statuses.
pub(super) fn finish(answer: Answer, is_head: bool, server_header: bool) -> Response<RespBody> {
    let Answer {
        status,
        mut headers,
        body,
        close,
        stream,
    } = answer;
    let bodyless_status = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // A streamed body goes out chunked as the program produces it (no Content-Length: a
    // body cut short is then visible to the client as a missing final chunk). For HEAD or a
    // bodyless status it is dropped, which stops the program.
    let streamed = stream.is_some();
    let stream = stream
        .filter(|_| !is_head && !bodyless_status)
        .and_then(|s| Some((s.take()?, s.total())));
    if bodyless_status {
    } else if streamed {
        // What a GET would have got (hyper sets it itself when it sends the body).
        if is_head {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
    } else {
        // For HEAD this is the length the body would have had.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if server_header && !headers.contains_key(header::SERVER) {
        headers.insert(header::SERVER, HeaderValue::from_static("edgevm"));
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let body = if is_head || bodyless_status {
        Bytes::new()
    } else {
        body
    };
    let body = match stream {
        Some((rx, total)) => Either::Right(GuestBody::new(rx, total)),
        None => Either::Left(Full::new(body)),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A streamed response body: the program's chunks as they come (edgevm_runtime::stream).
/// One that ends before the announced length, or with the runtime's error, ends in an error:
/// hyper then closes the connection without the final chunk. The error comes one poll after
/// it is known, so that hyper flushes what it holds first (the head and the chunks before
/// it reach the client).
pub(crate) struct GuestBody {
    rx: tokio::sync::mpsc::Receiver<edgevm_runtime::stream::Chunk>,
    total: u64,
    sent: u64,
    cut: Option<String>,
}

impl GuestBody {
    pub(super) fn new(
        rx: tokio::sync::mpsc::Receiver<edgevm_runtime::stream::Chunk>,
        total: u64,
    ) -> GuestBody {
        GuestBody {
            rx,
            total,
            sent: 0,
            cut: None,
        }
    }
}

/// Why a streamed body was cut short.
#[derive(Debug, thiserror::Error)]
#[error("streamed response cut short: {0}")]
pub(crate) struct StreamCut(String);

impl hyper::body::Body for GuestBody {
    type Data = Bytes;
    type Error = StreamCut;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, StreamCut>>> {
        use std::task::Poll;
        if let Some(why) = self.cut.take() {
            return Poll::Ready(Some(Err(StreamCut(why))));
        }
        let why = match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(c))) => {
                self.sent += c.len() as u64;
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(c)))));
            }
            Poll::Ready(Some(Err(e))) => e,
            Poll::Ready(None) if self.sent < self.total => {
                format!("{} of {} bytes", self.sent, self.total)
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        self.cut = Some(why);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
