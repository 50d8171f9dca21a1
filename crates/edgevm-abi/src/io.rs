//! The host<->guest I/O area: where the host puts each request and where the program builds
//! its response headers, so that a plain request costs one VM exit.
//!
//! The host writes the request (method, URL, arg, content type, headers, and a
//! `struct kvm_request`) into the area before entering the guest. `kvm_api.h`'s header
//! functions (`http_find`, `http_append`, `http_set`, `sys_http_method`) read and write the same
//! structures *inside the guest*, without exits; `sys_backend_response` is the one exit, and the
//! host then reads the response headers from the area. Programs built against the reference
//! header make the same calls as hypercalls; the host implements them on the same structures
//! (functions below), so both kinds of program see identical behaviour.
//!
//! The layout, the structs and the header-table rules are `edgevm-guest-abi`'s (`io`, `types`,
//! `headers`), shared with the Rust guest crate; this module writes requests and applies the
//! rules through [`GuestMemory`].

use edgevm_guest_abi::headers::{self, Area, AreaRead, HeaderError};
use edgevm_guest_abi::types::{GuestPtr, IoHeader, KvmRequest, RequestHeader};
use edgevm_kvm::{GuestMemory, MemError};
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub use edgevm_guest_abi::headers::{validate_field, validate_key, FIRST_INDEX};
pub use edgevm_guest_abi::io::{
    Where, MAGIC, REQUEST_STRUCT, REQ_BLOB, REQ_BLOB_SIZE, REQ_MAX, REQ_TABLE, RESP_BLOB,
    RESP_BLOB_SIZE, RESP_MAX, RESP_TABLE, VCPU_INFO, VERSION,
};

/// Read a shared struct from guest memory.
pub fn read_struct<T: FromBytes + IntoBytes>(mem: &GuestMemory, addr: u64) -> Result<T, MemError> {
    let mut v = T::new_zeroed();
    mem.read(addr, v.as_mut_bytes())?;
    Ok(v)
}

/// Read the first `len` bytes of a shared struct from guest memory (the rest is zero).
pub fn read_struct_prefix<T: FromBytes + IntoBytes>(
    mem: &GuestMemory,
    addr: u64,
    len: usize,
) -> Result<T, MemError> {
    let mut v = T::new_zeroed();
    let b = v.as_mut_bytes();
    let len = len.min(b.len());
    mem.read(addr, &mut b[..len])?;
    Ok(v)
}

/// Write an array of shared structs into guest memory.
pub fn write_structs<T: IntoBytes + Immutable>(
    mem: &mut GuestMemory,
    addr: u64,
    v: &[T],
) -> Result<(), MemError> {
    mem.write(addr, v.as_bytes())
}

/// Write a shared struct into guest memory.
pub fn write_struct<T: IntoBytes + Immutable>(
    mem: &mut GuestMemory,
    addr: u64,
    v: &T,
) -> Result<(), MemError> {
    mem.write(addr, v.as_bytes())
}

/// The header tables as seen through guest memory (the hypercall path).
struct Mem<'a>(&'a GuestMemory);
/// The same, writable.
struct MemMut<'a>(&'a mut GuestMemory);

macro_rules! area_reads {
    ($t:ty) => {
        impl AreaRead for $t {
            type Error = MemError;
            fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
                read_struct(self.0, addr)
            }
            fn read_entry(&self, addr: u64) -> Result<RequestHeader, MemError> {
                read_struct(self.0, addr)
            }
            fn with_bytes<R>(
                &self,
                addr: u64,
                len: usize,
                f: impl FnOnce(&[u8]) -> R,
            ) -> Result<R, MemError> {
                Ok(f(&self.0.read_vec(addr, len)?))
            }
        }
    };
}
area_reads!(Mem<'_>);
area_reads!(MemMut<'_>);

impl Area for MemMut<'_> {
    fn write_u32(&mut self, addr: u64, v: u32) -> Result<(), MemError> {
        write_struct(self.0, addr, &v)
    }
    fn write_entry(&mut self, addr: u64, e: &RequestHeader) -> Result<(), MemError> {
        write_struct(self.0, addr, e)
    }
    fn write_cstr(&mut self, addr: u64, b: &[u8]) -> Result<(), MemError> {
        let mut v = Vec::with_capacity(b.len() + 1);
        v.extend_from_slice(b);
        v.push(0);
        self.0.write(addr, &v)
    }
}

/// An API misuse that fails the request with a clear message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error("bad pointer or length passed to {call}: {err}")]
    BadPointer { call: &'static str, err: MemError },
    #[error("invalid header field {field:?} passed to {call}: {why}")]
    BadHeader {
        call: &'static str,
        field: String,
        why: &'static str,
    },
    #[error("{0}")]
    Limit(String),
    /// A header table or its string space is full: the field is lost (the call returns -1,
    /// as the reference's HDR_INVALID).
    #[error("{0}")]
    Full(String),
}

/// A header field as quoted in error messages (and so in the server log): at most the first
/// 80 bytes, so a program cannot write a 64 KiB log line per request with one bad field.
pub fn shown_field(f: &[u8]) -> String {
    const SHOWN: usize = 80;
    if f.len() <= SHOWN {
        String::from_utf8_lossy(f).into_owned()
    } else {
        format!(
            "{}... ({} bytes)",
            String::from_utf8_lossy(&f[..SHOWN]),
            f.len()
        )
    }
}

/// The strings of one request, as written into the area.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestPtrs {
    /// Method string.
    pub method: u64,
    /// URL string.
    pub url: u64,
    /// arg string.
    pub arg: u64,
    /// Content-Type string.
    pub content_type: u64,
}

struct Blob {
    at: u64,
    end: u64,
}

impl Blob {
    fn put(&mut self, mem: &mut GuestMemory, s: &[u8]) -> Result<u64, IoError> {
        let need = s.len() as u64 + 1;
        if self.at + need > self.end {
            return Err(IoError::Limit(format!(
                "request too large for the program's I/O area ({} KiB of headers and URL)",
                REQ_BLOB_SIZE >> 10
            )));
        }
        let p = self.at;
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s);
        v.push(0);
        mem.write(p, &v).map_err(|err| IoError::BadPointer {
            call: "request",
            err,
        })?;
        self.at += need;
        Ok(p)
    }
}

/// What the host writes for one request.
pub struct RequestData<'a> {
    /// Method.
    pub method: &'a str,
    /// URL (path and query).
    pub url: &'a str,
    /// arg.
    pub arg: &'a str,
    /// Content type.
    pub content_type: &'a str,
    /// Headers as (name, value).
    pub headers: &'a [(String, String)],
    /// Address and length of the body (0, 0 if none).
    pub body: (u64, u64),
    /// Warmup request.
    pub warmup: bool,
    /// Per-request random seed.
    pub prng: [u64; 2],
}

/// Write a request into the area and reset the response side.
pub fn write_request(mem: &mut GuestMemory, r: &RequestData) -> Result<RequestPtrs, IoError> {
    for (what, s) in [
        ("URL", r.url),
        ("method", r.method),
        ("arg", r.arg),
        ("content type", r.content_type),
    ] {
        if s.len() > 65535 {
            return Err(IoError::Limit(format!(
                "request {what} is longer than 65535 bytes"
            )));
        }
    }
    if r.headers.len() > REQ_MAX as usize {
        return Err(IoError::Limit(format!(
            "request has {} headers; at most {REQ_MAX} are passed to programs",
            r.headers.len()
        )));
    }
    let mut blob = Blob {
        at: REQ_BLOB,
        end: REQ_BLOB + REQ_BLOB_SIZE,
    };
    let ptrs = RequestPtrs {
        method: blob.put(mem, r.method.as_bytes())?,
        url: blob.put(mem, r.url.as_bytes())?,
        arg: blob.put(mem, r.arg.as_bytes())?,
        content_type: blob.put(mem, r.content_type.as_bytes())?,
    };
    let mut table = Vec::with_capacity(r.headers.len());
    for (k, v) in r.headers {
        let f = format!("{k}: {v}");
        table.push(RequestHeader {
            field: GuestPtr::new(blob.put(mem, f.as_bytes())?),
            field_colon: k.len() as u32,
            field_len: f.len() as u32,
        });
    }
    let err = |err| IoError::BadPointer {
        call: "request",
        err,
    };
    mem.write(REQ_TABLE, table.as_bytes()).map_err(err)?;
    let head = IoHeader {
        magic: MAGIC,
        version: VERSION,
        req_count: r.headers.len() as u32,
        resp_count: 0,
        req_used: (blob.at - REQ_BLOB) as u32,
        resp_used: 0,
        flags: u32::from(r.warmup),
        reserved: 0,
    };
    write_struct(mem, edgevm_guest_abi::io::BASE, &head).map_err(err)?;
    let k = KvmRequest {
        method: GuestPtr::new(ptrs.method),
        url: GuestPtr::new(ptrs.url),
        arg: GuestPtr::new(ptrs.arg),
        content_type: GuestPtr::new(ptrs.content_type),
        method_len: r.method.len() as u16,
        url_len: r.url.len() as u16,
        arg_len: r.arg.len() as u16,
        content_type_len: r.content_type.len() as u16,
        content: GuestPtr::new(r.body.0),
        content_len: r.body.1,
        headers: GuestPtr::new(REQ_TABLE),
        num_headers: r.headers.len() as u16,
        info_flags: u16::from(r.warmup),
        reserved0: 0,
        prng: r.prng,
    };
    write_struct(mem, REQUEST_STRUCT, &k).map_err(err)?;
    Ok(ptrs)
}

/// One header entry as read from the area.
#[derive(Debug, Clone)]
pub struct Field {
    /// Index in the table.
    pub index: u32,
    /// The "Key: value" bytes.
    pub bytes: Vec<u8>,
    /// Colon index.
    pub colon: usize,
}

/// Live (not removed) entries of REQ or RESP. Entries the guest corrupted are skipped.
pub fn fields(mem: &GuestMemory, where_: Where) -> Vec<Field> {
    let a = Mem(mem);
    (0..headers::count(&a, where_))
        .filter_map(|i| {
            let (e, _) = headers::live_entry(&a, where_, i, None)?;
            let bytes = mem.read_vec(e.field.addr(), e.field_len as usize).ok()?;
            Some(Field {
                index: i,
                bytes,
                colon: e.field_colon as usize,
            })
        })
        .collect()
}

fn header_error(e: HeaderError<MemError>, call: &'static str, f: &[u8]) -> IoError {
    match e {
        HeaderError::Mem(err) => IoError::BadPointer { call, err },
        HeaderError::BadField(why) => IoError::BadHeader {
            call,
            field: shown_field(f),
            why,
        },
        HeaderError::TooMany { max } => IoError::Full(format!("too many headers (at most {max})")),
        HeaderError::BlobFull => IoError::Full("header space exhausted".into()),
    }
}

/// Append a validated field. The API's `sys_http_append`: its field index.
pub fn append(
    mem: &mut GuestMemory,
    where_: Where,
    f: &[u8],
    call: &'static str,
) -> Result<u32, IoError> {
    headers::append(&mut MemMut(mem), where_, f).map_err(|e| header_error(e, call, f))
}

/// Remove every field with this key: the field index of the first removed.
pub fn unset(mem: &mut GuestMemory, where_: Where, key: &[u8]) -> Result<Option<u32>, IoError> {
    headers::unset(&mut MemMut(mem), where_, key).map_err(|err| IoError::BadPointer {
        call: "http_set",
        err,
    })
}

/// `sys_http_set`: replace the key's fields with this one; without a colon, remove the key.
/// The field index (see [`edgevm_guest_abi::headers::set`]).
pub fn set(mem: &mut GuestMemory, where_: Where, f: &[u8]) -> Result<u32, IoError> {
    headers::set(&mut MemMut(mem), where_, f).map_err(|e| header_error(e, "http_set", f))
}

/// `sys_http_find`: the whole first field ("Key: value") with this key, as the reference
/// returns it.
pub fn find(mem: &GuestMemory, where_: Where, key: &[u8]) -> Option<Vec<u8>> {
    let e = headers::find(&Mem(mem), where_, key)?;
    mem.read_vec(e.field.addr(), e.field_len as usize).ok()
}

/// Response headers as (name, value), each validated again (the guest could have written
/// anything into the area).
pub fn response_headers(mem: &GuestMemory) -> Result<Vec<(String, String)>, IoError> {
    let mut out = Vec::new();
    for f in fields(mem, Where::Resp) {
        let colon = validate_field(&f.bytes).map_err(|why| IoError::BadHeader {
            call: "backend_response",
            field: shown_field(&f.bytes),
            why,
        })?;
        let k = String::from_utf8_lossy(&f.bytes[..colon]).into_owned();
        let v = String::from_utf8_lossy(&f.bytes[colon + 2..]).into_owned();
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate_field(b"X-A: b").is_ok());
        assert!(validate_field(b"X-A:b").is_err());
        assert!(validate_field(b"X A: b").is_err());
        assert!(validate_field(b": bb").is_err());
        assert!(validate_field(b"X-A: b ").is_err());
        assert!(validate_field(b"X-A: b\r\nEvil: 1").is_err());
        assert!(validate_field(b"A:").is_err());
    }

    #[test]
    fn request_and_response_headers() {
        let mut m = GuestMemory::new_shared(4 << 20).unwrap();
        let hdrs = vec![
            ("Host".to_string(), "x".to_string()),
            ("X-Id".to_string(), "7".to_string()),
        ];
        let p = write_request(
            &mut m,
            &RequestData {
                method: "GET",
                url: "/a?b=1",
                arg: "",
                content_type: "",
                headers: &hdrs,
                body: (0, 0),
                warmup: false,
                prng: [1, 2],
            },
        )
        .unwrap();
        assert_eq!(m.read_cstr(p.url, 100).unwrap(), b"/a?b=1");
        assert_eq!(find(&m, Where::Req, b"x-id").unwrap(), b"X-Id: 7");
        assert!(find(&m, Where::Req, b"nope").is_none());
        assert_eq!(
            append(&mut m, Where::Resp, b"X-Counter: 1", "t").unwrap(),
            5
        );
        assert_eq!(set(&mut m, Where::Resp, b"X-Counter: 2").unwrap(), 6);
        assert_eq!(append(&mut m, Where::Resp, b"X-Other: y", "t").unwrap(), 7);
        assert_eq!(set(&mut m, Where::Resp, b"X-Other").unwrap(), 7);
        assert_eq!(set(&mut m, Where::Resp, b"X-Other").unwrap(), 0);
        assert_eq!(set(&mut m, Where::Resp, b"").unwrap(), 0);
        assert_eq!(
            response_headers(&m).unwrap(),
            vec![("X-Counter".to_string(), "2".to_string())]
        );
        assert!(append(&mut m, Where::Resp, b"bad", "t").is_err());
    }
}
