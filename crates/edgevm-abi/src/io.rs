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
//! Layout (guest addresses, see [`crate::layout`]):
//!
//! ```text
//! IO_AREA + 0x0000  struct edgevm_io header (magic, version, counts, used bytes, flags)
//! IO_AREA + 0x1000  request header table:  struct kvm_request_header[REQ_MAX]
//! IO_AREA + 0x3000  response header table: struct kvm_request_header[RESP_MAX]
//! IO_AREA + 0x3800  struct kvm_request for set_backend_request handlers
//! IO_AREA + 0x4000  request string blob  (REQ_BLOB_SIZE)
//! RESP_BLOB         response string blob (to the end of the area)
//! ```
//!
//! A header entry is `{const char *field; u32 colon; u32 len}`, `field` NUL-terminated;
//! an entry with `len == 0` has been removed.

use edgevm_kvm::{GuestMemory, MemError};

use crate::layout::{IO_AREA, IO_AREA_SIZE};

/// "EVIO".
pub const MAGIC: u32 = 0x4F49_5645;
/// Layout version.
pub const VERSION: u32 = 1;
/// Header struct offsets.
pub const OFF_REQ_COUNT: u64 = 8;
/// Response header count.
pub const OFF_RESP_COUNT: u64 = 12;
/// Request blob bytes used.
pub const OFF_REQ_USED: u64 = 16;
/// Response blob bytes used.
pub const OFF_RESP_USED: u64 = 20;
/// Flags (bit 0: warmup request).
pub const OFF_FLAGS: u64 = 24;
/// Per-vCPU data at %gs (the GS base points here): `u32 vcpuid` (always 0: one vCPU),
/// `u32 vcpureqid` (the request VM's index in its program's pool), read by kvm_api.h's
/// `vcpuid()` / `vcpureqid()`.
pub const VCPU_INFO: u64 = IO_AREA + 0x40;
/// Request header table.
pub const REQ_TABLE: u64 = IO_AREA + 0x1000;
/// Maximum request headers.
pub const REQ_MAX: u32 = 512;
/// Response header table.
pub const RESP_TABLE: u64 = IO_AREA + 0x3000;
/// Maximum response headers.
pub const RESP_MAX: u32 = 128;
/// `struct kvm_request`.
pub const REQUEST_STRUCT: u64 = IO_AREA + 0x3800;
/// Request strings.
pub const REQ_BLOB: u64 = IO_AREA + 0x4000;
/// Size of the request strings blob.
pub const REQ_BLOB_SIZE: u64 = 0x40000;
/// Response strings.
pub const RESP_BLOB: u64 = REQ_BLOB + REQ_BLOB_SIZE;
/// Size of the response strings blob.
pub const RESP_BLOB_SIZE: u64 = IO_AREA + IO_AREA_SIZE - RESP_BLOB;

/// REQ / BEREQ.
pub const WHERE_REQ: u64 = 0;
/// RESP / BERESP.
pub const WHERE_RESP: u64 = 1;

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

/// Check a "Key: value" field as the reference does. Returns the colon index.
pub fn validate_field(f: &[u8]) -> Result<usize, &'static str> {
    if f.len() < 4 || f.len() > 65535 {
        return Err("a header field must be 4 to 65535 bytes long");
    }
    let Some(colon) = f.iter().position(|&c| c == b':') else {
        return Err("no colon");
    };
    if colon == 0 {
        return Err("empty header name");
    }
    if f[..colon]
        .iter()
        .any(|c| matches!(c, b' ' | 0 | 8 | 0x1b | 0x0c | b'\t' | b'\r' | b'\n') || *c >= 0x7f)
    {
        return Err("header name contains a forbidden character");
    }
    if f.get(colon + 1) != Some(&b' ') {
        return Err("missing space after the colon");
    }
    if f.last() == Some(&b' ') || f.last() == Some(&b'\t') {
        return Err("trailing whitespace");
    }
    if f[colon + 1..]
        .iter()
        .any(|c| matches!(c, 0 | b'\r' | b'\n'))
    {
        return Err("header value contains CR, LF or NUL");
    }
    Ok(colon)
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

fn entry_bytes(ptr: u64, colon: u32, len: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&ptr.to_le_bytes());
    e[8..12].copy_from_slice(&colon.to_le_bytes());
    e[12..16].copy_from_slice(&len.to_le_bytes());
    e
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
    let mut table = Vec::with_capacity(r.headers.len() * 16);
    for (k, v) in r.headers {
        let f = format!("{k}: {v}");
        let p = blob.put(mem, f.as_bytes())?;
        table.extend_from_slice(&entry_bytes(p, k.len() as u32, f.len() as u32));
    }
    let err = |err| IoError::BadPointer {
        call: "request",
        err,
    };
    mem.write(REQ_TABLE, &table).map_err(err)?;
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&(r.headers.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&0u32.to_le_bytes());
    h[16..20].copy_from_slice(&((blob.at - REQ_BLOB) as u32).to_le_bytes());
    h[20..24].copy_from_slice(&0u32.to_le_bytes());
    h[24..28].copy_from_slice(&u32::from(r.warmup).to_le_bytes());
    mem.write(IO_AREA, &h).map_err(err)?;
    // struct kvm_request
    let mut k = [0u8; 88];
    k[0..8].copy_from_slice(&ptrs.method.to_le_bytes());
    k[8..16].copy_from_slice(&ptrs.url.to_le_bytes());
    k[16..24].copy_from_slice(&ptrs.arg.to_le_bytes());
    k[24..32].copy_from_slice(&ptrs.content_type.to_le_bytes());
    k[32..34].copy_from_slice(&(r.method.len() as u16).to_le_bytes());
    k[34..36].copy_from_slice(&(r.url.len() as u16).to_le_bytes());
    k[36..38].copy_from_slice(&(r.arg.len() as u16).to_le_bytes());
    k[38..40].copy_from_slice(&(r.content_type.len() as u16).to_le_bytes());
    k[40..48].copy_from_slice(&r.body.0.to_le_bytes());
    k[48..56].copy_from_slice(&r.body.1.to_le_bytes());
    k[56..64].copy_from_slice(&REQ_TABLE.to_le_bytes());
    k[64..66].copy_from_slice(&(r.headers.len() as u16).to_le_bytes());
    k[66..68].copy_from_slice(&u16::from(r.warmup).to_le_bytes());
    k[72..80].copy_from_slice(&r.prng[0].to_le_bytes());
    k[80..88].copy_from_slice(&r.prng[1].to_le_bytes());
    mem.write(REQUEST_STRUCT, &k).map_err(err)?;
    Ok(ptrs)
}

fn u32_at(mem: &GuestMemory, a: u64) -> u32 {
    let mut b = [0u8; 4];
    let _ = mem.read(a, &mut b);
    u32::from_le_bytes(b)
}

fn tables(where_: u64) -> (u64, u32, u64, u64, u64, u64) {
    // (table, max, count field, used field, blob, blob size)
    if where_ == WHERE_RESP {
        (
            RESP_TABLE,
            RESP_MAX,
            OFF_RESP_COUNT,
            OFF_RESP_USED,
            RESP_BLOB,
            RESP_BLOB_SIZE,
        )
    } else {
        (
            REQ_TABLE,
            REQ_MAX,
            OFF_REQ_COUNT,
            OFF_REQ_USED,
            REQ_BLOB,
            REQ_BLOB_SIZE,
        )
    }
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
pub fn fields(mem: &GuestMemory, where_: u64) -> Vec<Field> {
    let (table, max, count_off, ..) = tables(where_);
    let count = u32_at(mem, IO_AREA + count_off).min(max);
    let mut out = Vec::new();
    for i in 0..count {
        let mut e = [0u8; 16];
        if mem.read(table + 16 * i as u64, &mut e).is_err() {
            continue;
        }
        let ptr = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
        let colon = u32::from_le_bytes(e[8..12].try_into().unwrap_or_default()) as usize;
        let len = u32::from_le_bytes(e[12..16].try_into().unwrap_or_default()) as usize;
        if len == 0 || len > 65535 {
            continue;
        }
        if let Ok(bytes) = mem.read_vec(ptr, len) {
            out.push(Field {
                index: i,
                bytes,
                colon,
            });
        }
    }
    out
}

fn key_eq(field: &Field, key: &[u8]) -> bool {
    field.colon <= field.bytes.len() && field.bytes[..field.colon].eq_ignore_ascii_case(key)
}

/// Append a validated field. The API's `sys_http_append`.
pub fn append(
    mem: &mut GuestMemory,
    where_: u64,
    f: &[u8],
    call: &'static str,
) -> Result<(), IoError> {
    let colon = validate_field(f).map_err(|why| IoError::BadHeader {
        call,
        field: shown_field(f),
        why,
    })?;
    let (table, max, count_off, used_off, blob, blob_size) = tables(where_);
    let count = u32_at(mem, IO_AREA + count_off);
    let used = u32_at(mem, IO_AREA + used_off) as u64;
    if count >= max {
        return Err(IoError::Limit(format!("too many headers (at most {max})")));
    }
    if used + f.len() as u64 + 1 > blob_size {
        return Err(IoError::Limit("header space exhausted".into()));
    }
    let p = blob + used;
    let err = |err| IoError::BadPointer { call, err };
    let mut v = f.to_vec();
    v.push(0);
    mem.write(p, &v).map_err(err)?;
    mem.write(
        table + 16 * count as u64,
        &entry_bytes(p, colon as u32, f.len() as u32),
    )
    .map_err(err)?;
    mem.write(IO_AREA + count_off, &(count + 1).to_le_bytes())
        .map_err(err)?;
    mem.write(
        IO_AREA + used_off,
        &((used + v.len() as u64) as u32).to_le_bytes(),
    )
    .map_err(err)?;
    Ok(())
}

/// Remove every field with this key. Returns how many were removed.
pub fn unset(mem: &mut GuestMemory, where_: u64, key: &[u8]) -> Result<u32, IoError> {
    let (table, ..) = tables(where_);
    let mut n = 0;
    for f in fields(mem, where_) {
        if key_eq(&f, key) {
            mem.write(table + 16 * f.index as u64 + 12, &0u32.to_le_bytes())
                .map_err(|err| IoError::BadPointer {
                    call: "http_set",
                    err,
                })?;
            n += 1;
        }
    }
    Ok(n)
}

/// `sys_http_set`: replace the key's fields with this one; without a colon, remove the key.
pub fn set(mem: &mut GuestMemory, where_: u64, f: &[u8]) -> Result<(), IoError> {
    match f.iter().position(|&c| c == b':') {
        None => unset(mem, where_, f).map(|_| ()),
        Some(colon) => {
            validate_field(f).map_err(|why| IoError::BadHeader {
                call: "http_set",
                field: shown_field(f),
                why,
            })?;
            unset(mem, where_, &f[..colon])?;
            append(mem, where_, f, "http_set")
        }
    }
}

/// `sys_http_find`: the whole first field ("Key: value") with this key, as the reference
/// returns it.
pub fn find(mem: &GuestMemory, where_: u64, key: &[u8]) -> Option<Vec<u8>> {
    fields(mem, where_)
        .into_iter()
        .find(|f| key_eq(f, key))
        .map(|f| f.bytes)
}

/// Response headers as (name, value), each validated again (the guest could have written
/// anything into the area).
pub fn response_headers(mem: &GuestMemory) -> Result<Vec<(String, String)>, IoError> {
    let mut out = Vec::new();
    for f in fields(mem, WHERE_RESP) {
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
        assert_eq!(find(&m, WHERE_REQ, b"x-id").unwrap(), b"X-Id: 7");
        assert!(find(&m, WHERE_REQ, b"nope").is_none());
        append(&mut m, WHERE_RESP, b"X-Counter: 1", "t").unwrap();
        set(&mut m, WHERE_RESP, b"X-Counter: 2").unwrap();
        append(&mut m, WHERE_RESP, b"X-Other: y", "t").unwrap();
        set(&mut m, WHERE_RESP, b"X-Other").unwrap();
        assert_eq!(
            response_headers(&m).unwrap(),
            vec![("X-Counter".to_string(), "2".to_string())]
        );
        assert!(append(&mut m, WHERE_RESP, b"bad", "t").is_err());
    }
}
