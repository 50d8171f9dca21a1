//! In-guest header calls (edgevm fast path): under edgevm (EDGEVM_IO=1) the request's headers
//! are in the I/O area and response headers are built there, so a plain request costs one VM
//! exit. The rules are `edgevm_guest_abi::headers`, the same code the host runs for the
//! hypercall path; anything the fast path does not accept goes to the hypercall.

use core::convert::Infallible;
use edgevm_guest_abi::headers::{self, Area, AreaRead};
use edgevm_guest_abi::io::{BASE, MAGIC, VERSION};
use edgevm_guest_abi::types::{IoHeader, RequestHeader};
use edgevm_guest_abi::Where;

/// The I/O area, mapped at `io::BASE` by the host.
pub(crate) struct IoArea(());

/// The I/O area, when running under edgevm with a request in it.
pub(crate) fn area() -> Option<IoArea> {
    if std::env::var_os("EDGEVM_IO").as_deref() != Some(std::ffi::OsStr::new("1")) {
        return None;
    }
    let h = BASE as usize as *const IoHeader;
    // SAFETY: EDGEVM_IO=1 means the host mapped the I/O area at BASE (user RW).
    let ok = unsafe { (*h).magic == MAGIC && (*h).version == VERSION };
    ok.then_some(IoArea(()))
}

impl AreaRead for IoArea {
    type Error = Infallible;
    fn read_u32(&self, addr: u64) -> Result<u32, Infallible> {
        // SAFETY: the header functions only pass addresses of the area's header words.
        Ok(unsafe { (addr as usize as *const u32).read() })
    }
    fn read_entry(&self, addr: u64) -> Result<RequestHeader, Infallible> {
        // SAFETY: addresses of table entries below the table's capacity.
        Ok(unsafe { (addr as usize as *const RequestHeader).read() })
    }
    fn with_bytes<R>(
        &self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Infallible> {
        // SAFETY: entries written by the host or by append() point at `len` valid bytes.
        Ok(f(unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) }))
    }
}

impl Area for IoArea {
    fn write_u32(&mut self, addr: u64, v: u32) -> Result<(), Infallible> {
        // SAFETY: as read_u32.
        unsafe { (addr as usize as *mut u32).write(v) };
        Ok(())
    }
    fn write_entry(&mut self, addr: u64, e: &RequestHeader) -> Result<(), Infallible> {
        // SAFETY: as read_entry.
        unsafe { (addr as usize as *mut RequestHeader).write(*e) };
        Ok(())
    }
    fn write_cstr(&mut self, addr: u64, b: &[u8]) -> Result<(), Infallible> {
        let dst = addr as usize as *mut u8;
        // SAFETY: append() checked that `len + 1` bytes fit the blob at `addr`.
        unsafe {
            core::ptr::copy_nonoverlapping(b.as_ptr(), dst, b.len());
            *dst.add(b.len()) = 0;
        }
        Ok(())
    }
}

/// Append: the field index; None when the hypercall must decide (invalid field, table or
/// blob full).
pub(crate) fn append(a: &mut IoArea, w: Where, f: &[u8]) -> Option<u32> {
    headers::append(a, w, f).ok()
}

/// Set (or unset, without a colon): the field index; None when the hypercall must decide.
pub(crate) fn set(a: &mut IoArea, w: Where, f: &[u8]) -> Option<u32> {
    if f.len() > headers::MAX_FIELD
        || f.contains(&b':')
            && (headers::validate_field(f).is_err() || headers::count(a, w) >= w.table().max)
    {
        // Nothing is removed before the host reports the error.
        return None;
    }
    headers::set(a, w, f).ok()
}

/// Whether the fast path answers `sys_http_find` for this key (else the host refuses it).
pub(crate) fn valid_key(key: &[u8]) -> bool {
    headers::validate_key(key).is_ok()
}

/// The whole first field with this key.
pub(crate) fn find(a: &IoArea, w: Where, key: &[u8]) -> Option<Vec<u8>> {
    let e = headers::find(a, w, key)?;
    a.with_bytes(e.field.addr(), e.field_len as usize, <[u8]>::to_vec)
        .ok()
}
