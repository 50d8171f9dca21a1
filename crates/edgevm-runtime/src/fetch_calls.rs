//! `sys_fetch(url, len, op, fields, options)` on guest memory: read the call's arguments,
//! hand the request to the program's [`crate::net::Fetcher`], write the answer into
//! `struct curl_op` (and into memory mapped for the program when it asked the host to
//! allocate). Shared by every context (boot, request, storage); the run loop makes sure it
//! runs on a thread that may block (see `MainVm::run_until_event`).
//!
//! Returns 0 on success; -1 (with a log line saying why) on any error, as the reference does
//! ("a non-zero value and the struct contents are undefined").

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgevm_abi::api::Call;
use edgevm_abi::guest_abi::{CurlFields, CurlOp, CurlOptions, CURL_FIELDS_COUNT};
use edgevm_abi::io::{read_struct, write_struct};
use edgevm_abi::linux::Output;
use edgevm_kvm::{MemoryView, Vcpu};

use crate::net::{
    FetchRequest, FetchResponse, FETCH_CONNECT_TIMEOUT, FETCH_READ_TIMEOUT, MAX_FETCH_BODY,
    MAX_FETCH_POST, MAX_FETCH_URL,
};
use crate::vm::Vm;

/// A refused or failed fetch: the log line's text.
type Why = String;

fn header_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn method_ok(m: &str) -> bool {
    !m.is_empty() && m.len() <= 16 && m.bytes().all(|b| b.is_ascii_uppercase())
}

impl<C: Vcpu, M: MemoryView> Vm<C, M> {
    /// Serve `sys_fetch`: 0 on success, -1 (and a log line) on failure.
    pub(crate) fn fetch_hypercall(&mut self, call: Call) -> u64 {
        let Call::Fetch {
            url,
            op,
            fields,
            options,
        } = call
        else {
            return u64::MAX;
        };
        let (u, o, f, x) = (url, op.addr(), fields.addr(), options.addr());
        let r =
            self.fetch_request(u.addr(), u.len, o, f, x)
                .and_then(|(req, op, dummy)| {
                    let fetcher =
                        self.opts.net.fetcher.clone().ok_or_else(|| {
                            "outgoing requests are not available here".to_string()
                        })?;
                    let shown = req.url.clone();
                    let method = req.method.clone();
                    let resp = fetcher
                        .fetch(req)
                        .map_err(|e| format!("{method} {shown}: {e}"))?;
                    // The fetch may have run another VM on this thread (a self-request): point
                    // this thread's timer back at this VM.
                    self.arm_timer()
                        .map_err(|e| format!("cannot re-arm the run timer: {e}"))?;
                    let n = resp.body.len() as u64;
                    self.fetch_answer(o, op, resp, dummy)?;
                    let c = &self.opts.net.counters;
                    c.fetches.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(n, Ordering::Relaxed);
                    Ok(())
                });
        match r {
            Ok(()) => 0,
            Err(why) => {
                let _ = self.arm_timer();
                self.opts
                    .net
                    .counters
                    .failures
                    .fetch_add(1, Ordering::Relaxed);
                self.printer.log(&format!("sys_fetch failed: {why}"));
                u64::MAX
            }
        }
    }

    fn fetch_request(
        &mut self,
        url: u64,
        url_len: u64,
        op_at: u64,
        fields_at: u64,
        opts_at: u64,
    ) -> Result<(FetchRequest, CurlOp, bool), Why> {
        let mem = &self.machine.mem;
        let url = read_url(mem, url, url_len)?;
        if op_at == 0 {
            return Err("struct curl_op is NULL".into());
        }
        let op: CurlOp =
            read_struct(mem, op_at).map_err(|e| format!("bad curl_op pointer: {e}"))?;
        let headers = read_fields(mem, fields_at)?;
        let o: Option<CurlOptions> = if opts_at != 0 {
            Some(read_struct(mem, opts_at).map_err(|e| format!("bad curl_options pointer: {e}"))?)
        } else {
            None
        };
        let (interface, method_at) = o.map_or((0, 0), |o| (o.interface.addr(), o.unused.addr()));
        let (follow, dummy, no_verify) = o.map_or((0, 0, 0), |o| {
            (o.follow_location, o.dummy_fetch, o.dont_verify_host)
        });
        if interface != 0 {
            return Err(
                "curl_options.interface (binding to a network interface) is not supported".into(),
            );
        }
        let body = if op.post_buffer.addr() != 0 {
            let n = u64::from(op.post_buflen);
            if n > MAX_FETCH_POST {
                return Err(format!("POST body of {n} bytes (at most {MAX_FETCH_POST})"));
            }
            Some(
                mem.read_vec(op.post_buffer.addr(), n as usize)
                    .map_err(|e| format!("bad post_buffer pointer: {e}"))?,
            )
        } else {
            None
        };
        // edgevm extension: curl_options.method (the reference's `unused`) names the method.
        let method = if method_at != 0 {
            let m = mem
                .read_cstr(method_at, 17)
                .map_err(|e| format!("bad curl_options.method pointer: {e}"))?;
            let m = String::from_utf8_lossy(&m).into_owned();
            if !method_ok(&m) {
                return Err(format!("method {m:?} (1-16 upper-case letters)"));
            }
            m
        } else if body.is_some() {
            "POST".to_string()
        } else {
            "GET".to_string()
        };
        // Host-allocated content: at most what the program may still map; a caller's
        // buffer: at most its length.
        let max_body = if op.content.addr() != 0 {
            u64::from(op.content_length)
        } else {
            MAX_FETCH_BODY
        };
        let budget = FETCH_CONNECT_TIMEOUT + FETCH_READ_TIMEOUT;
        let left = self.time_left().unwrap_or(budget).min(budget);
        if left < Duration::from_millis(1) {
            return Err("no time left in the request".into());
        }
        let req = FetchRequest {
            program: self.opts.name.clone(),
            url,
            method,
            headers,
            body,
            follow_location: follow != 0,
            verify_tls: no_verify == 0,
            max_body: if dummy != 0 { MAX_FETCH_BODY } else { max_body },
            deadline: Instant::now() + left,
            depth: self.fetch_depth,
            policy: self.opts.net.policy.clone(),
        };
        Ok((req, op, dummy != 0))
    }

    /// Write the answer into `op` (at `at`) and into guest memory.
    fn fetch_answer(
        &mut self,
        at: u64,
        mut op: CurlOp,
        resp: FetchResponse,
        dummy: bool,
    ) -> Result<(), Why> {
        op.status = u32::from(resp.status);
        let ct = resp.content_type.as_bytes();
        let n = ct.len().min(op.ctype.len() - 1);
        op.ctype = [0; 128];
        op.ctype[..n].copy_from_slice(&ct[..n]);
        op.ctlen = n as u32;
        if op.headers.addr() == 0 && op.headers_length == 0 {
            let mut text = Vec::new();
            for (k, v) in &resp.headers {
                text.extend_from_slice(k.as_bytes());
                text.extend_from_slice(b": ");
                text.extend_from_slice(v.as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            if !text.is_empty() {
                let p = self.map_for_guest(&text, "response headers")?;
                op.headers = edgevm_abi::guest_abi::GuestPtr::new(p);
                op.headers_length = text.len() as u32;
            }
        }
        if dummy {
            op.content_length = 0;
        } else if op.content.addr() != 0 {
            let cap = u64::from(op.content_length);
            if resp.body.len() as u64 > cap {
                return Err(format!(
                    "response body of {} bytes does not fit the program's buffer of {cap} bytes",
                    resp.body.len()
                ));
            }
            self.machine
                .mem
                .write(op.content.addr(), &resp.body)
                .map_err(|e| format!("bad content pointer: {e}"))?;
            op.content_length = resp.body.len() as u32;
        } else {
            let p = if resp.body.is_empty() {
                self.map_for_guest(&[0], "response body")?
            } else {
                self.map_for_guest(&resp.body, "response body")?
            };
            op.content = edgevm_abi::guest_abi::GuestPtr::new(p);
            op.content_length = resp.body.len() as u32;
        }
        write_struct(&mut self.machine.mem, at, &op)
            .map_err(|e| format!("bad curl_op pointer: {e}"))
    }

    /// Copy `data` into memory mapped for the program (one extra zero byte after it, so text
    /// is NUL-terminated).
    fn map_for_guest(&mut self, data: &[u8], what: &str) -> Result<u64, Why> {
        let len = data.len() as u64 + 1;
        let at = self
            .linux
            .map_anonymous(len, &mut self.machine.mem)
            .ok_or_else(|| {
                format!(
                    "no memory for the {what} ({} bytes): max_memory or max_request_memory reached",
                    data.len()
                )
            })?;
        self.machine
            .mem
            .write(at, data)
            .map_err(|e| format!("cannot write the {what}: {e}"))?;
        Ok(at)
    }
}

/// The URL of a fetch: 1 to MAX_FETCH_URL bytes of UTF-8 without spaces or control
/// characters, http(s):// or a path (a self-request).
fn read_url(mem: &edgevm_kvm::GuestMemory, url: u64, url_len: u64) -> Result<String, Why> {
    if url_len == 0 || url_len > MAX_FETCH_URL {
        return Err(format!(
            "URL length {url_len} (must be 1 to {MAX_FETCH_URL} bytes)"
        ));
    }
    let url = mem
        .read_vec(url, url_len as usize)
        .map_err(|e| format!("bad URL pointer: {e}"))?;
    let url = String::from_utf8(url).map_err(|_| "the URL is not UTF-8".to_string())?;
    if url.bytes().any(|b| b <= b' ' || b == 0x7F) {
        return Err(format!("the URL {url:?} has spaces or control characters"));
    }
    let lower = url.to_ascii_lowercase();
    if !(url.starts_with('/') && !url.starts_with("//")
        || lower.starts_with("http://")
        || lower.starts_with("https://"))
    {
        return Err(format!(
            "unsupported URL {url:?} (http://, https:// or a path such as \"/program/x\" for a self-request)"
        ));
    }
    Ok(url)
}

/// The request header fields of `struct curl_fields` (none when `fields_at` is NULL).
fn read_fields(
    mem: &edgevm_kvm::GuestMemory,
    fields_at: u64,
) -> Result<Vec<(String, String)>, Why> {
    let mut headers = Vec::new();
    if fields_at != 0 {
        let fl: CurlFields =
            read_struct(mem, fields_at).map_err(|e| format!("bad curl_fields pointer: {e}"))?;
        for i in 0..CURL_FIELDS_COUNT {
            let (p, l) = (fl.ptr[i].addr(), fl.len[i]);
            if p == 0 || l == 0 {
                continue;
            }
            let raw = mem
                .read_vec(p, l as usize)
                .map_err(|e| format!("bad curl_fields entry {i}: {e}"))?;
            let text = String::from_utf8(raw)
                .map_err(|_| format!("curl_fields entry {i} is not UTF-8"))?;
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| format!("curl_fields entry {i} {text:?} has no colon"))?;
            let value = value.trim_matches(|c| c == ' ' || c == '\t');
            if !header_name_ok(name) || value.bytes().any(|b| b < b' ' && b != b'\t' || b == 0x7F) {
                return Err(format!(
                    "curl_fields entry {i} {text:?} is not a valid header field"
                ));
            }
            headers.push((name.to_string(), value.to_string()));
        }
    }
    Ok(headers)
}
