//! Streamed request bodies: a program that registers `set_backend_stream_post(f)` (and a POST
//! handler) receives a request body segment by segment as it arrives, `f(url, arg, ctype,
//! data, len, off)` for each, which must return `len` (all consumed); then its POST handler
//! runs as for a buffered body. The server does not buffer such bodies, so they may be larger
//! than `max_body_size`. See docs/DESIGN.md, "Streamed request bodies".
//!
//! Segments are written one after another into the request-body area (16 MiB): while the
//! body fits there, the final POST handler gets all of it (`data`, `len`), as in the
//! reference. A segment that no longer fits behind the others goes to the start of the area,
//! and so do the ones after it; the POST handler then gets `data` NULL and the total `len`.
//! The segment calls and the POST handler together run at most `max_request_time`; waiting
//! for the client's next segment does not count (the server bounds it with `body_timeout`).

use std::time::{Duration, Instant};

use edgevm_abi::api::Call;
use edgevm_abi::layout;
use edgevm_kvm::{MemoryView, Vcpu};

use crate::invoker::{Invoker, Outcome};
use crate::request::GuestRequest;
use crate::request_vm::{fail, run_error_failure, FailureKind, RequestFailure};
use crate::vm::Event;

/// How a segment call ended.
enum Segment {
    /// Returned: the bytes it says it consumed.
    Consumed(u64),
    /// It answered the request (or failed): the request ends with this.
    Ended(Outcome),
}

impl<M: MemoryView> Invoker<M> {
    /// Feed the streamed body of `req` to the stream-POST handler, then enter the POST
    /// handler (`url`, `arg`, `ctype` at the request's pointers) and run it.
    pub(crate) fn stream_post_body(
        &mut self,
        req: &GuestRequest,
        ptrs: (u64, u64, u64),
        slice: Option<Duration>,
    ) -> Outcome {
        let Some(rx) = req.body_in.as_ref().and_then(|b| b.take()) else {
            return fail(
                FailureKind::Other,
                "internal error: the streamed body is gone",
            );
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return fail(
                FailureKind::Other,
                "internal error: a streamed body outside the server",
            );
        };
        let mut rx = rx;
        let (area, cap) = (self.vm.layout.input_area, layout::INPUT_AREA_SIZE);
        let (handler, post) = (self.vm.handlers.stream_post, self.vm.handlers.post);
        let mut left = self.settings.max_request_time;
        let (mut off, mut pos, mut wrapped) = (0u64, 0u64, false);
        self.prepare_run(None);
        loop {
            // Waiting for the client is the server's to bound (body_timeout), not the
            // program's time: on a blocking thread (pool.rs runs these requests there).
            let seg = match rt.block_on(rx.recv()) {
                None => break,
                Some(Ok(seg)) => seg,
                Some(Err(why)) => {
                    return fail(FailureKind::ClientGone, format!("request body: {why}"));
                }
            };
            for piece in seg.chunks(cap as usize) {
                let len = piece.len() as u64;
                if pos + len > cap {
                    (pos, wrapped) = (0, true);
                }
                if let Err(e) = self.vm.machine.mem.write(area + pos, piece) {
                    return fail(FailureKind::Other, format!("request body: {e}"));
                }
                let t = Instant::now();
                let r = self.segment_call(handler, ptrs, [area + pos, len, off], left);
                left = left.saturating_sub(t.elapsed());
                match r {
                    Ok(Segment::Consumed(n)) if n == len => {}
                    Ok(Segment::Consumed(n)) => {
                        return fail(
                            FailureKind::Api,
                            format!(
                                "the streaming POST handler consumed {} of {len} bytes at offset {off} (it must take the whole segment)",
                                n as i64
                            ),
                        )
                    }
                    Ok(Segment::Ended(o)) => return o,
                    Err(f) => {
                        self.vm.restore_user_mode(&self.entry);
                        return Outcome::Failed(f);
                    }
                }
                off += len;
                pos += len;
            }
        }
        // The POST handler, with the whole body when it fitted.
        let data = if wrapped || off == 0 { 0 } else { area };
        let rsp = self.entry.rsp.wrapping_sub(512);
        let args = [ptrs.0, ptrs.1, ptrs.2, data, off];
        if let Err(e) = self.vm.enter_handler(&self.entry, post, rsp, &args) {
            return Outcome::Failed(run_error_failure(e));
        }
        self.prepare_run(slice);
        if let Err(e) = self.vm.start_deadline(left, "request (max_request_time)") {
            return Outcome::Failed(run_error_failure(e));
        }
        self.run_and_settle()
    }

    /// One call of the stream-POST handler with `rest` = (data, len, off), at most `left`.
    fn segment_call(
        &mut self,
        handler: u64,
        ptrs: (u64, u64, u64),
        rest: [u64; 3],
        left: Duration,
    ) -> Result<Segment, RequestFailure> {
        if left.is_zero() {
            return Err(RequestFailure {
                message: format!(
                    "Backend VM timed out ({:.1}s)",
                    self.settings.max_request_time.as_secs_f64()
                ),
                kind: FailureKind::Timeout,
            });
        }
        let rsp = self.entry.rsp.wrapping_sub(512);
        let args = [ptrs.0, ptrs.1, ptrs.2, rest[0], rest[1], rest[2]];
        // Through the keep-the-result stub: the handler's return value comes back in RSI.
        self.vm
            .enter_handler(&self.entry, layout::CALL_KEEP, rsp, &args)
            .map_err(run_error_failure)?;
        self.vm.machine.cpu.regs_mut().rbx = handler;
        self.vm
            .start_deadline(left, "request (max_request_time)")
            .map_err(run_error_failure)?;
        let r = self.segment_events();
        self.vm.stop_deadline();
        r
    }

    fn segment_events(&mut self) -> Result<Segment, RequestFailure> {
        loop {
            let ev = self.vm.run_until_event().map_err(run_error_failure)?;
            match ev {
                Event::Returned => {
                    return Ok(Segment::Consumed(self.vm.machine.cpu.regs().rsi));
                }
                Event::Exited(code) => {
                    return Err(RequestFailure {
                        message: format!(
                            "the program exited (status {code}) in its streaming POST handler"
                        ),
                        kind: FailureKind::Exit,
                    })
                }
                // An answer before the whole body: the request ends with it (the rest of the
                // body is not read; the server closes the connection).
                Event::Hypercall(Call::BackendResponse { .. }) => {
                    return Ok(Segment::Ended(self.read_response()))
                }
                Event::Hypercall(Call::StorageCallv { .. }) => match self.storage_hypercall()? {
                    Some(v) => self.vm.machine.cpu.regs_mut().rax = v,
                    None => {
                        return Err(RequestFailure {
                            message: "internal error: storage call preempted".into(),
                            kind: FailureKind::Other,
                        })
                    }
                },
                Event::RemoteCall(c) => {
                    if self.remote_call(c)?.is_none() {
                        return Err(RequestFailure {
                            message: "internal error: remote storage call preempted".into(),
                            kind: FailureKind::Other,
                        });
                    }
                }
                Event::Hypercall(
                    Call::BeginStreaming { .. } | Call::WaitForRequestsPaused { .. },
                ) => {
                    return Err(RequestFailure {
                        message: "begin_streaming_response() or wait_for_requests_paused() in a streaming POST handler".into(),
                        kind: FailureKind::Api,
                    })
                }
                Event::Hypercall(call) => self.api_call(call)?,
                Event::Preempted | Event::ConnCall { .. } => {
                    return Err(RequestFailure {
                        message: "internal error: streaming POST handler preempted".into(),
                        kind: FailureKind::Other,
                    })
                }
            }
        }
    }
}
