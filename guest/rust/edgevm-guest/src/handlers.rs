//! The environment (where am I running?), handler registration and the lifecycle calls.

use core::ffi::{c_char, c_int, c_long, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::raw::{hc0, hc1, hc2};
use crate::http::flush_stdout;
use crate::types::{bytes_from_raw, cstr};
use crate::{func, nr, KvmRequest, StreamingContent, VirtBuffer};

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

fn env_is(name: &str, value: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == value)
}

/// True when running inside edgevm (KVM_NAME is set). `IS_SANDBOXED_MAIN()`.
pub fn is_sandboxed() -> bool {
    std::env::var_os("KVM_NAME").is_some()
}
/// True in the storage VM (KVM_TYPE=storage). `IS_STORAGE()`.
pub fn is_storage() -> bool {
    env_is("KVM_TYPE", "storage")
}
/// True in the request VM (KVM_TYPE=request). `IS_REQUEST()`.
pub fn is_request() -> bool {
    env_is("KVM_TYPE", "request")
}
/// True for debug programs (KVM_DEBUG=1). `IS_DEBUG()`.
pub fn is_debug_env() -> bool {
    env_is("KVM_DEBUG", "1")
}

// ---------------------------------------------------------------------------
// Registration and lifecycle
// ---------------------------------------------------------------------------

/// Raw C handler types.
pub type GetHandler = extern "C" fn(url: *const c_char, arg: *const c_char);
pub type PostHandler = extern "C" fn(
    url: *const c_char,
    arg: *const c_char,
    ctype: *const c_char,
    data: *const u8,
    len: usize,
);
pub type RequestHandler = extern "C" fn(req: *const KvmRequest);
pub type StreamPostHandler = extern "C" fn(
    url: *const c_char,
    arg: *const c_char,
    ctype: *const c_char,
    data: *const u8,
    len: usize,
    off: usize,
) -> c_long;
pub type ErrorHandler =
    extern "C" fn(url: *const c_char, arg: *const c_char, exception: *const c_char);
pub type LiveUpdateHandler = extern "C" fn();
pub type LiveRestoreHandler = extern "C" fn(datalen: usize);
pub type SocketPauseHandler = extern "C" fn(fd: c_int);
/// A storage function: `n` buffers at `bufs`, `res` = caller's result size.
pub type StorageFunc = extern "C" fn(n: usize, bufs: *mut VirtBuffer, res: usize);
pub type StorageTaskFunc = extern "C" fn(data: *mut c_void, len: usize);
pub type ContentStreamFunc =
    extern "C" fn(arg: *mut c_void, max: usize, written: usize, total: usize) -> StreamingContent;

/// [0x10000] Register handler `idx` (see [`func`]) at address `f`.
pub fn register_func(idx: i32, f: usize) {
    // SAFETY: only passes an index and a code address to the host.
    unsafe { hc2(nr::REGISTER_FUNC, idx as usize, f) };
}

/// Register a raw C GET handler.
pub fn set_backend_get(f: GetHandler) {
    register_func(func::BACKEND_GET, f as usize);
}
/// Register a raw C POST handler.
pub fn set_backend_post(f: PostHandler) {
    register_func(func::BACKEND_POST, f as usize);
}
/// Register a raw C request handler (takes precedence over GET/POST).
pub fn set_backend_request(f: RequestHandler) {
    register_func(func::BACKEND_REQUEST, f as usize);
}
/// Register a raw C streaming POST handler.
pub fn set_backend_stream_post(f: StreamPostHandler) {
    register_func(func::BACKEND_STREAM_POST, f as usize);
}
/// Register a raw C error handler.
pub fn set_on_error(f: ErrorHandler) {
    register_func(func::ON_ERROR, f as usize);
}
/// Register the live-update (state export) handler.
pub fn set_on_live_update(f: LiveUpdateHandler) {
    register_func(func::ON_LIVE_UPDATE, f as usize);
}
/// Register the live-restore (state import) handler.
pub fn set_on_live_restore(f: LiveRestoreHandler) {
    register_func(func::ON_LIVE_RESTORE, f as usize);
}
/// Register the socket prepare-for-pause handler.
pub fn set_socket_prepare_for_pause(f: SocketPauseHandler) {
    register_func(func::SOCKET_PREPARE_FOR_PAUSE, f as usize);
}

// Rust-level handlers, stored before the VM is frozen, called by trampolines.
static GET_FN: AtomicUsize = AtomicUsize::new(0);
static POST_FN: AtomicUsize = AtomicUsize::new(0);
static REQUEST_FN: AtomicUsize = AtomicUsize::new(0);
static ERROR_FN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn get_trampoline(url: *const c_char, arg: *const c_char) {
    let p = GET_FN.load(Ordering::Relaxed);
    if p != 0 {
        // SAFETY: GET_FN only ever holds a `fn(&str, &str)` stored by on_get.
        let f: fn(&str, &str) = unsafe { core::mem::transmute(p) };
        // SAFETY: the host passes zero-terminated strings.
        f(unsafe { cstr(url) }, unsafe { cstr(arg) });
    }
}

extern "C" fn post_trampoline(
    url: *const c_char,
    arg: *const c_char,
    ctype: *const c_char,
    data: *const u8,
    len: usize,
) {
    let p = POST_FN.load(Ordering::Relaxed);
    if p != 0 {
        // SAFETY: POST_FN only ever holds a fn stored by on_post.
        let f: fn(&str, &str, &str, &[u8]) = unsafe { core::mem::transmute(p) };
        // SAFETY: the host passes valid strings and a valid body.
        unsafe { f(cstr(url), cstr(arg), cstr(ctype), bytes_from_raw(data, len)) };
    }
}

extern "C" fn request_trampoline(req: *const KvmRequest) {
    let p = REQUEST_FN.load(Ordering::Relaxed);
    if p != 0 && !req.is_null() {
        // SAFETY: REQUEST_FN only ever holds a fn stored by on_request.
        let f: fn(&KvmRequest) = unsafe { core::mem::transmute(p) };
        // SAFETY: the host passes a valid request.
        f(unsafe { &*req });
    }
}

extern "C" fn error_trampoline(url: *const c_char, arg: *const c_char, exc: *const c_char) {
    let p = ERROR_FN.load(Ordering::Relaxed);
    if p != 0 {
        // SAFETY: ERROR_FN only ever holds a fn stored by on_error.
        let f: fn(&str, &str, &str) = unsafe { core::mem::transmute(p) };
        // SAFETY: the host passes zero-terminated strings.
        unsafe { f(cstr(url), cstr(arg), cstr(exc)) };
    }
}

/// Handle GET/HEAD requests with `f(url, arg)`.
pub fn on_get(f: fn(&str, &str)) {
    GET_FN.store(f as usize, Ordering::Relaxed);
    set_backend_get(get_trampoline);
}
/// Handle requests with a body with `f(url, arg, content_type, body)`.
pub fn on_post(f: fn(&str, &str, &str, &[u8])) {
    POST_FN.store(f as usize, Ordering::Relaxed);
    set_backend_post(post_trampoline);
}
/// Handle every request with `f(&request)` (takes precedence over GET/POST).
pub fn on_request(f: fn(&KvmRequest)) {
    REQUEST_FN.store(f as usize, Ordering::Relaxed);
    set_backend_request(request_trampoline);
}
/// Produce a custom error response with `f(url, arg, exception)`.
pub fn on_error(f: fn(&str, &str, &str)) {
    ERROR_FN.store(f as usize, Ordering::Relaxed);
    set_on_error(error_trampoline);
}

/// [0x10001] End initialization and freeze the VM; requests then call the
/// registered handlers in fresh copies of it.
pub fn wait_for_requests() {
    flush_stdout();
    // SAFETY: no arguments.
    unsafe { hc0(nr::WAIT_FOR_REQUESTS) };
}

/// [0x10002] Pause until the next request and return it (event-loop style).
pub fn wait_for_requests_paused() -> KvmRequest {
    flush_stdout();
    let mut req = KvmRequest::zeroed();
    // SAFETY: the host writes one KvmRequest into `req`.
    unsafe { hc1(nr::WAIT_FOR_REQUESTS_PAUSED, &mut req as *mut KvmRequest as usize) };
    req
}

