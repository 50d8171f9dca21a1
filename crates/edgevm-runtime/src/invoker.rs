//! [`Invoker`]: calls a program's handler in a VM — writes the request, enters the guest once,
//! serves the request context's calls (request_calls.rs) and reads the response. See
//! docs/DESIGN.md, "One exit per request".

use std::time::Duration;

use edgevm_abi::api::Call;
use edgevm_abi::io::{self, IoError, RequestData};
use edgevm_abi::layout;
use edgevm_abi::linux::{fill_random, Output};
use edgevm_kvm::{KvmVcpu, MemoryView, PrivateView, Vcpu};

use crate::error::CallvError;
use crate::remote::RemoteCall;
use crate::request::{GuestRequest, GuestResponse};
use crate::request_vm::{
    callv_failure, fail, run_error_failure, FailureKind, RequestFailure, RequestSettings,
    REQUEST_OUTPUT_BUDGET,
};
use crate::storage::{Answer, StorageCall, StorageHandle};
use crate::vm::{EntryState, Event, Vm};

/// Calls a program's handlers in a VM: writes the request, enters the guest once, serves the
/// request-context hypercalls and reads the response. Used by request VMs and, for `warmup`,
/// by the main VM before it is frozen.
pub struct Invoker<M: MemoryView = PrivateView> {
    /// The VM.
    pub vm: Vm<KvmVcpu, M>,
    /// What every handler call starts from (stack, TLS/GS bases, user segments, FPU image).
    pub(crate) entry: EntryState,
    /// Limits for one call.
    pub(crate) settings: RequestSettings,
    pub(crate) cache_control: Option<String>,
    /// The program's storage VM, if it has one.
    pub(crate) storage: Option<StorageHandle>,
    /// This VM's index in its program's pool (`vcpureqid()`).
    pub(crate) index: u32,
    /// A storage call the handler waits for (the request was preempted while waiting).
    pub(crate) pending_storage: Option<PendingStorage>,
    /// VM exits of the storage VM in this request's storage calls.
    pub(crate) storage_exits: u64,
    /// An event-loop program: the registers of its frozen paused point.
    pub(crate) paused_regs: Option<kvm_bindings::kvm_regs>,
    /// The vCPU stands at a paused point of its own (a non-ephemeral VM after a request, the
    /// main VM after a warmup request): the next request resumes it as it is.
    pub(crate) live_paused: bool,
    /// After its response, an event loop runs on to its next `wait_for_requests_paused()`
    /// (non-ephemeral VMs and warmup; an ephemeral VM is reset instead).
    pub(crate) continue_loop: bool,
    /// Pausing writes the resume slots (the main VM during warmup: its image is frozen next).
    pub(crate) pause_slots: bool,
    /// The request being served resumed the event loop.
    pub(crate) in_loop: bool,
    /// The request's response was streamed (`begin_streaming_response`): once its head went
    /// out, `on_error` cannot answer instead.
    pub(crate) streamed: bool,
    /// The response of an event loop that runs on to its next wait.
    stashed: Option<GuestResponse>,
    /// The event loop failed after its response: reset the VM fully.
    pub(crate) broken: bool,
    /// Header fields lost to a full table in this request (logged once).
    pub(crate) lost_headers: u32,
}

pub(crate) enum Outcome {
    Response(GuestResponse),
    Failed(RequestFailure),
    /// The time slice ran out; the handler is stopped mid-way and continues with
    /// [`Invoker::resume_handler`] (on any thread).
    Preempted,
    /// The handler called `begin_streaming_response` (stream.rs): the head is read, the body
    /// comes from its callback ([`Invoker::finish_stream`]).
    Streaming(Box<crate::stream::StreamStart>),
}

/// A storage call made by a request and not answered yet.
pub(crate) struct PendingStorage {
    pub(crate) call: StorageCall,
    pub(crate) dst: u64,
    pub(crate) dstlen: u64,
    /// A remote call (crate::remote): where the request VM resumes with the result.
    pub(crate) remote: Option<Box<RemoteCall>>,
}

pub(crate) enum StorageStep {
    /// Answered at once (refused): the return value.
    Done(u64),
    /// Queued.
    Waiting(PendingStorage),
}

impl<M: MemoryView> Invoker<M> {
    /// An invoker over `vm`, whose handler calls start from `entry`.
    pub fn new(
        mut vm: Vm<KvmVcpu, M>,
        entry: EntryState,
        settings: RequestSettings,
        storage: Option<StorageHandle>,
    ) -> Self {
        // Calls into a storage program linked high are remote storage calls.
        vm.remote = storage.as_ref().and_then(StorageHandle::remote_range);
        Invoker {
            vm,
            entry,
            settings,
            cache_control: None,
            storage,
            index: 0,
            pending_storage: None,
            storage_exits: 0,
            paused_regs: None,
            live_paused: false,
            continue_loop: false,
            pause_slots: false,
            in_loop: false,
            streamed: false,
            stashed: None,
            broken: false,
            lost_headers: 0,
        }
    }

    /// `storage_callv(func, n, bufs, dst, dstlen)` from a request.
    pub(crate) fn storage_callv(&mut self) -> Result<StorageStep, RequestFailure> {
        let Some(storage) = self.storage.clone() else {
            self.vm
                .printer
                .log("storage_call() needs \"storage\": true in the program's configuration");
            return Ok(StorageStep::Done(u64::MAX));
        };
        let args = crate::storage::read_callv(&mut self.vm)
            .map_err(|e| callv_failure(CallvError::BadArguments(e)))?;
        let Some((func, inputs, dst, dstlen)) = args else {
            return Ok(StorageStep::Done(u64::MAX));
        };
        let call = storage.begin(func, inputs, dstlen);
        Ok(StorageStep::Waiting(PendingStorage {
            call,
            dst,
            dstlen,
            remote: None,
        }))
    }

    /// A remote storage call (crate::remote): run it in the storage VM like a storage_callv
    /// ([`Invoker::advance_storage`]); the request VM then resumes at its return address.
    /// Ok(Some(RAX)) once answered, Ok(None) when the slice is over first.
    pub(crate) fn remote_call(&mut self, c: RemoteCall) -> Result<Option<u64>, RequestFailure> {
        let Some(storage) = self.storage.clone() else {
            return Err(RequestFailure {
                message: format!("remote storage call to {:#x} without a storage VM", c.func),
                kind: FailureKind::Other,
            });
        };
        let call = storage.begin_remote(c.func, c.args);
        self.advance_storage(PendingStorage {
            call,
            dst: 0,
            dstlen: 0,
            remote: Some(Box::new(c)),
        })
    }

    /// Resume the request VM after remote call `c` with its answer (RAX, RDX), or fail it.
    fn finish_remote(&mut self, c: &RemoteCall, res: Answer) -> Result<u64, RequestFailure> {
        let failed = |message: String| RequestFailure {
            message,
            kind: FailureKind::Other,
        };
        let r = match res {
            Ok(Some(r)) => r,
            Ok(None) => return Err(failed("remote storage call: no result".into())),
            Err(e) => return Err(failed(format!("remote storage call failed: {e}"))),
        };
        let rdx = r
            .data
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        self.vm
            .return_from_remote(c, r.len, rdx)
            .map_err(run_error_failure)?;
        Ok(r.len)
    }

    /// The answer to a storage call: copy the result and compute the return value.
    pub(crate) fn storage_finish(
        &mut self,
        (dst, dstlen): (u64, u64),
        res: Answer,
    ) -> Result<u64, RequestFailure> {
        crate::storage::finish_callv(&mut self.vm, dst, dstlen, res).map_err(callv_failure)
    }

    /// `storage_callv` from the request handler: take the storage VM's turn and run the call
    /// on this thread (storage.rs). On an HTTP worker (in a time slice) only until the slice
    /// is over, waiting for the turn included: the call then goes on wherever the request
    /// resumes ([`Outcome::Preempted`]), keeping its place in the queue.
    pub(crate) fn storage_hypercall(&mut self) -> Result<Option<u64>, RequestFailure> {
        match self.storage_callv()? {
            StorageStep::Done(v) => Ok(Some(v)),
            StorageStep::Waiting(p) => self.advance_storage(p),
        }
    }

    /// Advance a storage call (see [`StorageCall::advance`]): Ok(Some(return value)), or
    /// Ok(None) when the slice is over first (kept in `pending_storage`).
    pub(crate) fn advance_storage(
        &mut self,
        mut p: PendingStorage,
    ) -> Result<Option<u64>, RequestFailure> {
        let slice = self.vm.slice_left();
        let r = p.call.advance(slice, self.vm.time_left());
        self.storage_exits += std::mem::take(&mut p.call.exits);
        let Some(res) = r else {
            self.pending_storage = Some(p);
            return Ok(None);
        };
        // The storage VM may have run on this thread: point its timer back at this VM.
        if let Err(e) = self.vm.arm_timer() {
            return Err(run_error_failure(e));
        }
        if let Some(c) = p.remote {
            return self.finish_remote(&c, res).map(Some);
        }
        self.storage_finish((p.dst, p.dstlen), res).map(Some)
    }

    /// Run the right handler for `req`; Ok(response) or the failure (no reset here).
    pub fn invoke(&mut self, req: &GuestRequest) -> Result<GuestResponse, RequestFailure> {
        match self.call_handler(req, None) {
            Outcome::Response(r) => Ok(r),
            Outcome::Failed(f) => Err(f),
            Outcome::Streaming(s) => self.finish_stream(s, None),
            Outcome::Preempted => match self.resume_handler() {
                Outcome::Response(r) => Ok(r),
                Outcome::Failed(f) => Err(f),
                Outcome::Streaming(s) => self.finish_stream(s, None),
                Outcome::Preempted => Err(RequestFailure {
                    message: "internal error: request preempted twice".into(),
                    kind: FailureKind::Other,
                }),
            },
        }
    }

    pub(crate) fn call_handler(&mut self, req: &GuestRequest, slice: Option<Duration>) -> Outcome {
        let h = self.vm.handlers;
        if req.body_in.is_some() {
            return self.streamed_body(req, slice);
        }
        let method = req.method.as_str();
        let get_like = method == "GET" || method == "HEAD";
        // As the reference: the request handler takes everything; a request with a body goes
        // to the POST handler, one without to the GET handler (other methods without a body
        // to the POST handler when there is no GET handler); what no handler takes resumes
        // an event loop, or is answered 405.
        let (handler, kind) = if h.request != 0 {
            (h.request, 3)
        } else if req.body.is_empty() && h.get != 0 {
            (h.get, 1)
        } else if (!req.body.is_empty() || !get_like) && h.post != 0 {
            (h.post, 2)
        } else if let Some(at) = self.vm.paused {
            (at, 0)
        } else {
            let mut allow = Vec::new();
            if h.get != 0 {
                allow.push("GET, HEAD");
            }
            if h.post != 0 {
                allow.push("POST, PUT, PATCH, DELETE, OPTIONS");
            }
            let what = if req.body.is_empty() {
                method.to_string()
            } else {
                format!("{method} with a body")
            };
            return Outcome::Response(GuestResponse {
                status: 405,
                content_type: "text/plain".into(),
                headers: vec![("Allow".into(), allow.join(", "))],
                body: format!("405 Method Not Allowed: the program has no handler for {what}\n")
                    .into_bytes(),
                stream: None,
                exits: None,
            });
        };
        if req.body.len() as u64 > layout::INPUT_AREA_SIZE {
            return fail(
                FailureKind::Api,
                "request body larger than the program's input area",
            );
        }
        let ptrs = match self.write_request(req) {
            Ok(p) => p,
            Err(e) => return fail(FailureKind::Api, e.to_string()),
        };
        self.in_loop = kind == 0;
        self.streamed = false;
        self.stashed = None;
        self.lost_headers = 0;
        self.vm.fetch_depth = req.self_depth;
        // A new request: nothing left over from one that failed while a call waited.
        self.vm.forget_pending();
        if kind == 0 {
            if let Err(f) = self.resume_loop(handler) {
                return Outcome::Failed(f);
            }
            return self.start_run(slice);
        }
        let body_addr = if req.body.is_empty() {
            0
        } else {
            self.vm.layout.input_area
        };
        let args = match kind {
            3 => vec![io::REQUEST_STRUCT],
            2 => vec![
                ptrs.url,
                ptrs.arg,
                ptrs.content_type,
                body_addr,
                req.body.len() as u64,
            ],
            _ => vec![ptrs.url, ptrs.arg],
        };
        // Below the frozen frame of wait_for_requests() and its red zone.
        let rsp = self.entry.rsp.wrapping_sub(512);
        if let Err(e) = self.vm.enter_handler(&self.entry, handler, rsp, &args) {
            return Outcome::Failed(run_error_failure(e));
        }
        self.start_run(slice)
    }

    /// A request whose body the server streams (stream_post.rs): to the stream-POST handler.
    fn streamed_body(&mut self, req: &GuestRequest, slice: Option<Duration>) -> Outcome {
        let h = self.vm.handlers;
        if h.request != 0 || h.stream_post == 0 || h.post == 0 {
            return fail(
                FailureKind::Api,
                "the program takes no streamed request body (set_backend_stream_post and set_backend_post)",
            );
        }
        let ptrs = match self.write_request(req) {
            Ok(p) => p,
            Err(e) => return fail(FailureKind::Api, e.to_string()),
        };
        self.in_loop = false;
        self.streamed = false;
        self.stashed = None;
        self.lost_headers = 0;
        self.vm.fetch_depth = req.self_depth;
        self.vm.forget_pending();
        self.stream_post_body(req, (ptrs.url, ptrs.arg, ptrs.content_type), slice)
    }

    /// Resume the event loop paused with request pointer `at`: `*at` gets the request's
    /// `struct kvm_request` (its strings in the I/O area), and the VM continues where
    /// `wait_for_requests_paused()` returns — from the frozen point, or as it stands.
    fn resume_loop(&mut self, at: u64) -> Result<(), RequestFailure> {
        let size = std::mem::size_of::<edgevm_abi::guest_abi::KvmRequest>();
        let mem = &mut self.vm.machine.mem;
        let copied = mem
            .read_vec(io::REQUEST_STRUCT, size)
            .and_then(|k| mem.write(at, &k));
        if let Err(e) = copied {
            return Err(RequestFailure {
                message: format!("bad request pointer passed to wait_for_requests_paused: {e}"),
                kind: FailureKind::Api,
            });
        }
        if self.live_paused {
            return Ok(());
        }
        let Some(regs) = self.paused_regs else {
            return Err(RequestFailure {
                message: "internal error: no paused point to resume".into(),
                kind: FailureKind::Other,
            });
        };
        self.vm
            .enter_paused(&self.entry, &regs)
            .map_err(run_error_failure)
    }

    /// Run the entered handler (or resumed loop) with the request's limits.
    fn start_run(&mut self, slice: Option<Duration>) -> Outcome {
        self.prepare_run(slice);
        if let Err(e) = self
            .vm
            .start_deadline(self.settings.max_request_time, "request (max_request_time)")
        {
            return Outcome::Failed(run_error_failure(e));
        }
        self.run_and_settle()
    }

    /// The request's limits, before the guest runs: request memory, output budget, slice.
    pub(crate) fn prepare_run(&mut self, slice: Option<Duration>) {
        self.vm
            .linux
            .set_request_limit(Some(self.settings.max_request_memory));
        self.cache_control = None;
        self.vm.printer.set_budget(Some(REQUEST_OUTPUT_BUDGET));
        self.vm.set_slice(slice);
    }

    /// Continue a handler stopped by its time slice, on the current thread, to the end.
    pub(crate) fn resume_handler(&mut self) -> Outcome {
        if let Err(e) = self.vm.resume_deadline() {
            self.pending_storage = None;
            self.vm.stop_deadline();
            self.vm.restore_user_mode(&self.entry);
            return Outcome::Failed(run_error_failure(e));
        }
        self.run_and_settle()
    }

    /// Run the handler until it answers, fails or is preempted; stop or pause the deadline.
    pub(crate) fn run_and_settle(&mut self) -> Outcome {
        let mut r = self.run_request();
        if matches!(r, Outcome::Preempted) {
            // The VM may move to another thread now: this thread's timer lets go of it.
            self.vm.pause_deadline();
            return r;
        }
        if self.vm.smp.is_some() {
            // No multiprocess worker outlives its request; one that failed fails it.
            if let Some(f) = self.end_workers() {
                if !matches!(r, Outcome::Failed(_)) {
                    self.vm.restore_user_mode(&self.entry);
                    r = Outcome::Failed(f);
                }
            }
        }
        crate::debug::end(&mut self.vm, matches!(r, Outcome::Failed(_)));
        self.vm.stop_deadline();
        self.vm.printer.flush();
        // A storage call still pending when the handler failed gives up its place.
        self.pending_storage = None;
        r
    }

    pub(crate) fn write_request(&mut self, req: &GuestRequest) -> Result<io::RequestPtrs, IoError> {
        let input = self.vm.layout.input_area;
        if !req.body.is_empty() {
            self.vm
                .machine
                .mem
                .write(input, &req.body)
                .map_err(|err| IoError::BadPointer {
                    call: "request",
                    err,
                })?;
        }
        let mut info = [0u8; 8];
        info[4..].copy_from_slice(&self.index.to_le_bytes());
        self.vm
            .machine
            .mem
            .write(io::VCPU_INFO, &info)
            .map_err(|err| IoError::BadPointer {
                call: "request",
                err,
            })?;
        let mut seed = [0u8; 16];
        fill_random(&mut seed);
        io::write_request(
            &mut self.vm.machine.mem,
            &RequestData {
                method: &req.method,
                url: &req.url,
                arg: &req.arg,
                content_type: &req.content_type,
                headers: &req.headers,
                body: (
                    if req.body.is_empty() { 0 } else { input },
                    req.body.len() as u64,
                ),
                warmup: req.warmup,
                prng: [
                    u64::from_le_bytes(seed[..8].try_into().unwrap_or_default()),
                    u64::from_le_bytes(seed[8..].try_into().unwrap_or_default()),
                ],
            },
        )
    }

    pub(crate) fn run_request(&mut self) -> Outcome {
        let out = self.run_request_inner();
        if let Outcome::Failed(f) = &out {
            self.vm.restore_user_mode(&self.entry);
            if let Some(r) = self.stashed.take() {
                // The response is made: it goes out, and the VM is reset fully.
                self.vm.printer.log(&format!(
                    "the event loop failed after its response, before waiting again: {}",
                    f.message
                ));
                self.broken = true;
                self.live_paused = false;
                return Outcome::Response(r);
            }
        }
        out
    }

    /// `sys_backend_response` in an event loop that goes on after its response.
    fn stash_response(&mut self) -> Option<Outcome> {
        match self.read_response() {
            Outcome::Response(r) => {
                self.stashed = Some(r);
                self.vm.machine.cpu.regs_mut().rax = 0;
                None
            }
            other => Some(other),
        }
    }

    pub(crate) fn run_request_inner(&mut self) -> Outcome {
        if let Some(p) = self.pending_storage.take() {
            match self.advance_storage(p) {
                Ok(Some(v)) => self.vm.machine.cpu.regs_mut().rax = v,
                Ok(None) => return Outcome::Preempted,
                Err(f) => return Outcome::Failed(f),
            }
        }
        loop {
            let ev = match self.vm.run_until_event() {
                Ok(ev) => ev,
                Err(e) => return Outcome::Failed(run_error_failure(e)),
            };
            match ev {
                Event::Preempted => return Outcome::Preempted,
                Event::ConnCall { .. } => {
                    return fail(
                        FailureKind::Other,
                        "internal error: a connection call in a request",
                    )
                }
                Event::Exited(code) => {
                    return fail(
                        FailureKind::Exit,
                        format!("the program exited (status {code}) during a request"),
                    )
                }
                Event::Returned => {
                    return fail(
                        FailureKind::NoResponse,
                        "HTTP response not set. Program crashed?",
                    )
                }
                Event::Hypercall(Call::BackendResponse { .. }) if self.stashed.is_some() => {
                    return fail(
                        FailureKind::Api,
                        "backend_response() called twice: the event loop must wait_for_requests_paused() after its response",
                    )
                }
                Event::Hypercall(Call::BackendResponse { .. })
                    if self.in_loop && self.continue_loop =>
                {
                    if let Some(out) = self.stash_response() {
                        return out;
                    }
                }
                Event::Hypercall(Call::BackendResponse { .. }) => return self.read_response(),
                Event::Hypercall(Call::WaitForRequestsPaused { req }) if self.stashed.is_some() => {
                    if let Err(e) = self.vm.pause_at_wait(req.addr(), self.pause_slots) {
                        return Outcome::Failed(run_error_failure(e));
                    }
                    self.live_paused = true;
                    if let Some(r) = self.stashed.take() {
                        return Outcome::Response(r);
                    }
                }
                Event::Hypercall(Call::StorageCallv { .. }) => match self.storage_hypercall() {
                    Ok(Some(v)) => self.vm.machine.cpu.regs_mut().rax = v,
                    Ok(None) => return Outcome::Preempted,
                    Err(f) => return Outcome::Failed(f),
                },
                Event::RemoteCall(c) => match self.remote_call(c) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Outcome::Preempted,
                    Err(f) => return Outcome::Failed(f),
                },
                Event::Hypercall(Call::BeginStreaming { .. }) if self.stashed.is_some() => {
                    return fail(
                        FailureKind::Api,
                        "begin_streaming_response() called after the event loop's response",
                    );
                }
                Event::Hypercall(call @ Call::BeginStreaming { .. }) => {
                    if self.vm.slice_left().is_some() {
                        // The body is produced while the client takes it: never on an HTTP
                        // worker. End the slice here; the call is served where the VM
                        // resumes (a blocking thread, pool.rs).
                        self.vm.defer_call(call);
                        return Outcome::Preempted;
                    }
                    return self.begin_stream(call);
                }
                Event::Hypercall(
                    call @ (Call::Multiprocess { .. }
                    | Call::MultiprocessArray { .. }
                    | Call::MultiprocessClone { .. }),
                ) => self.vm.machine.cpu.regs_mut().rax = self.multiprocess(call),
                Event::Hypercall(call @ Call::MultiprocessWait) => match self.multiprocess_wait() {
                    Ok(Some(v)) => self.vm.machine.cpu.regs_mut().rax = v,
                    Ok(None) => {
                        // Workers still run at the end of the slice: wait on where the VM
                        // resumes (never on an HTTP worker).
                        self.vm.defer_call(call);
                        return Outcome::Preempted;
                    }
                    Err(f) => return Outcome::Failed(f),
                },
                Event::Hypercall(call) => {
                    if let Err(f) = self.api_call(call) {
                        return Outcome::Failed(f);
                    }
                }
            }
        }
    }

    /// Hypercalls of the request context (the reference-header path; edgevm's header serves
    /// most of these inside the guest).
    pub(crate) fn call_on_error(
        &mut self,
        req: &GuestRequest,
        f: &RequestFailure,
    ) -> Option<GuestResponse> {
        let ptrs = self.write_request(req).ok()?;
        // The exception text goes into the request-body area.
        let mut msg = f.message.clone().into_bytes();
        msg.push(0);
        let at = self.vm.layout.input_area;
        self.vm.machine.mem.write(at, &msg).ok()?;
        let (handler, rsp) = (self.vm.handlers.on_error, self.entry.rsp.wrapping_sub(512));
        self.in_loop = false;
        self.stashed = None;
        self.vm
            .enter_handler(&self.entry, handler, rsp, &[ptrs.url, ptrs.arg, at])
            .ok()?;
        self.vm
            .start_deadline(Duration::from_secs(1), "on_error handler")
            .ok()?;
        let out = self.run_request();
        self.vm.stop_deadline();
        self.vm.printer.flush();
        match out {
            Outcome::Response(r) => Some(r),
            Outcome::Preempted | Outcome::Streaming(_) => None,
            Outcome::Failed(f2) => {
                self.vm
                    .printer
                    .log(&format!("on_error handler failed too: {}", f2.message));
                None
            }
        }
    }
}
