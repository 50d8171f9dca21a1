//! The header tables of the I/O area, written once for both sides: the host works on them
//! through `GuestMemory` (the hypercall path), the Rust guest crate in place (the in-guest
//! fast path). `kvm_api.h`'s C fast path applies the same rules.

use crate::io::{Table, Where, BASE};
use crate::types::{GuestPtr, IoHeader, RequestHeader};
use core::mem::{offset_of, size_of};

/// Longest header field.
pub const MAX_FIELD: usize = 65535;

/// The field index the header calls return for table entry `i` is `FIRST_INDEX + i`, as the
/// reference's (Varnish numbers a message's header fields after its first line's 5 fields):
/// `sys_http_append`/`sys_http_set` return it, so a result > 0 means success.
pub const FIRST_INDEX: u32 = 5;

/// Check a key passed to `sys_http_find` as the reference does: 1 to 65535 bytes, none of
/// `: \0 \b \e \f \t \r \n`.
pub fn validate_key(k: &[u8]) -> Result<(), &'static str> {
    if k.is_empty() || k.len() > MAX_FIELD {
        return Err("a header name must be 1 to 65535 bytes long");
    }
    if k.iter()
        .any(|c| matches!(c, b':' | b' ' | 0 | 8 | 0x1b | 0x0c | b'\t' | b'\r' | b'\n'))
    {
        return Err("header name contains a forbidden character");
    }
    Ok(())
}

/// Check a "Key: value" field as the reference does. Returns the colon index.
pub fn validate_field(f: &[u8]) -> Result<usize, &'static str> {
    if f.len() < 4 || f.len() > MAX_FIELD {
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

/// True if the field (its bytes and colon index) has this key (ASCII case-insensitive).
pub fn key_eq(field: &[u8], colon: usize, key: &[u8]) -> bool {
    colon <= field.len() && field[..colon].eq_ignore_ascii_case(key)
}

/// Read access to the I/O area: guest memory on the host, the area itself in the guest.
pub trait AreaRead {
    /// A failed access (bad guest memory).
    type Error;
    /// Read the 4-byte word at a guest address.
    fn read_u32(&self, addr: u64) -> Result<u32, Self::Error>;
    /// Read one table entry.
    fn read_entry(&self, addr: u64) -> Result<RequestHeader, Self::Error>;
    /// Call `f` with the `len` bytes at `addr`.
    fn with_bytes<R>(
        &self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Self::Error>;
}

/// Write access to the I/O area.
pub trait Area: AreaRead {
    /// Write the 4-byte word at a guest address.
    fn write_u32(&mut self, addr: u64, v: u32) -> Result<(), Self::Error>;
    /// Write one table entry.
    fn write_entry(&mut self, addr: u64, e: &RequestHeader) -> Result<(), Self::Error>;
    /// Write bytes followed by a NUL at `addr`.
    fn write_cstr(&mut self, addr: u64, b: &[u8]) -> Result<(), Self::Error>;
}

/// Why a header operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError<E> {
    /// Guest memory could not be accessed.
    Mem(E),
    /// The field breaks a rule of [`validate_field`].
    BadField(&'static str),
    /// The table is full.
    TooMany {
        /// Its capacity.
        max: u32,
    },
    /// The string blob is full.
    BlobFull,
}

impl<E> From<E> for HeaderError<E> {
    fn from(e: E) -> Self {
        HeaderError::Mem(e)
    }
}

const fn field_addr(off: usize) -> u64 {
    BASE + off as u64
}

/// Guest addresses of the (count, used) words of a header set.
fn counters(w: Where) -> (u64, u64) {
    match w {
        Where::Req => (
            field_addr(offset_of!(IoHeader, req_count)),
            field_addr(offset_of!(IoHeader, req_used)),
        ),
        Where::Resp => (
            field_addr(offset_of!(IoHeader, resp_count)),
            field_addr(offset_of!(IoHeader, resp_used)),
        ),
    }
}

fn entry_addr(t: &Table, i: u32) -> u64 {
    GuestPtr::<RequestHeader>::new(t.entries).index(i.into())
}

/// Entries in use (the count, capped at the table's capacity; 0 if unreadable).
pub fn count<A: AreaRead>(a: &A, w: Where) -> u32 {
    a.read_u32(counters(w).0).unwrap_or(0).min(w.table().max)
}

/// Entry `i` if it is live (not removed, a sane length, readable): the entry and whether its
/// key is `key` (when given). Entries the guest corrupted are skipped, never an error.
pub fn live_entry<A: AreaRead>(
    a: &A,
    w: Where,
    i: u32,
    key: Option<&[u8]>,
) -> Option<(RequestHeader, bool)> {
    let e = a.read_entry(entry_addr(&w.table(), i)).ok()?;
    let len = e.field_len as usize;
    if len == 0 || len > MAX_FIELD {
        return None;
    }
    let colon = e.field_colon as usize;
    let hit = a
        .with_bytes(e.field.addr(), len, |b| {
            key.is_some_and(|k| key_eq(b, colon, k))
        })
        .ok()?;
    Some((e, hit))
}

/// `sys_http_find`: the first live entry with this key.
pub fn find<A: AreaRead>(a: &A, w: Where, key: &[u8]) -> Option<RequestHeader> {
    (0..count(a, w)).find_map(|i| match live_entry(a, w, i, Some(key)) {
        Some((e, true)) => Some(e),
        _ => None,
    })
}

/// Remove every field with this key. Returns the field index ([`FIRST_INDEX`] + entry) of
/// the first one removed, None when there was none.
pub fn unset<A: Area>(a: &mut A, w: Where, key: &[u8]) -> Result<Option<u32>, A::Error> {
    let t = w.table();
    let mut first = None;
    for i in 0..count(a, w) {
        if let Some((_, true)) = live_entry(a, w, i, Some(key)) {
            let len_at = entry_addr(&t, i) + offset_of!(RequestHeader, field_len) as u64;
            a.write_u32(len_at, 0)?;
            first = first.or(Some(FIRST_INDEX + i));
        }
    }
    Ok(first)
}

/// `sys_http_append`: append a validated field. Returns its field index ([`FIRST_INDEX`] +
/// entry).
pub fn append<A: Area>(a: &mut A, w: Where, f: &[u8]) -> Result<u32, HeaderError<A::Error>> {
    let colon = validate_field(f).map_err(HeaderError::BadField)?;
    let t = w.table();
    let (count_at, used_at) = counters(w);
    let count = a.read_u32(count_at).unwrap_or(0);
    let used = u64::from(a.read_u32(used_at).unwrap_or(0));
    if count >= t.max {
        return Err(HeaderError::TooMany { max: t.max });
    }
    if used + f.len() as u64 + 1 > t.blob_size {
        return Err(HeaderError::BlobFull);
    }
    let p = t.blob + used;
    a.write_cstr(p, f)?;
    let e = RequestHeader {
        field: GuestPtr::new(p),
        field_colon: colon as u32,
        field_len: f.len() as u32,
    };
    a.write_entry(entry_addr(&t, count), &e)?;
    a.write_u32(count_at, count + 1)?;
    a.write_u32(used_at, (used + f.len() as u64 + 1) as u32)?;
    Ok(FIRST_INDEX + count)
}

/// `sys_http_set`: replace the key's fields with this one (its field index); without a colon,
/// remove the key (the index of the first field removed, 0 when there was none); an empty
/// string does nothing (0).
pub fn set<A: Area>(a: &mut A, w: Where, f: &[u8]) -> Result<u32, HeaderError<A::Error>> {
    if f.is_empty() {
        return Ok(0);
    }
    match f.iter().position(|&c| c == b':') {
        None => unset(a, w, f)
            .map(|i| i.unwrap_or(0))
            .map_err(HeaderError::Mem),
        Some(colon) => {
            validate_field(f).map_err(HeaderError::BadField)?;
            unset(a, w, &f[..colon])?;
            append(a, w, f)
        }
    }
}

const _: () = assert!(size_of::<RequestHeader>() == 16);
