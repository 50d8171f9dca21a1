//! The structs shared with the host (from `edgevm-guest-abi`), with safe accessors.

use core::ffi::{c_char, CStr};
use core::ops::Deref;

pub use edgevm_guest_abi::types::{
    BackendResponseExtra, CurlFields, CurlOp, CurlOptions, GuestPtr, MemInfo, ResponseHeader,
    StreamingContent, CURL_FIELDS_COUNT,
};
/// `struct kvm_request_header`.
pub use edgevm_guest_abi::types::RequestHeader as KvmRequestHeader;

/// `kvm_request.info_flags`: this is a warmup request.
pub const KVM_REQUEST_INFO_WARMUP: u16 = edgevm_guest_abi::io::FLAG_WARMUP as u16;

/// `struct kvm_request` (the shared struct, with accessors).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct KvmRequest(pub edgevm_guest_abi::KvmRequest);

impl Deref for KvmRequest {
    type Target = edgevm_guest_abi::KvmRequest;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl KvmRequest {
    /// An all-zero request (for [`crate::wait_for_requests_paused`]).
    pub const fn zeroed() -> Self {
        KvmRequest(edgevm_guest_abi::KvmRequest {
            method: GuestPtr::NULL,
            url: GuestPtr::NULL,
            arg: GuestPtr::NULL,
            content_type: GuestPtr::NULL,
            method_len: 0,
            url_len: 0,
            arg_len: 0,
            content_type_len: 0,
            content: GuestPtr::NULL,
            content_len: 0,
            headers: GuestPtr::NULL,
            num_headers: 0,
            info_flags: 0,
            reserved0: 0,
            prng: [0; 2],
        })
    }
    pub fn method(&self) -> &str {
        // SAFETY: the host provides valid (ptr, len) pairs or null.
        unsafe { str_from_raw(self.0.method.ptr(), self.0.method_len as usize) }
    }
    pub fn url(&self) -> &str {
        // SAFETY: as above.
        unsafe { str_from_raw(self.0.url.ptr(), self.0.url_len as usize) }
    }
    pub fn arg(&self) -> &str {
        // SAFETY: as above.
        unsafe { str_from_raw(self.0.arg.ptr(), self.0.arg_len as usize) }
    }
    pub fn content_type(&self) -> &str {
        // SAFETY: as above.
        unsafe { str_from_raw(self.0.content_type.ptr(), self.0.content_type_len as usize) }
    }
    pub fn content(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { bytes_from_raw(self.0.content.ptr(), self.0.content_len as usize) }
    }
    pub fn is_warmup(&self) -> bool {
        self.0.info_flags & KVM_REQUEST_INFO_WARMUP != 0
    }
    /// All request headers as "Key: value" strings.
    pub fn headers(&self) -> impl Iterator<Item = &str> + '_ {
        let hdrs: &[KvmRequestHeader] = if self.0.headers.is_null() {
            &[]
        } else {
            // SAFETY: the host provides `num_headers` valid entries.
            unsafe { core::slice::from_raw_parts(self.0.headers.ptr(), self.0.num_headers as usize) }
        };
        // SAFETY: each entry is a valid (ptr, len) pair.
        hdrs.iter()
            .map(|h| unsafe { str_from_raw(h.field.ptr(), h.field_len as usize) })
    }
    /// The value of the first header named `key` (case-insensitive).
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers().find_map(|f| {
            let (k, v) = f.split_once(':')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
        })
    }
}

/// `struct virtbuffer`: a buffer passed to or from storage (the shared struct, with accessors).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct VirtBuffer(pub edgevm_guest_abi::VirtBuffer);

impl VirtBuffer {
    pub fn new(data: &[u8]) -> Self {
        VirtBuffer(edgevm_guest_abi::VirtBuffer {
            data: GuestPtr::from_ptr(data.as_ptr().cast()),
            len: data.len() as u64,
        })
    }
    /// The bytes of this buffer.
    ///
    /// # Safety
    /// `data` must point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        // SAFETY: forwarded to the caller.
        unsafe { bytes_from_raw(self.0.data.ptr().cast(), self.0.len as usize) }
    }
}

pub(crate) unsafe fn str_from_raw<'a>(p: *const c_char, len: usize) -> &'a str {
    // SAFETY: forwarded to the caller.
    let b = unsafe { bytes_from_raw(p.cast(), len) };
    core::str::from_utf8(b).unwrap_or_else(|e| {
        // SAFETY: valid_up_to() bytes are valid UTF-8.
        unsafe { core::str::from_utf8_unchecked(&b[..e.valid_up_to()]) }
    })
}

pub(crate) unsafe fn bytes_from_raw<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if p.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: forwarded to the caller.
        unsafe { core::slice::from_raw_parts(p, len) }
    }
}

pub(crate) unsafe fn cstr<'a>(p: *const c_char) -> &'a str {
    if p.is_null() {
        return "";
    }
    // SAFETY: the host passes zero-terminated strings.
    let b = unsafe { CStr::from_ptr(p) }.to_bytes();
    // SAFETY: pointer/len come from a valid slice.
    unsafe { str_from_raw(b.as_ptr().cast(), b.len()) }
}
