//! The request context's handler set: the calls a request handler may make (the
//! reference-header path; edgevm's header serves most of them inside the guest), and reading
//! its response.

use edgevm_abi::api::Call;
use edgevm_abi::guest_abi::{BackendResponseExtra, ResponseHeader};
use edgevm_abi::io::{self, read_struct, read_struct_prefix, IoError, Where};
use edgevm_abi::linux::Output;
use edgevm_kvm::{GuestMemory, MemoryView, Vcpu};
use std::mem::offset_of;

use crate::invoker::{Invoker, Outcome};
use crate::request::GuestResponse;
use crate::request_vm::{fail, FailureKind, RequestFailure, MAX_RESPONSE_BODY};

fn api_err(e: IoError) -> RequestFailure {
    RequestFailure {
        message: e.to_string(),
        kind: FailureKind::Api,
    }
}

/// Read a header field or key (at most 65535 bytes) passed to `call`.
fn read(mem: &GuestMemory, p: u64, l: u64, call: &'static str) -> Result<Vec<u8>, RequestFailure> {
    if l > 65535 {
        return Err(RequestFailure {
            message: format!("length {l} passed to {call} is too large"),
            kind: FailureKind::Api,
        });
    }
    mem.read_vec(p, l as usize)
        .map_err(|err| api_err(IoError::BadPointer { call, err }))
}

/// Answer `value` into the guest's buffer `out` of `cap` bytes, as the reference does: its
/// length when `out` is NULL; the length after copying it (no NUL added) when it fits; else 0.
fn copy_out(
    mem: &mut GuestMemory,
    value: &[u8],
    out: u64,
    cap: u64,
    call: &'static str,
) -> Result<u64, RequestFailure> {
    if out == 0 {
        return Ok(value.len() as u64);
    }
    if value.len() as u64 > cap {
        return Ok(0);
    }
    mem.write(out, value)
        .map_err(|err| api_err(IoError::BadPointer { call, err }))?;
    Ok(value.len() as u64)
}

/// The header set `where` names, or the request fails (as the reference's "Selected HTTP not
/// available").
fn header_set(w: Option<Where>, call: &str) -> Result<Where, RequestFailure> {
    w.ok_or_else(|| RequestFailure {
        message: format!(
            "{call}: no such header set (where: REQ/BEREQ = 0 or 4, RESP/BERESP = 1 or 5)"
        ),
        kind: FailureKind::Api,
    })
}

impl<M: MemoryView> Invoker<M> {
    /// Hypercalls of the request context (the reference-header path; edgevm's header serves
    /// most of these inside the guest).
    pub(crate) fn api_call(&mut self, call: Call) -> Result<(), RequestFailure> {
        let mem = &mut self.vm.machine.mem;
        let ret: u64 = match call {
            Call::HttpAppend { where_, field } => {
                let w = header_set(where_, "http_append")?;
                let f = read(mem, field.addr(), field.len, "http_append")?;
                match io::append(mem, w, &f, "http_append") {
                    Ok(i) => u64::from(i),
                    Err(e) => self.lost_header(e)?,
                }
            }
            Call::HttpSet { where_, field } => {
                let w = header_set(where_, "http_set")?;
                let f = read(mem, field.addr(), field.len, "http_set")?;
                match io::set(mem, w, &f) {
                    Ok(i) => u64::from(i),
                    Err(e) => self.lost_header(e)?,
                }
            }
            Call::HttpFind { where_, key, out } => {
                let w = header_set(where_, "http_find")?;
                let key = read(mem, key.addr(), key.len, "http_find")?;
                io::validate_key(&key).map_err(|why| {
                    api_err(IoError::BadHeader {
                        call: "http_find",
                        field: io::shown_field(&key),
                        why,
                    })
                })?;
                match io::find(mem, w, &key) {
                    None => 0,
                    Some(v) => copy_out(mem, &v, out.addr(), out.len, "http_find")?,
                }
            }
            Call::HttpMethod { out } => {
                let m = self.method_bytes();
                let mem = &mut self.vm.machine.mem;
                copy_out(mem, &m, out.addr(), out.len, "http_method")?
            }
            Call::SetCacheable {
                cached,
                ttl_ms,
                grace_ms,
                ..
            } => {
                self.cache_control = Some(cache_control(
                    cached,
                    ttl_ms as f64 / 1000.0,
                    grace_ms as f64 / 1000.0,
                ));
                0
            }
            Call::BeginStreaming { .. } => {
                return Err(api_failure(
                    "streaming responses (begin_streaming_response) are not supported yet",
                ))
            }
            Call::WaitForRequests => {
                return Err(api_failure("wait_for_requests() called during a request"))
            }
            Call::WaitForRequestsPaused { .. } => {
                return Err(api_failure(
                    "wait_for_requests_paused() called before the request's response",
                ))
            }
            Call::RegexCopyto { rgx, from, to } => self.regex_copyto(rgx, from, to)?,
            call @ Call::Fetch { .. } => self.vm.fetch_hypercall(call),
            Call::StorageAllow { .. } => u64::MAX,
            Call::StorageTask { .. } => match self.storage.clone() {
                Some(st) => {
                    crate::storage::task_hypercall(&mut self.vm, |f, d, a, b| st.task(f, d, a, b))
                }
                None => {
                    self.vm.printer.log(
                        "storage_task() needs \"storage\": true in the program's configuration",
                    );
                    u64::MAX
                }
            },
            Call::StopStorageTask { id } => match &self.storage {
                Some(st) => u64::from(st.stop_task(id)),
                None => 0,
            },
            Call::MakeEphemeral { .. } => {
                self.vm
                    .printer
                    .log("sys_make_ephemeral() is only allowed before wait_for_requests()");
                u64::MAX
            }
            other => {
                self.vm.unsupported_call(other.num());
                return Ok(());
            }
        };
        self.vm.machine.cpu.regs_mut().rax = ret;
        Ok(())
    }

    /// regex_copyto: every live field of `from` that matches goes to the end of `to`; the
    /// number copied (-1 after a regex error).
    fn regex_copyto(
        &mut self,
        rgx: i32,
        from: Option<Where>,
        to: Option<Where>,
    ) -> Result<u64, RequestFailure> {
        let vm = &mut self.vm;
        let (from, to) = (
            header_set(from, "regex_copyto")?,
            header_set(to, "regex_copyto")?,
        );
        // Every live field of `from` that matches goes to the end of `to`.
        let mut copied = 0u64;
        for f in io::fields(&vm.machine.mem, from) {
            match vm.regex.is_match(rgx, &f.bytes) {
                Ok(true) => match io::append(&mut vm.machine.mem, to, &f.bytes, "regex_copyto") {
                    Ok(_) => copied += 1,
                    // As the reference: a field that does not fit is not counted.
                    Err(IoError::Full(_)) => {}
                    Err(e) => return Err(api_err(e)),
                },
                Ok(false) => {}
                Err(e) => {
                    vm.printer.log(&e.to_string());
                    copied = u64::MAX;
                    break;
                }
            }
        }
        Ok(copied)
    }

    /// A header table that is full: the field is lost, the call returns -1 (the reference's
    /// HDR_INVALID) and the log says so; any other error fails the request.
    fn lost_header(&mut self, e: IoError) -> Result<u64, RequestFailure> {
        match e {
            IoError::Full(why) => {
                self.lost_headers += 1;
                if self.lost_headers == 1 {
                    self.vm.printer.log(&format!(
                        "header field lost: {why}; the call returns -1 (logged once per request)"
                    ));
                }
                Ok(u64::MAX)
            }
            other => Err(api_err(other)),
        }
    }

    pub(crate) fn method_bytes(&self) -> Vec<u8> {
        let mem = &self.vm.machine.mem;
        let p = mem.read_u64(io::REQUEST_STRUCT).unwrap_or(0);
        mem.read_cstr(p, 64).unwrap_or_default()
    }

    pub(crate) fn read_response(&mut self) -> Outcome {
        let r = *self.vm.machine.cpu.regs();
        let mem = &self.vm.machine.mem;
        let status = r.rdi as u16 as i16;
        if !(200..=599).contains(&status) {
            return fail(
                FailureKind::Api,
                format!(
                    "invalid HTTP status {status} passed to backend_response (must be 200-599)"
                ),
            );
        }
        if r.rdx >= 4096 {
            return fail(
                FailureKind::Api,
                "content type passed to backend_response is 4096 bytes or longer",
            );
        }
        if r.r8 > MAX_RESPONSE_BODY {
            return fail(
                FailureKind::Api,
                format!(
                    "response body of {} bytes is larger than the {} MiB limit",
                    r.r8,
                    MAX_RESPONSE_BODY >> 20
                ),
            );
        }
        // Guest memory refuses the supervisor area (GDT, page tables, ...) as it does for every
        // call: only program memory can be sent.
        let ctype = match mem.read_vec(r.rsi, r.rdx as usize) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    FailureKind::Api,
                    format!("bad content type pointer passed to backend_response: {e}"),
                )
            }
        };
        let body = match mem.read_vec(r.rcx, r.r8 as usize) {
            Ok(b) => b,
            Err(e) => {
                return fail(
                    FailureKind::Api,
                    format!("bad body pointer passed to backend_response: {e}"),
                )
            }
        };
        let mut headers = match io::response_headers(mem) {
            Ok(h) => h,
            Err(e) => return fail(FailureKind::Api, e.to_string()),
        };
        if r.r9 != 0 {
            match self.read_extra(r.r9) {
                Ok(mut extra) => headers.append(&mut extra),
                Err(f) => return Outcome::Failed(f),
            }
        }
        if let Some(cc) = self.cache_control.take() {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("cache-control"));
            headers.push(("Cache-Control".into(), cc));
        }
        Outcome::Response(GuestResponse {
            status: status as u16,
            content_type: String::from_utf8_lossy(&ctype).into_owned(),
            headers,
            body,
            stream: None,
            exits: None,
        })
    }

    pub(crate) fn read_extra(&mut self, at: u64) -> Result<Vec<(String, String)>, RequestFailure> {
        let mem = &self.vm.machine.mem;
        let bad = |what: String| RequestFailure {
            message: format!("bad BackendResponseExtra passed to backend_response: {what}"),
            kind: FailureKind::Api,
        };
        // Only the fields used are read (up to `keep`), not the reserved words.
        let x: BackendResponseExtra =
            read_struct_prefix(mem, at, offset_of!(BackendResponseExtra, reserved))
                .map_err(|e| bad(e.to_string()))?;
        let (n, cached) = (x.num_headers, x.cached != 0);
        let (ttl, grace) = (f64::from(x.ttl), f64::from(x.grace));
        if n > 64 {
            return Err(bad(format!("{n} headers (at most 64)")));
        }
        let mut out = Vec::new();
        for i in 0..n as u64 {
            let e: ResponseHeader =
                read_struct(mem, x.headers.index(i)).map_err(|e| bad(e.to_string()))?;
            let (p, l) = (e.field.addr(), e.field_len);
            if l > 65535 {
                return Err(bad(format!("header {i} is {l} bytes long")));
            }
            let field = mem
                .read_vec(p, l as usize)
                .map_err(|e| bad(e.to_string()))?;
            let colon = io::validate_field(&field)
                .map_err(|why| bad(format!("header {:?}: {why}", io::shown_field(&field))))?;
            out.push((
                String::from_utf8_lossy(&field[..colon]).into_owned(),
                String::from_utf8_lossy(&field[colon + 2..]).into_owned(),
            ));
        }
        if cached || ttl > 0.0 {
            self.cache_control = Some(cache_control(cached, ttl, grace));
        }
        Ok(out)
    }
}

fn cache_control(cached: bool, ttl: f64, grace: f64) -> String {
    if cached && ttl > 0.0 {
        let mut s = format!("public, max-age={}", ttl.round() as u64);
        if grace > 0.0 {
            s.push_str(&format!(
                ", stale-while-revalidate={}",
                grace.round() as u64
            ));
        }
        s
    } else {
        "private, no-store".into()
    }
}

/// A call the request context refuses: the request fails with this message.
fn api_failure(message: &str) -> RequestFailure {
    RequestFailure {
        message: message.into(),
        kind: FailureKind::Api,
    }
}
