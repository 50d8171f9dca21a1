//! Every `#[repr(C)]` struct the host and guests share, laid out exactly as in `kvm_api.h`
//! (and the reference header). Pointers are [`GuestPtr`]s: a guest address, which on the guest
//! side is the pointer itself (guest-virtual == guest-physical). With the `zerocopy` feature
//! the host reads and writes them as bytes; explicit `_pad` fields make every byte a field.

use core::ffi::{c_char, c_void};
use core::fmt;
use core::marker::PhantomData;
use core::mem::{offset_of, size_of};

#[cfg(feature = "zerocopy")]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A guest pointer to `T`: the guest address, 8 bytes.
#[repr(transparent)]
#[cfg_attr(
    feature = "zerocopy",
    derive(FromBytes, IntoBytes, Immutable, KnownLayout)
)]
pub struct GuestPtr<T> {
    addr: u64,
    _to: PhantomData<fn() -> T>,
}

impl<T> GuestPtr<T> {
    /// The null pointer.
    pub const NULL: Self = Self::new(0);

    /// A pointer at guest address `addr`.
    pub const fn new(addr: u64) -> Self {
        GuestPtr {
            addr,
            _to: PhantomData,
        }
    }

    /// The guest address.
    pub const fn addr(self) -> u64 {
        self.addr
    }

    /// True for NULL.
    pub const fn is_null(self) -> bool {
        self.addr == 0
    }

    /// From a pointer of the guest's own address space (the guest side).
    pub fn from_ptr(p: *const T) -> Self {
        Self::new(p as usize as u64)
    }

    /// As a pointer of the guest's own address space (the guest side).
    pub fn ptr(self) -> *const T {
        self.addr as usize as *const T
    }

    /// As a mutable pointer of the guest's own address space (the guest side).
    pub fn ptr_mut(self) -> *mut T {
        self.addr as usize as *mut T
    }

    /// The address of element `i` of an array starting here.
    pub fn index(self, i: u64) -> u64 {
        self.addr
            .wrapping_add(i.wrapping_mul(size_of::<T>() as u64))
    }
}

impl<T> Clone for GuestPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for GuestPtr<T> {}
impl<T> PartialEq for GuestPtr<T> {
    fn eq(&self, o: &Self) -> bool {
        self.addr == o.addr
    }
}
impl<T> Eq for GuestPtr<T> {}
impl<T> Default for GuestPtr<T> {
    fn default() -> Self {
        Self::NULL
    }
}
impl<T> fmt::Debug for GuestPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.addr)
    }
}

/// Derives of every shared struct.
macro_rules! abi_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq)]
        #[cfg_attr(feature = "zerocopy", derive(FromBytes, IntoBytes, Immutable, KnownLayout))]
        pub struct $name { $($body)* }
    };
}

abi_struct! {
    /// `struct edgevm_io`: the head of the I/O area ([`crate::io`]).
    pub struct IoHeader {
        /// [`crate::io::MAGIC`].
        pub magic: u32,
        /// [`crate::io::VERSION`].
        pub version: u32,
        /// Entries used in the request header table.
        pub req_count: u32,
        /// Entries used in the response header table.
        pub resp_count: u32,
        /// Bytes used in the request blob.
        pub req_used: u32,
        /// Bytes used in the response blob.
        pub resp_used: u32,
        /// [`crate::io::FLAG_WARMUP`].
        pub flags: u32,
        /// Zero.
        pub reserved: u32,
    }
}

abi_struct! {
    /// `struct kvm_request_header`: `field` is "Key: value" (`field_len` bytes, NUL-terminated),
    /// `field[field_colon] == ':'`; an entry with `field_len == 0` has been removed.
    pub struct RequestHeader {
        /// The field.
        pub field: GuestPtr<c_char>,
        /// Index of the colon.
        pub field_colon: u32,
        /// Length of the field.
        pub field_len: u32,
    }
}

abi_struct! {
    /// `struct kvm_request`: a whole request (set_backend_request handlers,
    /// wait_for_requests_paused). Strings are NUL-terminated; lengths exclude the NUL.
    pub struct KvmRequest {
        /// Method.
        pub method: GuestPtr<c_char>,
        /// URL.
        pub url: GuestPtr<c_char>,
        /// The configured argument.
        pub arg: GuestPtr<c_char>,
        /// Content type.
        pub content_type: GuestPtr<c_char>,
        /// Length of `method`.
        pub method_len: u16,
        /// Length of `url`.
        pub url_len: u16,
        /// Length of `arg`.
        pub arg_len: u16,
        /// Length of `content_type`.
        pub content_type_len: u16,
        /// Request body (may be NULL).
        pub content: GuestPtr<u8>,
        /// Length of the body.
        pub content_len: u64,
        /// Request headers.
        pub headers: GuestPtr<RequestHeader>,
        /// Number of request headers.
        pub num_headers: u16,
        /// `KVM_REQUEST_INFO_*` ([`crate::io::FLAG_WARMUP`]).
        pub info_flags: u16,
        /// Zero.
        pub reserved0: u32,
        /// Per-request random seed from the host (`reserved1` in older headers).
        pub prng: [u64; 2],
    }
}

abi_struct! {
    /// `struct ResponseHeader`: one extra response header "Key: value".
    pub struct ResponseHeader {
        /// The field.
        pub field: GuestPtr<c_char>,
        /// Its length.
        pub field_len: u64,
    }
}

abi_struct! {
    /// `struct BackendResponseExtra` (C `bool cached` is a byte here: the host reads any value).
    pub struct BackendResponseExtra {
        /// Up to 64 extra headers.
        pub headers: GuestPtr<ResponseHeader>,
        /// Number of extra headers.
        pub num_headers: u16,
        /// Whether the response may be cached (C `bool`).
        pub cached: u8,
        /// Padding in the C layout.
        pub _pad: u8,
        /// Seconds.
        pub ttl: f32,
        /// Seconds.
        pub grace: f32,
        /// Seconds.
        pub keep: f32,
        /// Zero.
        pub reserved: [u64; 4],
    }
}

abi_struct! {
    /// `struct virtbuffer`: a buffer passed to or from storage.
    pub struct VirtBuffer {
        /// Start.
        pub data: GuestPtr<c_void>,
        /// Length.
        pub len: u64,
    }
}

abi_struct! {
    /// `struct streaming_content`: a chunk returned by a streaming callback.
    pub struct StreamingContent {
        /// Start.
        pub data: GuestPtr<c_void>,
        /// Length.
        pub len: u64,
    }
}

abi_struct! {
    /// `struct shared_memory_info`: the result of shared_memory_area() (in rax:rdx).
    pub struct SharedMemoryInfo {
        /// First byte of the area.
        pub ptr: u64,
        /// One past the last byte.
        pub end: u64,
    }
}

abi_struct! {
    /// `struct meminfo`.
    pub struct MemInfo {
        /// Main memory size.
        pub max_memory: u64,
        /// Max copy-on-write memory per request.
        pub max_reqmem: u64,
        /// High-water mark of request memory.
        pub reqmem_upper: u64,
        /// Request memory in use now.
        pub reqmem_current: u64,
    }
}

abi_struct! {
    /// `struct curl_op`.
    pub struct CurlOp {
        /// out: HTTP status.
        pub status: u32,
        /// Length of `post_buffer`.
        pub post_buflen: u32,
        /// POST body (NULL: GET).
        pub post_buffer: GuestPtr<c_void>,
        /// out: response headers.
        pub headers: GuestPtr<c_char>,
        /// out: length of `headers`.
        pub headers_length: u32,
        /// Unused.
        pub unused1: u32,
        /// in/out: response body.
        pub content: GuestPtr<c_void>,
        /// in/out: length of `content`.
        pub content_length: u32,
        /// out: length of `ctype`.
        pub ctlen: u32,
        /// out: content type.
        pub ctype: [u8; 128],
    }
}

/// `CURL_FIELDS_COUNT`.
pub const CURL_FIELDS_COUNT: usize = 12;

abi_struct! {
    /// `struct curl_fields`: up to 12 extra request header fields.
    pub struct CurlFields {
        /// Fields.
        pub ptr: [GuestPtr<c_char>; CURL_FIELDS_COUNT],
        /// Their lengths.
        pub len: [u16; CURL_FIELDS_COUNT],
    }
}

abi_struct! {
    /// `struct curl_options`.
    pub struct CurlOptions {
        /// Network interface to bind to.
        pub interface: GuestPtr<c_char>,
        /// Unused.
        pub unused: GuestPtr<c_char>,
        /// Follow redirects.
        pub follow_location: i8,
        /// Do not keep the content.
        pub dummy_fetch: i8,
        /// TCP fast open.
        pub tcp_fast_open: i8,
        /// Do not verify the host.
        pub dont_verify_host: i8,
        /// Unused.
        pub unused_opt5: u32,
    }
}

/// A struct of the ABI, as `kvm_api.h` names it, with its size and its fields' offsets.
pub struct CStruct {
    /// The C type, e.g. `struct kvm_request`.
    pub c_name: &'static str,
    /// `sizeof`.
    pub size: usize,
    /// (C field, `offsetof`).
    pub fields: &'static [(&'static str, usize)],
}

macro_rules! c_struct {
    ($c:literal, $t:ty, [$($cf:literal => $f:ident),* $(,)?]) => {
        CStruct {
            c_name: $c,
            size: size_of::<$t>(),
            fields: &[$(($cf, offset_of!($t, $f))),*],
        }
    };
}

/// Every shared struct (the header test compiles a `_Static_assert` per size and offset).
pub const C_STRUCTS: &[CStruct] = &[
    c_struct!("struct edgevm_io", IoHeader, [
        "magic" => magic, "version" => version, "req_count" => req_count,
        "resp_count" => resp_count, "req_used" => req_used, "resp_used" => resp_used,
        "flags" => flags, "reserved" => reserved,
    ]),
    c_struct!("struct kvm_request_header", RequestHeader, [
        "field" => field, "field_colon" => field_colon, "field_len" => field_len,
    ]),
    c_struct!("struct kvm_request", KvmRequest, [
        "method" => method, "url" => url, "arg" => arg, "content_type" => content_type,
        "method_len" => method_len, "url_len" => url_len, "arg_len" => arg_len,
        "content_type_len" => content_type_len, "content" => content,
        "content_len" => content_len, "headers" => headers, "num_headers" => num_headers,
        "info_flags" => info_flags, "reserved0" => reserved0, "prng" => prng,
    ]),
    c_struct!("struct ResponseHeader", ResponseHeader, [
        "field" => field, "field_len" => field_len,
    ]),
    c_struct!("struct BackendResponseExtra", BackendResponseExtra, [
        "headers" => headers, "num_headers" => num_headers, "cached" => cached,
        "ttl" => ttl, "grace" => grace, "keep" => keep, "reserved" => reserved,
    ]),
    c_struct!("struct virtbuffer", VirtBuffer, ["data" => data, "len" => len]),
    c_struct!("struct streaming_content", StreamingContent, ["data" => data, "len" => len]),
    c_struct!("struct shared_memory_info", SharedMemoryInfo, ["ptr" => ptr, "end" => end]),
    c_struct!("struct meminfo", MemInfo, [
        "max_memory" => max_memory, "max_reqmem" => max_reqmem,
        "reqmem_upper" => reqmem_upper, "reqmem_current" => reqmem_current,
    ]),
    c_struct!("struct curl_op", CurlOp, [
        "status" => status, "post_buflen" => post_buflen, "post_buffer" => post_buffer,
        "headers" => headers, "headers_length" => headers_length, "unused1" => unused1,
        "content" => content, "content_length" => content_length, "ctlen" => ctlen,
        "ctype" => ctype,
    ]),
    c_struct!("struct curl_fields", CurlFields, ["ptr" => ptr, "len" => len]),
    c_struct!("struct curl_options", CurlOptions, [
        "interface" => interface, "unused" => unused, "follow_location" => follow_location,
        "dummy_fetch" => dummy_fetch, "tcp_fast_open" => tcp_fast_open,
        "dont_verify_host" => dont_verify_host, "unused_opt5" => unused_opt5,
    ]),
];

// The reference ABI's sizes, checked at compile time on both sides.
const _: () = {
    assert!(size_of::<IoHeader>() == 32);
    assert!(size_of::<RequestHeader>() == 16);
    assert!(offset_of!(KvmRequest, method_len) == 32);
    assert!(offset_of!(KvmRequest, content) == 40);
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
