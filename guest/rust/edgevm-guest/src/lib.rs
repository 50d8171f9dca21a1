//! Guest-side API for edgevm programs written in Rust.
//!
//! This is the Rust twin of `guest/kvm_api.h`: the same hypercalls (same
//! numbers, same register convention) and the same structure layouts, with
//! safe wrappers on top. Build guests statically:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!     cargo build --release --target x86_64-unknown-linux-gnu
//! ```
//!
//! A minimal program:
//!
//! ```no_run
//! use edgevm_guest as kvm;
//!
//! fn on_get(_url: &str, _arg: &str) {
//!     kvm::backend_response_str(200, "text/plain", "Hello from Rust!");
//! }
//!
//! fn main() {
//!     kvm::on_get(on_get);
//!     kvm::wait_for_requests();
//! }
//! ```
//!
//! # ABI
//!
//! A hypercall is `mov $NUM, %eax; out %eax, $0` with arguments in rdi, rsi,
//! rdx, rcx, r8, r9 and the result in rax (rax:rdx for 16-byte results). The
//! host may clobber every caller-saved register, exactly as for a C call.
//! Handlers registered with the host are called as `extern "C"` functions on
//! a fresh stack in a fresh copy of the VM frozen by [`wait_for_requests`].

#![cfg(target_arch = "x86_64")]
#![deny(unsafe_op_in_unsafe_fn)]

use core::arch::asm;
use core::ffi::{c_char, c_int, c_long, c_void, CStr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Hypercall numbers (identical to `kvm_api.h` and the reference API).
pub mod nr {
    pub const REGISTER_FUNC: u32 = 0x10000;
    pub const WAIT_FOR_REQUESTS: u32 = 0x10001;
    pub const WAIT_FOR_REQUESTS_PAUSED: u32 = 0x10002;
    pub const SET_CACHEABLE: u32 = 0x10005;
    pub const BACKEND_RESPONSE: u32 = 0x10010;
    pub const STORAGE_RETURN: u32 = 0x10011;
    pub const BEGIN_STREAMING_RESPONSE: u32 = 0x10012;
    pub const STORAGE_NORETURN: u32 = 0x10013;
    pub const HTTP_APPEND: u32 = 0x10020;
    pub const HTTP_SET: u32 = 0x10021;
    pub const HTTP_FIND: u32 = 0x10022;
    pub const HTTP_METHOD: u32 = 0x10023;
    pub const REGEX_COMPILE: u32 = 0x10030;
    pub const REGEX_FREE: u32 = 0x10031;
    pub const REGEX_MATCH: u32 = 0x10032;
    pub const REGEX_SUBST: u32 = 0x10033;
    pub const REGEX_COPYTO: u32 = 0x10035;
    pub const SHARED_MEMORY_AREA: u32 = 0x10700;
    pub const MAKE_EPHEMERAL: u32 = 0x10703;
    pub const IS_STORAGE: u32 = 0x10706;
    pub const STORAGE_ALLOW: u32 = 0x10707;
    pub const STORAGE_CALLV: u32 = 0x10708;
    pub const STORAGE_TASK: u32 = 0x10709;
    pub const STOP_STORAGE_TASK: u32 = 0x1070A;
    pub const MULTIPROCESS: u32 = 0x10710;
    pub const MULTIPROCESS_ARRAY: u32 = 0x10711;
    pub const MULTIPROCESS_CLONE: u32 = 0x10712;
    pub const MULTIPROCESS_WAIT: u32 = 0x10713;
    pub const GET_MEMINFO: u32 = 0x10A00;
    pub const FETCH: u32 = 0x20000;
    pub const REQUEST: u32 = 0x20001;
    pub const LOG: u32 = 0x7F000;
    pub const BREAKPOINT: u32 = 0x7F7F7;
    pub const IS_DEBUG: u32 = 0x7FDEB;
}

/// Handler indices for [`register_func`].
pub mod func {
    pub const BACKEND_GET: i32 = 1;
    pub const BACKEND_POST: i32 = 2;
    pub const BACKEND_REQUEST: i32 = 3;
    pub const BACKEND_STREAM_POST: i32 = 4;
    pub const ON_ERROR: i32 = 5;
    pub const ON_LIVE_UPDATE: i32 = 6;
    pub const ON_LIVE_RESTORE: i32 = 7;
    pub const SOCKET_PREPARE_FOR_PAUSE: i32 = 12;
}


// ---------------------------------------------------------------------------
// In-guest header calls (edgevm fast path): same I/O area and rules as
// kvm_api.h. Under edgevm (EDGEVM_IO=1) the request's headers are in guest
// memory and response headers are built there, so a plain request costs one
// VM exit; anything the fast path does not accept goes to the hypercall.
// ---------------------------------------------------------------------------
mod io {
    pub const BASE: usize = 0x20000;
    const REQ_TABLE: usize = BASE + 0x1000;
    const REQ_MAX: u32 = 512;
    const RESP_TABLE: usize = BASE + 0x3000;
    const RESP_MAX: u32 = 128;
    pub const REQUEST: usize = BASE + 0x3800;
    const REQ_BLOB: usize = BASE + 0x4000;
    const REQ_BLOB_SIZE: u32 = 0x40000;
    const RESP_BLOB: usize = REQ_BLOB + REQ_BLOB_SIZE as usize;
    const RESP_BLOB_SIZE: u32 = (0x100000 - RESP_BLOB) as u32;
    const MAGIC: u32 = 0x4F49_5645;

    #[repr(C)]
    pub struct Header {
        pub magic: u32,
        pub version: u32,
        pub req_count: u32,
        pub resp_count: u32,
        pub req_used: u32,
        pub resp_used: u32,
        pub flags: u32,
        pub reserved: u32,
    }

    #[repr(C)]
    pub struct Entry {
        pub field: *const u8,
        pub colon: u32,
        pub len: u32,
    }

    /// The I/O area, when running under edgevm with a request in it.
    pub fn area() -> Option<*mut Header> {
        if std::env::var_os("EDGEVM_IO").as_deref() != Some(std::ffi::OsStr::new("1")) {
            return None;
        }
        let h = BASE as *mut Header;
        // SAFETY: EDGEVM_IO=1 means the host mapped the I/O area at BASE (user RW).
        let ok = unsafe { (*h).magic == MAGIC && (*h).version == 1 };
        ok.then_some(h)
    }

    pub fn validate(f: &[u8]) -> Option<usize> {
        if f.len() < 4 || f.len() > 65535 {
            return None;
        }
        let colon = f.iter().position(|&c| c == b':')?;
        if colon == 0 || f[..colon].iter().any(|&c| matches!(c, b' ' | 0 | 8 | 0x1b | 0x0c | b'\t' | b'\r' | b'\n') || c >= 0x7f) {
            return None;
        }
        if f.get(colon + 1) != Some(&b' ') || matches!(f.last(), Some(b' ' | b'\t')) {
            return None;
        }
        if f[colon + 1..].iter().any(|&c| matches!(c, 0 | b'\r' | b'\n')) {
            return None;
        }
        Some(colon)
    }

    /// (table, count, max, used, blob, capacity)
    fn parts(h: *mut Header, resp: bool) -> (*mut Entry, *mut u32, u32, *mut u32, *mut u8, u32) {
        // SAFETY: h points at the live I/O area header; only field addresses are taken.
        unsafe {
            if resp {
                (RESP_TABLE as *mut Entry, &raw mut (*h).resp_count, RESP_MAX, &raw mut (*h).resp_used, RESP_BLOB as *mut u8, RESP_BLOB_SIZE)
            } else {
                (REQ_TABLE as *mut Entry, &raw mut (*h).req_count, REQ_MAX, &raw mut (*h).req_used, REQ_BLOB as *mut u8, REQ_BLOB_SIZE)
            }
        }
    }

    fn key_eq(e: &Entry, key: &[u8]) -> bool {
        if e.len == 0 || e.colon as usize != key.len() {
            return false;
        }
        // SAFETY: entries written by the host or by append() point at `len` valid bytes.
        let k = unsafe { std::slice::from_raw_parts(e.field, key.len()) };
        k.eq_ignore_ascii_case(key)
    }

    pub fn append(h: *mut Header, resp: bool, f: &[u8]) -> bool {
        let Some(colon) = validate(f) else { return false };
        let (table, count, max, used, blob, cap) = parts(h, resp);
        // SAFETY: all pointers are inside the I/O area; bounds are checked against the
        // table size and blob capacity before writing.
        unsafe {
            if *count >= max || *used as usize + f.len() + 1 > cap as usize {
                return false;
            }
            let dst = blob.add(*used as usize);
            std::ptr::copy_nonoverlapping(f.as_ptr(), dst, f.len());
            *dst.add(f.len()) = 0;
            table.add(*count as usize).write(Entry { field: dst, colon: colon as u32, len: f.len() as u32 });
            *count += 1;
            *used += f.len() as u32 + 1;
        }
        true
    }

    pub fn unset(h: *mut Header, resp: bool, key: &[u8]) {
        let (table, count, max, ..) = parts(h, resp);
        // SAFETY: indices stay below the table size.
        unsafe {
            for i in 0..(*count).min(max) as usize {
                let e = &mut *table.add(i);
                if key_eq(e, key) {
                    e.len = 0;
                }
            }
        }
    }

    pub fn set(h: *mut Header, resp: bool, f: &[u8]) -> bool {
        match f.iter().position(|&c| c == b':') {
            None => {
                unset(h, resp, f);
                true
            }
            Some(colon) => {
                let (_, count, max, ..) = parts(h, resp);
                // SAFETY: count points into the header.
                if validate(f).is_none() || unsafe { *count } >= max {
                    return false;
                }
                unset(h, resp, &f[..colon]);
                append(h, resp, f)
            }
        }
    }

    pub fn find(h: *mut Header, resp: bool, key: &[u8]) -> Option<Vec<u8>> {
        let (table, count, max, ..) = parts(h, resp);
        // SAFETY: indices stay below the table size; fields point at `len` valid bytes.
        unsafe {
            for i in 0..(*count).min(max) as usize {
                let e = &*table.add(i);
                if key_eq(e, key) {
                    return Some(std::slice::from_raw_parts(e.field, e.len as usize).to_vec());
                }
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------
// Raw hypercalls
// ---------------------------------------------------------------------------

/// Raw hypercall with up to six arguments; returns (rax, rdx).
///
/// # Safety
/// The arguments are passed to the host unchecked: pointers must be valid for
/// what the specific hypercall does with them.
#[inline(always)]
pub unsafe fn hypercall2r(
    num: u32,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
) -> (usize, usize) {
    let rax: usize;
    let rdx: usize;
    // SAFETY: the caller guarantees the arguments are valid for this call.
    // The host follows the SysV call convention: it may clobber every
    // caller-saved register and read/write guest memory (no `nomem`). The
    // stack is left alone, but we do not claim `nostack` so the compiler
    // keeps no live data in the red zone across the exit.
    unsafe {
        asm!(
            "out 0, eax",
            inlateout("rax") num as usize => rax,
            inlateout("rdi") a0 => _,
            inlateout("rsi") a1 => _,
            inlateout("rdx") a2 => rdx,
            inlateout("rcx") a3 => _,
            inlateout("r8") a4 => _,
            inlateout("r9") a5 => _,
            lateout("r10") _,
            lateout("r11") _,
        );
    }
    (rax, rdx)
}

/// Raw hypercall with up to six arguments; returns rax.
///
/// # Safety
/// See [`hypercall2r`].
#[inline(always)]
pub unsafe fn hypercall(
    num: u32,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall2r(num, a0, a1, a2, a3, a4, a5).0 }
}

#[inline(always)]
unsafe fn hc0(num: u32) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall(num, 0, 0, 0, 0, 0, 0) }
}
#[inline(always)]
unsafe fn hc1(num: u32, a0: usize) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall(num, a0, 0, 0, 0, 0, 0) }
}
#[inline(always)]
unsafe fn hc2(num: u32, a0: usize, a1: usize) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall(num, a0, a1, 0, 0, 0, 0) }
}
#[inline(always)]
unsafe fn hc3(num: u32, a0: usize, a1: usize, a2: usize) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { hypercall(num, a0, a1, a2, 0, 0, 0) }
}

// ---------------------------------------------------------------------------
// C-compatible structures (layouts identical to kvm_api.h)
// ---------------------------------------------------------------------------

/// One request header: `field` is "Key: value" (`field_len` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KvmRequestHeader {
    pub field: *const c_char,
    pub field_colon: u32,
    pub field_len: u32,
}

/// `struct kvm_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KvmRequest {
    pub method: *const c_char,
    pub url: *const c_char,
    pub arg: *const c_char,
    pub content_type: *const c_char,
    pub method_len: u16,
    pub url_len: u16,
    pub arg_len: u16,
    pub content_type_len: u16,
    pub content: *const u8,
    pub content_len: usize,
    pub headers: *const KvmRequestHeader,
    pub num_headers: u16,
    pub info_flags: u16,
    pub reserved0: u32,
    pub prng: [u64; 2],
}

/// `kvm_request.info_flags`: this is a warmup request.
pub const KVM_REQUEST_INFO_WARMUP: u16 = 0x1;

impl KvmRequest {
    /// An all-zero request (for [`wait_for_requests_paused`]).
    pub const fn zeroed() -> Self {
        KvmRequest {
            method: core::ptr::null(),
            url: core::ptr::null(),
            arg: core::ptr::null(),
            content_type: core::ptr::null(),
            method_len: 0,
            url_len: 0,
            arg_len: 0,
            content_type_len: 0,
            content: core::ptr::null(),
            content_len: 0,
            headers: core::ptr::null(),
            num_headers: 0,
            info_flags: 0,
            reserved0: 0,
            prng: [0; 2],
        }
    }
    pub fn method(&self) -> &str {
        // SAFETY: the host provides valid (ptr, len) pairs or null.
        unsafe { str_from_raw(self.method, self.method_len as usize) }
    }
    pub fn url(&self) -> &str {
        // SAFETY: as above.
        unsafe { str_from_raw(self.url, self.url_len as usize) }
    }
    pub fn arg(&self) -> &str {
        // SAFETY: as above.
        unsafe { str_from_raw(self.arg, self.arg_len as usize) }
    }
    pub fn content_type(&self) -> &str {
        // SAFETY: as above.
        unsafe { str_from_raw(self.content_type, self.content_type_len as usize) }
    }
    pub fn content(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { bytes_from_raw(self.content, self.content_len) }
    }
    pub fn is_warmup(&self) -> bool {
        self.info_flags & KVM_REQUEST_INFO_WARMUP != 0
    }
    /// All request headers as "Key: value" strings.
    pub fn headers(&self) -> impl Iterator<Item = &str> + '_ {
        let hdrs: &[KvmRequestHeader] = if self.headers.is_null() {
            &[]
        } else {
            // SAFETY: the host provides `num_headers` valid entries.
            unsafe { core::slice::from_raw_parts(self.headers, self.num_headers as usize) }
        };
        // SAFETY: each entry is a valid (ptr, len) pair.
        hdrs.iter()
            .map(|h| unsafe { str_from_raw(h.field, h.field_len as usize) })
    }
    /// The value of the first header named `key` (case-insensitive).
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers().find_map(|f| {
            let (k, v) = f.split_once(':')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
        })
    }
}

/// `struct ResponseHeader`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResponseHeader {
    pub field: *const c_char,
    pub field_len: usize,
}

/// `struct BackendResponseExtra`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BackendResponseExtra {
    pub headers: *const ResponseHeader,
    pub num_headers: u16,
    pub cached: bool,
    pub ttl: f32,
    pub grace: f32,
    pub keep: f32,
    pub reserved: [u64; 4],
}

/// `struct virtbuffer`: a buffer passed to or from storage.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VirtBuffer {
    pub data: *const c_void,
    pub len: usize,
}

impl VirtBuffer {
    pub fn new(data: &[u8]) -> Self {
        VirtBuffer { data: data.as_ptr().cast(), len: data.len() }
    }
    /// The bytes of this buffer.
    ///
    /// # Safety
    /// `data` must point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        // SAFETY: forwarded to the caller.
        unsafe { bytes_from_raw(self.data.cast(), self.len) }
    }
}

/// `struct streaming_content`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StreamingContent {
    pub data: *const c_void,
    pub len: usize,
}

/// `struct meminfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemInfo {
    pub max_memory: u64,
    pub max_reqmem: u64,
    pub reqmem_upper: u64,
    pub reqmem_current: u64,
}

/// `struct curl_op`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CurlOp {
    pub status: u32,
    pub post_buflen: u32,
    pub post_buffer: *const c_void,
    pub headers: *mut c_char,
    pub headers_length: u32,
    pub unused1: u32,
    pub content: *mut c_void,
    pub content_length: u32,
    pub ctlen: u32,
    pub ctype: [c_char; 128],
}

pub const CURL_FIELDS_COUNT: usize = 12;

/// `struct curl_fields`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CurlFields {
    pub ptr: [*const c_char; CURL_FIELDS_COUNT],
    pub len: [u16; CURL_FIELDS_COUNT],
}

/// `struct curl_options`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CurlOptions {
    pub interface: *const c_char,
    pub unused: *const c_char,
    pub follow_location: i8,
    pub dummy_fetch: i8,
    pub tcp_fast_open: i8,
    pub dont_verify_host: i8,
    pub unused_opt5: u32,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<KvmRequestHeader>() == 16);
    assert!(offset_of!(KvmRequest, method_len) == 32);
    assert!(offset_of!(KvmRequest, headers) == 56);
    assert!(offset_of!(KvmRequest, info_flags) == 66);
    assert!(size_of::<KvmRequest>() == 88);
    assert!(size_of::<ResponseHeader>() == 16);
    assert!(offset_of!(BackendResponseExtra, cached) == 10);
    assert!(offset_of!(BackendResponseExtra, ttl) == 12);
    assert!(size_of::<BackendResponseExtra>() == 56);
    assert!(size_of::<VirtBuffer>() == 16);
    assert!(size_of::<MemInfo>() == 32);
    assert!(offset_of!(CurlOp, ctype) == 48);
    assert!(size_of::<CurlOp>() == 176);
    assert!(size_of::<CurlFields>() == 120);
    assert!(size_of::<CurlOptions>() == 24);
};

unsafe fn str_from_raw<'a>(p: *const c_char, len: usize) -> &'a str {
    // SAFETY: forwarded to the caller.
    let b = unsafe { bytes_from_raw(p.cast(), len) };
    core::str::from_utf8(b).unwrap_or_else(|e| {
        // SAFETY: valid_up_to() bytes are valid UTF-8.
        unsafe { core::str::from_utf8_unchecked(&b[..e.valid_up_to()]) }
    })
}

unsafe fn bytes_from_raw<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if p.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: forwarded to the caller.
        unsafe { core::slice::from_raw_parts(p, len) }
    }
}

unsafe fn cstr<'a>(p: *const c_char) -> &'a str {
    if p.is_null() {
        return "";
    }
    // SAFETY: the host passes zero-terminated strings.
    let b = unsafe { CStr::from_ptr(p) }.to_bytes();
    // SAFETY: pointer/len come from a valid slice.
    unsafe { str_from_raw(b.as_ptr().cast(), b.len()) }
}

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
fn flush_stdout() {
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
        .map(|h| ResponseHeader { field: h.as_ptr().cast(), field_len: h.len() })
        .collect();
    let extra = BackendResponseExtra {
        headers: hdrs.as_ptr(),
        num_headers: hdrs.len() as u16,
        cached: cache.cached,
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
            nr::BEGIN_STREAMING_RESPONSE,
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
pub const REQ: Http = Http::Req;
pub const RESP: Http = Http::Resp;
pub const BEREQ: Http = Http::Req;
pub const BERESP: Http = Http::Resp;

/// [0x10020] Append the header field "Key: value".
pub fn http_append(where_: Http, field: &str) -> i64 {
    if let Some(h) = io::area() {
        if io::append(h, where_ == Http::Resp, field.as_bytes()) {
            return 0;
        }
    }
    // SAFETY: the slice is valid for its length.
    let r = unsafe { hc3(nr::HTTP_APPEND, where_ as i32 as usize, field.as_ptr() as usize, field.len()) };
    r as i64
}

/// [0x10021] Set or replace the header field "Key: value".
pub fn http_set(where_: Http, field: &str) -> i64 {
    if let Some(h) = io::area() {
        if io::set(h, where_ == Http::Resp, field.as_bytes()) {
            return 0;
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
    if let Some(h) = io::area() {
        return io::find(h, where_ == Http::Resp, key.as_bytes())
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
    if io::area().is_some() {
        let r = io::REQUEST as *const *const u8;
        // SAFETY: the host wrote struct kvm_request at io::REQUEST: method pointer at 0,
        // method_len (u16) at offset 32.
        unsafe {
            let len = *((io::REQUEST + 32) as *const u16) as usize;
            let m = std::slice::from_raw_parts(*r, len);
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

// ---------------------------------------------------------------------------
// Regex
// ---------------------------------------------------------------------------

/// [0x10030] Compile a regex; returns a handle (>= 0) or negative.
pub fn regex_compile(pattern: &str) -> i32 {
    // SAFETY: the slice is valid for its length.
    unsafe { hc2(nr::REGEX_COMPILE, pattern.as_ptr() as usize, pattern.len()) as i32 }
}
/// [0x10031] Free a compiled regex.
pub fn regex_free(rgx: i32) {
    // SAFETY: plain integer.
    unsafe { hc1(nr::REGEX_FREE, rgx as usize) };
}
/// [0x10032] Returns > 0 when `text` matches.
pub fn regex_match(rgx: i32, text: &str) -> i32 {
    // SAFETY: the slice is valid for its length.
    unsafe { hc3(nr::REGEX_MATCH, rgx as usize, text.as_ptr() as usize, text.len()) as i32 }
}

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

/// [0x10706] True when called in the storage VM (asks the host).
pub fn sys_is_storage() -> bool {
    // SAFETY: no arguments.
    unsafe { hc0(nr::IS_STORAGE) != 0 }
}

/// [0x10707] Allow `f` to be called in storage (storage VM, during init).
pub fn storage_allow(f: StorageFunc) -> i64 {
    // SAFETY: passes a code address.
    unsafe { hc1(nr::STORAGE_ALLOW, f as usize) as i64 }
}

/// [0x10708] Call `f` in storage with several input buffers. Returns the
/// result length copied into `out`, or None on error.
pub fn storage_callv(f: StorageFunc, inputs: &[&[u8]], out: &mut [u8]) -> Option<usize> {
    let bufs: Vec<VirtBuffer> = inputs.iter().map(|b| VirtBuffer::new(b)).collect();
    // SAFETY: all buffers are valid for the duration of the call.
    let r = unsafe {
        hypercall(
            nr::STORAGE_CALLV,
            f as usize,
            bufs.len(),
            bufs.as_ptr() as usize,
            out.as_mut_ptr() as usize,
            out.len(),
            0,
        )
    } as i64;
    (r >= 0).then_some(r as usize)
}

/// Call `f` in storage with one input buffer.
pub fn storage_call(f: StorageFunc, input: &[u8], out: &mut [u8]) -> Option<usize> {
    storage_callv(f, &[input], out)
}

/// The input buffers of a storage function.
///
/// # Safety
/// `bufs`/`n` must be the arguments the host passed to the storage function.
pub unsafe fn storage_inputs<'a>(n: usize, bufs: *mut VirtBuffer) -> &'a [VirtBuffer] {
    if bufs.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: forwarded to the caller.
        unsafe { core::slice::from_raw_parts(bufs, n) }
    }
}

/// [0x10011] Return `data` from a storage function to the caller.
pub fn storage_return(data: &[u8]) {
    // SAFETY: the slice is valid for its length.
    unsafe { hc2(nr::STORAGE_RETURN, data.as_ptr() as usize, data.len()) };
}
/// Return nothing from a storage function.
pub fn storage_return_nothing() {
    // SAFETY: null/0 means "no data".
    unsafe { hc2(nr::STORAGE_RETURN, 0, 0) };
}
/// [0x10013] Return `data` and never resume the storage function.
pub fn storage_noreturn(data: &[u8]) -> ! {
    // SAFETY: the slice is valid for its length.
    unsafe { hc2(nr::STORAGE_NORETURN, data.as_ptr() as usize, data.len()) };
    std::process::abort()
}

/// [0x10709] Run `task` in storage after `start_ms`, then every `period_ms`.
pub fn storage_task(task: StorageTaskFunc, data: &[u8], start_ms: u64, period_ms: u64) -> i64 {
    // SAFETY: the slice is valid for its length (it is copied).
    unsafe {
        hypercall(
            nr::STORAGE_TASK,
            task as usize,
            data.as_ptr() as usize,
            data.len(),
            start_ms as usize,
            period_ms as usize,
            0,
        ) as i64
    }
}
/// [0x1070A] Stop a scheduled storage task.
pub fn stop_storage_task(id: i64) -> i64 {
    // SAFETY: plain integer.
    unsafe { hc1(nr::STOP_STORAGE_TASK, id as usize) as i64 }
}

// ---------------------------------------------------------------------------
// Shared memory, memory, ephemeral
// ---------------------------------------------------------------------------

/// [0x10700] The shared memory area as (start, end) guest addresses.
pub fn shared_memory_area() -> (u64, u64) {
    // SAFETY: no arguments; the 16-byte result comes back in rax:rdx.
    let (a, b) = unsafe { hypercall2r(nr::SHARED_MEMORY_AREA, 0, 0, 0, 0, 0, 0) };
    (a as u64, b as u64)
}

static SHM_NEXT: AtomicU64 = AtomicU64::new(0);
static SHM_END: AtomicU64 = AtomicU64::new(0);

/// Bump-allocate `size` bytes from shared memory; None when full/absent.
pub fn shm_alloc_bytes(size: usize, align: usize) -> Option<*mut u8> {
    if SHM_NEXT.load(Ordering::Relaxed) == 0 {
        let (start, end) = shared_memory_area();
        SHM_NEXT.store(start, Ordering::Relaxed);
        SHM_END.store(end, Ordering::Relaxed);
    }
    let align = align.max(1) as u64;
    let cur = SHM_NEXT.load(Ordering::Relaxed);
    let p = cur.checked_add(align - 1)? & !(align - 1);
    let next = p.checked_add(size as u64)?;
    if p == 0 || next > SHM_END.load(Ordering::Relaxed) {
        return None;
    }
    SHM_NEXT.store(next, Ordering::Relaxed);
    Some(p as usize as *mut u8)
}

/// Allocate a `T` in shared memory (zero-initialized by the host).
///
/// # Safety
/// An all-zero bit pattern must be a valid `T`; the memory is shared with
/// other VMs, so use atomics for anything written after initialization.
pub unsafe fn shm_alloc<T>() -> Option<&'static mut T> {
    let p = shm_alloc_bytes(core::mem::size_of::<T>(), core::mem::align_of::<T>())?;
    // SAFETY: freshly allocated, aligned, zeroed shared memory.
    Some(unsafe { &mut *(p as *mut T) })
}

/// [0x10703] Choose ephemeral request VMs (init only, needs permission).
pub fn make_ephemeral(ephemeral: bool) -> i32 {
    // SAFETY: plain integer.
    unsafe { hc1(nr::MAKE_EPHEMERAL, ephemeral as usize) as i32 }
}

/// [0x10A00] Memory limits and usage.
pub fn meminfo() -> MemInfo {
    let mut mi = MemInfo::default();
    // SAFETY: the host writes one MemInfo.
    unsafe { hc1(nr::GET_MEMINFO, &mut mi as *mut MemInfo as usize) };
    mi
}

// ---------------------------------------------------------------------------
// Fetch, multiprocessing
// ---------------------------------------------------------------------------

/// [0x20000] Raw HTTP fetch.
///
/// # Safety
/// `op` must be valid; `fields` and `opts` may be null.
pub unsafe fn sys_fetch(
    url: &str,
    op: *mut CurlOp,
    fields: *mut CurlFields,
    opts: *mut CurlOptions,
) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe {
        hypercall(
            nr::FETCH,
            url.as_ptr() as usize,
            url.len(),
            op as usize,
            fields as usize,
            opts as usize,
            0,
        ) as i64
    }
}

/// [0x10710] Run `f(arg)` on `n - 1` extra vCPUs.
///
/// # Safety
/// `f` runs concurrently with the caller; `arg` must be safe to share.
pub unsafe fn multiprocess(n: usize, f: extern "C" fn(*mut c_void), arg: *mut c_void) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { hc3(nr::MULTIPROCESS, n, f as usize, arg as usize) as i64 }
}
/// [0x10713] Wait for all extra vCPUs.
pub fn multiprocess_wait() -> i64 {
    // SAFETY: no arguments.
    unsafe { hc0(nr::MULTIPROCESS_WAIT) as i64 }
}
/// The current vCPU id (%gs:0).
pub fn vcpuid() -> i32 {
    let v: i32;
    // SAFETY: the host maps per-vCPU data at %gs.
    unsafe { asm!("mov {0:e}, dword ptr gs:[0]", out(reg) v, options(nostack, readonly)) };
    v
}

// ---------------------------------------------------------------------------
// Logging and debugging
// ---------------------------------------------------------------------------

/// [0x7F000] Log a message.
pub fn sys_log(msg: &str) {
    // SAFETY: the slice is valid for its length.
    unsafe { hc2(nr::LOG, msg.as_ptr() as usize, msg.len()) };
}

/// [0x7FDEB] True for debug programs (asks the host).
pub fn is_debug() -> bool {
    // SAFETY: no arguments.
    unsafe { hc0(nr::IS_DEBUG) != 0 }
}

/// [0x7F7F7] Remote-debugging breakpoint (debug programs only).
pub fn breakpoint() {
    // SAFETY: no arguments.
    unsafe { hc0(nr::BREAKPOINT) };
}

/// `vlogf`-style logging: `edgevm_guest::vlog!("x = {}", x)`.
#[macro_export]
macro_rules! vlog {
    ($($arg:tt)*) => { $crate::sys_log(&::std::format!($($arg)*)) };
}
