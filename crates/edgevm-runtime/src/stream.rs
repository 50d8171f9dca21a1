//! Streaming responses: `begin_streaming_response(status, ctype, ctlen, content_length, cb,
//! arg)`. The response head goes out at once; then the host calls `cb(arg, max, written,
//! total)` in the same VM, on the stack of the handler that began the stream (its frames stay
//! alive below), and sends each `{data, len}` it returns as a chunk, until `total` bytes are
//! written. See docs/DESIGN.md, "Streaming responses".
//!
//! Bounds: each callback runs at most [`CALLBACK_TIME`] (the reference's 2 s), and the
//! handler plus all callbacks at most the program's `max_request_time`; a callback returning
//! 0 bytes stalls the stream (it fails, as in the reference). The client must take each chunk
//! within [`CLIENT_WAIT`] and the whole body within [`STREAM_TIME`] (Varnish's
//! `idle_send_timeout` and `send_timeout` defaults); a client that goes away stops the
//! program at its next chunk. The VM runs all of it on a blocking thread, never on an HTTP
//! worker (pool.rs), and is reset afterwards like after any response.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgevm_abi::api::Call;
use edgevm_abi::io;
use edgevm_abi::layout;
use edgevm_kvm::{MemoryView, Vcpu};
use tokio::sync::{mpsc, oneshot};

use crate::invoker::{Invoker, Outcome};
use crate::request::GuestResponse;
use crate::request_vm::{fail, run_error_failure, FailureKind, RequestFailure, MAX_RESPONSE_BODY};
use crate::vm::Event;

/// How long one call of the streaming callback may run (the reference's 2 s).
pub const CALLBACK_TIME: Duration = Duration::from_secs(2);
/// The most bytes one callback is asked for (`max`).
pub const CHUNK_MAX: u64 = 1 << 20;
/// How long a chunk may wait for the client to take the ones before it.
pub const CLIENT_WAIT: Duration = Duration::from_secs(60);
/// How long a whole streamed body may take, client included.
pub const STREAM_TIME: Duration = Duration::from_secs(600);
/// Chunks produced ahead of the client.
const CHUNKS_AHEAD: usize = 2;

/// One chunk of a streamed body, or why the stream ended early (the body is then cut short:
/// the HTTP layer ends the connection without the final chunk).
pub type Chunk = Result<Vec<u8>, String>;

/// The body of a streamed response, chunk by chunk as the program produces it. Clones share
/// the one receiver ([`BodyStream::take`] hands it out once).
#[derive(Clone)]
pub struct BodyStream {
    rx: Arc<Mutex<Option<mpsc::Receiver<Chunk>>>>,
    total: u64,
}

impl BodyStream {
    /// A stream of the chunks `rx` receives (`total`: the announced length, or
    /// `u64::MAX` when unknown). The server makes streamed request bodies with it.
    pub fn new(rx: mpsc::Receiver<Chunk>, total: u64) -> BodyStream {
        BodyStream {
            rx: Arc::new(Mutex::new(Some(rx))),
            total,
        }
    }

    /// The body's length as the program announced it (`content_length`).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The chunks (once; None afterwards). Dropping the receiver stops the program at its
    /// next chunk.
    pub fn take(&self) -> Option<mpsc::Receiver<Chunk>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The whole body (at most `limit` bytes, else an error), for callers that need it at
    /// once (self-requests, chains, `edgevm run --request`).
    pub async fn collect(&self, limit: u64) -> Result<Vec<u8>, String> {
        let mut rx = self.take().ok_or("the streamed body was taken already")?;
        let mut body = Vec::new();
        while let Some(c) = rx.recv().await {
            let c = c?;
            if (body.len() + c.len()) as u64 > limit {
                return Err(format!("streamed body larger than {limit} bytes"));
            }
            body.extend_from_slice(&c);
        }
        Ok(body)
    }
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyStream({} bytes)", self.total)
    }
}

impl PartialEq for BodyStream {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.rx, &other.rx)
    }
}

impl Eq for BodyStream {}

/// Where a streamed response goes: its head (with the [`BodyStream`]) through `head`, while
/// the VM goes on producing the chunks on the current (blocking) thread.
pub struct StreamSink {
    pub(crate) head: oneshot::Sender<GuestResponse>,
    pub(crate) rt: tokio::runtime::Handle,
}

impl StreamSink {
    /// A sink and the receiver of the head.
    pub fn new(rt: tokio::runtime::Handle) -> (StreamSink, oneshot::Receiver<GuestResponse>) {
        let (head, rx) = oneshot::channel();
        (StreamSink { head, rt }, rx)
    }
}

/// What `begin_streaming_response` asked for.
pub(crate) struct StreamStart {
    head: GuestResponse,
    total: u64,
    callback: u64,
    arg: u64,
    /// RSP where the handler called it: callbacks run below.
    rsp: u64,
    /// What is left of `max_request_time`.
    left: Duration,
}

impl<M: MemoryView> Invoker<M> {
    /// The guest called `begin_streaming_response`: read and check the head.
    pub(crate) fn begin_stream(&mut self, call: Call) -> Outcome {
        let Call::BeginStreaming {
            status,
            ctype,
            content_length,
            callback,
            arg,
        } = call
        else {
            return fail(FailureKind::Other, "internal error: not a streaming call");
        };
        let left = self
            .vm
            .time_left()
            .unwrap_or(self.settings.max_request_time);
        if self.in_loop_keeping_state() {
            return fail(
                FailureKind::Api,
                "begin_streaming_response() in an event loop that keeps its state (non-ephemeral, or a warmup request) is not supported",
            );
        }
        if !(200..=599).contains(&status) {
            return fail(
                FailureKind::Api,
                format!("invalid HTTP status {status} passed to begin_streaming_response (must be 200-599)"),
            );
        }
        if ctype.len >= 4096 {
            return fail(
                FailureKind::Api,
                "content type passed to begin_streaming_response is 4096 bytes or longer",
            );
        }
        let mem = &self.vm.machine.mem;
        let ct = match mem.read_vec(ctype.addr(), ctype.len as usize) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    FailureKind::Api,
                    format!("bad content type pointer passed to begin_streaming_response: {e}"),
                )
            }
        };
        let mut headers = match io::response_headers(mem) {
            Ok(h) => h,
            Err(e) => return fail(FailureKind::Api, e.to_string()),
        };
        if let Some(cc) = self.cache_control.take() {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("cache-control"));
            headers.push(("Cache-Control".into(), cc));
        }
        Outcome::Streaming(Box::new(StreamStart {
            head: GuestResponse {
                status: status as u16,
                content_type: String::from_utf8_lossy(&ct).into_owned(),
                headers,
                ..Default::default()
            },
            total: content_length,
            callback: callback.0,
            arg: arg.addr(),
            rsp: self.vm.machine.cpu.regs().rsp,
            left,
        }))
    }

    /// Produce the streamed body: to the client through `sink`, or (no sink: warmup,
    /// `edgevm run --request`, a VM driven without the server) collected into the response.
    /// Ok(the head, or the whole response), or the failure (after the head went out, the
    /// client's body is cut short; `streamed` says so).
    pub(crate) fn finish_stream(
        &mut self,
        start: Box<StreamStart>,
        sink: Option<StreamSink>,
    ) -> Result<GuestResponse, RequestFailure> {
        self.streamed = true;
        let head = start.head.clone();
        let r = match sink {
            None => {
                if start.total > MAX_RESPONSE_BODY {
                    return Err(RequestFailure {
                        message: format!(
                            "streamed response of {} bytes is larger than the {} MiB limit for a collected body",
                            start.total,
                            MAX_RESPONSE_BODY >> 20
                        ),
                        kind: FailureKind::Api,
                    });
                }
                let mut body = Vec::new();
                let r = self.pump(&start, &mut |c| {
                    body.extend_from_slice(&c);
                    Ok(())
                });
                r.map(|()| GuestResponse { body, ..head })
            }
            Some(sink) => {
                let (tx, rx) = mpsc::channel::<Chunk>(CHUNKS_AHEAD);
                let mut first = head.clone();
                first.stream = Some(BodyStream::new(rx, start.total));
                if sink.head.send(first).is_err() {
                    return Err(RequestFailure {
                        message: "the client went away before the streamed response began".into(),
                        kind: FailureKind::Other,
                    });
                }
                let until = Instant::now() + STREAM_TIME;
                let rt = sink.rt;
                let r = self.pump(&start, &mut |c| {
                    let wait = CLIENT_WAIT.min(until.saturating_duration_since(Instant::now()));
                    match rt.block_on(tokio::time::timeout(wait, tx.send(Ok(c)))) {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err("the client went away"),
                        Err(_) if Instant::now() >= until => {
                            Err("the streamed response took longer than 600 s")
                        }
                        Err(_) => Err("the client took no data for 60 s"),
                    }
                });
                if let Err(f) = &r {
                    // Cut the client's body short (it sees no final chunk).
                    let _ = tx.try_send(Err(f.message.clone()));
                }
                r.map(|()| head)
            }
        };
        self.vm.stop_deadline();
        self.vm.printer.flush();
        self.pending_storage = None;
        r
    }

    /// Call the callback until `total` bytes went to `out`.
    fn pump(
        &mut self,
        s: &StreamStart,
        out: &mut dyn FnMut(Vec<u8>) -> Result<(), &'static str>,
    ) -> Result<(), RequestFailure> {
        let mut written = 0u64;
        let mut left = s.left;
        let began = Instant::now();
        while written < s.total {
            let max = CHUNK_MAX.min(s.total - written);
            let t = Instant::now();
            let r = self.callback(s, max, written, left);
            left = left.saturating_sub(t.elapsed());
            let chunk = match r {
                Ok(c) => c,
                Err(mut f) => {
                    self.vm.restore_user_mode(&self.entry);
                    f.message = format!(
                        "streamed response failed after {written} of {} bytes: {}",
                        s.total, f.message
                    );
                    return Err(f);
                }
            };
            written += chunk.len() as u64;
            if let Err(why) = out(chunk) {
                return Err(gone(why, written, s.total));
            }
            if began.elapsed() > STREAM_TIME {
                return Err(gone(
                    "the streamed response took longer than 600 s",
                    written,
                    s.total,
                ));
            }
        }
        Ok(())
    }

    /// One call of the streaming callback: the bytes it returned.
    fn callback(
        &mut self,
        s: &StreamStart,
        max: u64,
        written: u64,
        left: Duration,
    ) -> Result<Vec<u8>, RequestFailure> {
        let failed = |message: String, kind| RequestFailure { message, kind };
        if left.is_zero() {
            return Err(failed(
                format!(
                    "Backend VM timed out ({:.1}s)",
                    self.settings.max_request_time.as_secs_f64()
                ),
                FailureKind::Timeout,
            ));
        }
        // Below the handler's frame and its red zone, 16-aligned at the call.
        let base = s.rsp.wrapping_sub(256) & !15;
        let ret_at = base.wrapping_sub(8);
        if let Err(e) = self
            .vm
            .machine
            .mem
            .write(ret_at, &layout::STREAM_RETURN.to_le_bytes())
        {
            return Err(failed(
                format!("the stack of begin_streaming_response()'s caller is not writable: {e}"),
                FailureKind::Api,
            ));
        }
        {
            let r = self.vm.machine.cpu.regs_mut();
            *r = Default::default();
            r.rip = s.callback;
            r.rsp = ret_at;
            r.rflags = 0x202;
            (r.rdi, r.rsi, r.rdx, r.rcx) = (s.arg, max, written, s.total);
        }
        let (budget, what) = if left < CALLBACK_TIME {
            (left, "request (max_request_time)")
        } else {
            (CALLBACK_TIME, "streaming callback")
        };
        self.vm.set_slice(None);
        if let Err(e) = self.vm.start_deadline(budget, what) {
            return Err(run_error_failure(e));
        }
        loop {
            let ev = match self.vm.run_until_event() {
                Ok(ev) => ev,
                Err(e) => return Err(run_error_failure(e)),
            };
            match ev {
                Event::Returned => break,
                Event::Exited(code) => {
                    return Err(failed(
                        format!("the program exited (status {code}) in its streaming callback"),
                        FailureKind::Exit,
                    ))
                }
                Event::Preempted | Event::ConnCall { .. } => {
                    return Err(failed(
                        "internal error: streaming callback preempted".into(),
                        FailureKind::Other,
                    ))
                }
                Event::Hypercall(
                    Call::BackendResponse { .. }
                    | Call::BeginStreaming { .. }
                    | Call::WaitForRequestsPaused { .. },
                ) => {
                    return Err(failed(
                        "the streaming callback answered the request again (the response is being streamed)".into(),
                        FailureKind::Api,
                    ))
                }
                Event::Hypercall(Call::StorageCallv { .. }) => match self.storage_hypercall() {
                    Ok(Some(v)) => self.vm.machine.cpu.regs_mut().rax = v,
                    Ok(None) => {
                        return Err(failed(
                            "internal error: storage call preempted".into(),
                            FailureKind::Other,
                        ))
                    }
                    Err(f) => return Err(f),
                },
                Event::RemoteCall(c) => match self.remote_call(c) {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(failed(
                            "internal error: remote storage call preempted".into(),
                            FailureKind::Other,
                        ))
                    }
                    Err(f) => return Err(f),
                },
                Event::Hypercall(call) => {
                    self.api_call(call)?;
                }
            }
        }
        self.vm.stop_deadline();
        let r = *self.vm.machine.cpu.regs();
        let (data, len) = (r.rsi, r.rdx);
        if len == 0 {
            return Err(failed(
                "the streaming callback returned no data (stalled)".into(),
                FailureKind::Api,
            ));
        }
        if len > max {
            return Err(failed(
                format!(
                    "the streaming callback returned {len} bytes, more than the {max} asked for"
                ),
                FailureKind::Api,
            ));
        }
        self.vm
            .machine
            .mem
            .read_vec(data, len as usize)
            .map_err(|e| {
                failed(
                    format!("bad data pointer returned by the streaming callback: {e}"),
                    FailureKind::Api,
                )
            })
    }

    /// An event loop that goes on after its response (non-ephemeral, warmup) cannot stream:
    /// it would never get back to its wait.
    fn in_loop_keeping_state(&self) -> bool {
        self.in_loop && self.continue_loop
    }
}

fn gone(why: &'static str, written: u64, total: u64) -> RequestFailure {
    RequestFailure {
        message: format!("streamed response stopped after {written} of {total} bytes: {why}"),
        kind: FailureKind::ClientGone,
    }
}
