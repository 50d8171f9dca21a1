//! Responses, HTTP header fields and caching.

use core::ffi::c_void;

use crate::raw::{hc2, hc3, hypercall};
use crate::{fastpath, nr, BackendResponseExtra, ContentStreamFunc, ResponseHeader};
use edgevm_guest_abi::{GuestPtr, Where};

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// [0x10010] Raw response call.
///
/// # Safety
/// All pointers must be valid for their lengths; `extra` may be null.
pub unsafe fn sys_backend_response(
    status: i16,
    ctype: *const u8,
    ctype_len: usize,
    content: *const u8,
    content_len: usize,
    extra: *const BackendResponseExtra,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        hypercall(
            nr::BACKEND_RESPONSE,
            status as isize as usize,
            ctype as usize,
            ctype_len,
            content as usize,
            content_len,
            extra as usize,
        )
    };
}

/// Writes out a partial line left in Rust's line-buffered stdout before the VM is frozen
/// (so the frozen image holds nothing every request would print again) and before a
/// response (so it is not thrown away with the request VM). No VM exit when it is empty.
pub(crate) fn flush_stdout() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Send the response (ends the request).
pub fn backend_response(status: u16, content_type: &str, body: &[u8]) {
    flush_stdout();
    // SAFETY: slices are valid for their lengths.
    unsafe {
        sys_backend_response(
            status as i16,
            content_type.as_ptr(),
            content_type.len(),
            body.as_ptr(),
            body.len(),
            core::ptr::null(),
        )
    }
}

/// Send a text response (ends the request).
pub fn backend_response_str(status: u16, content_type: &str, body: &str) {
    backend_response(status, content_type, body.as_bytes());
}

/// Caching options for [`backend_response_extra`] (seconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheOptions {
    pub cached: bool,
    pub ttl: f32,
    pub grace: f32,
    pub keep: f32,
}

/// Send a response with extra "Key: value" headers (max 64) and caching.
pub fn backend_response_extra(
    status: u16,
    content_type: &str,
    body: &[u8],
    headers: &[&str],
    cache: CacheOptions,
) {
    flush_stdout();
    let hdrs: Vec<ResponseHeader> = headers
        .iter()
        .take(64)
        .map(|h| ResponseHeader { field: GuestPtr::from_ptr(h.as_ptr().cast()), field_len: h.len() as u64 })
        .collect();
    let extra = BackendResponseExtra {
        headers: GuestPtr::from_ptr(hdrs.as_ptr()),
        num_headers: hdrs.len() as u16,
        cached: u8::from(cache.cached),
        _pad: 0,
        ttl: cache.ttl,
        grace: cache.grace,
        keep: cache.keep,
        reserved: [0; 4],
    };
    // SAFETY: all pointers are valid for the duration of the call.
    unsafe {
        sys_backend_response(
            status as i16,
            content_type.as_ptr(),
            content_type.len(),
            body.as_ptr(),
            body.len(),
            &extra,
        )
    }
}

/// [0x10012] Start a streamed response; never returns.
///
/// # Safety
/// `arg` must stay valid while the host calls `cb`.
pub unsafe fn begin_streaming_response(
    status: u16,
    content_type: &str,
    content_length: usize,
    cb: ContentStreamFunc,
    arg: *const c_void,
) -> ! {
    // SAFETY: forwarded to the caller.
    unsafe {
        hypercall(
            nr::BEGIN_STREAMING,
            status as i16 as isize as usize,
            content_type.as_ptr() as usize,
            content_type.len(),
            content_length,
            cb as usize,
            arg as usize,
        );
    }
    // The host never resumes here.
    std::process::abort()
}

// ---------------------------------------------------------------------------
// HTTP headers
// ---------------------------------------------------------------------------

/// Which header set to operate on.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    /// The request (client request or backend request).
    Req = 0,
    /// The response (client response or backend response).
    Resp = 1,
}
impl From<Http> for Where {
    fn from(h: Http) -> Where {
        match h {
            Http::Req => Where::Req,
            Http::Resp => Where::Resp,
        }
    }
}

pub const REQ: Http = Http::Req;
pub const RESP: Http = Http::Resp;
pub const BEREQ: Http = Http::Req;
pub const BERESP: Http = Http::Resp;

/// [0x10020] Append the header field "Key: value": its field index (> 0), or -1 when the
/// header set is full (the field is lost). An invalid field fails the request.
pub fn http_append(where_: Http, field: &str) -> i64 {
    if let Some(mut a) = fastpath::area() {
        if let Some(i) = fastpath::append(&mut a, where_.into(), field.as_bytes()) {
            return i64::from(i);
        }
    }
    // SAFETY: the slice is valid for its length.
    let r = unsafe { hc3(nr::HTTP_APPEND, where_ as i32 as usize, field.as_ptr() as usize, field.len()) };
    r as i64
}

/// [0x10021] Set or replace the header field "Key: value" (its field index), or, without a
/// colon, remove the key's fields (the index of the first removed, 0 if none).
pub fn http_set(where_: Http, field: &str) -> i64 {
    if let Some(mut a) = fastpath::area() {
        if let Some(i) = fastpath::set(&mut a, where_.into(), field.as_bytes()) {
            return i64::from(i);
        }
    }
    // SAFETY: the slice is valid for its length.
    let r = unsafe { hc3(nr::HTTP_SET, where_ as i32 as usize, field.as_ptr() as usize, field.len()) };
    r as i64
}

/// Remove the header field with this key.
pub fn http_unset(where_: Http, key: &str) -> i64 {
    http_set(where_, key)
}

/// [0x10022] Find a header field; returns the whole "Key: value" field.
pub fn http_find(where_: Http, key: &str) -> Option<String> {
    if let Some(a) = fastpath::area().filter(|_| fastpath::valid_key(key.as_bytes())) {
        return fastpath::find(&a, where_.into(), key.as_bytes())
            .map(|b| String::from_utf8_lossy(&b).into_owned());
    }
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: key and buf are valid for their lengths.
        let n = unsafe {
            hypercall(
                nr::HTTP_FIND,
                where_ as i32 as usize,
                key.as_ptr() as usize,
                key.len(),
                buf.as_mut_ptr() as usize,
                buf.len(),
                0,
            )
        } as u32 as usize;
        if n > 0 && n <= buf.len() {
            buf.truncate(n);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        // 0: missing or too small. Ask for the length to tell them apart.
        // SAFETY: a null output buffer only queries the length.
        let need = unsafe {
            hypercall(nr::HTTP_FIND, where_ as i32 as usize, key.as_ptr() as usize, key.len(), 0, 0, 0)
        } as u32 as usize;
        if need == 0 || need <= buf.len() || buf.len() >= 1 << 20 {
            return None;
        }
        buf.resize(need + 1, 0);
    }
}

/// Find a header field and return just its value.
pub fn http_find_value(where_: Http, key: &str) -> Option<String> {
    let field = http_find(where_, key)?;
    let value = field.split_once(':').map(|(_, v)| v.trim()).unwrap_or("");
    Some(value.to_string())
}

/// [0x10023] The request method, e.g. "GET".
pub fn http_method() -> String {
    if fastpath::area().is_some() {
        let r = GuestPtr::<edgevm_guest_abi::KvmRequest>::new(edgevm_guest_abi::io::REQUEST_STRUCT);
        // SAFETY: the host wrote struct kvm_request into the I/O area, its method string
        // (method_len bytes) in the area's request blob.
        unsafe {
            let r = &*r.ptr();
            let m = std::slice::from_raw_parts(r.method.ptr().cast::<u8>(), r.method_len as usize);
            return String::from_utf8_lossy(m).into_owned();
        }
    }
    let mut buf = [0u8; 32];
    // SAFETY: buf is valid for its length.
    let n = unsafe { hc2(nr::HTTP_METHOD, buf.as_mut_ptr() as usize, buf.len()) };
    let n = n.min(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// [0x10005] Make the response cacheable (durations in seconds).
pub fn set_cacheable(cached: bool, ttl: f32, grace: f32, keep: f32) -> i64 {
    // SAFETY: plain integers.
    unsafe {
        hypercall(
            nr::SET_CACHEABLE,
            cached as usize,
            (ttl * 1000.0) as i64 as usize,
            (grace * 1000.0) as i64 as usize,
            (keep * 1000.0) as i64 as usize,
            0,
            0,
        ) as i64
    }
}

