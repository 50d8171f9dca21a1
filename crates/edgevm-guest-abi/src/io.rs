//! The host<->guest I/O area: where the host puts each request and where the program builds
//! its response headers, so that a plain request costs one VM exit (docs/DESIGN.md).
//!
//! ```text
//! BASE + 0x0000  struct edgevm_io (IoHeader): magic, version, counts, used bytes, flags
//! BASE + 0x0040  per-vCPU data at %gs: u32 vcpuid, u32 vcpureqid
//! BASE + 0x0080  where an event-loop program resumes: RSP, R12, R13, RIP (4 x u64)
//! BASE + 0x0100  per-vCPU data of the extra vCPUs (multiprocess): 8 bytes per vCPU id
//! BASE + 0x1000  request header table:  struct kvm_request_header[REQ_MAX]
//! BASE + 0x3000  response header table: struct kvm_request_header[RESP_MAX]
//! BASE + 0x3800  struct kvm_request for set_backend_request handlers
//! BASE + 0x4000  request string blob  (REQ_BLOB_SIZE)
//! RESP_BLOB      response string blob (to the end of the area)
//! ```

/// Guest address of the area (identity-mapped, user read/write).
pub const BASE: u64 = 0x20000;
/// Size of the area (it ends where the page directories begin).
pub const SIZE: u64 = 0x100000 - BASE;
/// `edgevm_io.magic`: "EVIO".
pub const MAGIC: u32 = 0x4F49_5645;
/// `edgevm_io.version`.
pub const VERSION: u32 = 1;
/// `edgevm_io.flags` bit 0: the request is a warmup request.
pub const FLAG_WARMUP: u32 = 1;
/// Per-vCPU data at %gs (the GS base points here): `u32 vcpuid` (0: the VM's first vCPU),
/// `u32 vcpureqid` (the request VM's index in its program's pool).
pub const VCPU_INFO: u64 = BASE + 0x40;
/// The same data for the extra vCPUs of `multiprocess` (SMP): vCPU `k` (1..=16) has its GS
/// base at `SMP_VCPU_INFO + 8 * k`.
pub const SMP_VCPU_INFO: u64 = BASE + 0x100;
/// The paused point of an event-loop program (`wait_for_requests_paused`): RSP, R12, R13 and
/// RIP, read by the host's resume trampoline (written once into the frozen image).
pub const PAUSED_RESUME: u64 = BASE + 0x80;
/// Request header table.
pub const REQ_TABLE: u64 = BASE + 0x1000;
/// Maximum request headers.
pub const REQ_MAX: u32 = 512;
/// Response header table.
pub const RESP_TABLE: u64 = BASE + 0x3000;
/// Maximum response headers.
pub const RESP_MAX: u32 = 128;
/// `struct kvm_request`.
pub const REQUEST_STRUCT: u64 = BASE + 0x3800;
/// Request strings.
pub const REQ_BLOB: u64 = BASE + 0x4000;
/// Size of the request strings blob.
pub const REQ_BLOB_SIZE: u64 = 0x40000;
/// Response strings.
pub const RESP_BLOB: u64 = REQ_BLOB + REQ_BLOB_SIZE;
/// Size of the response strings blob.
pub const RESP_BLOB_SIZE: u64 = BASE + SIZE - RESP_BLOB;

/// Every layout constant with its `kvm_api.h` macro (checked against the header by a test).
pub const HEADER_MACROS: &[(&str, u64)] = &[
    ("EDGEVM_IO_BASE", BASE),
    ("EDGEVM_IO_REQ_TABLE", REQ_TABLE),
    ("EDGEVM_IO_REQ_MAX", REQ_MAX as u64),
    ("EDGEVM_IO_RESP_TABLE", RESP_TABLE),
    ("EDGEVM_IO_RESP_MAX", RESP_MAX as u64),
    ("EDGEVM_IO_REQUEST", REQUEST_STRUCT),
    ("EDGEVM_IO_REQ_BLOB", REQ_BLOB),
    ("EDGEVM_IO_REQ_BLOB_SIZE", REQ_BLOB_SIZE),
    ("EDGEVM_IO_RESP_BLOB", RESP_BLOB),
    ("EDGEVM_IO_RESP_BLOB_SIZE", RESP_BLOB_SIZE),
    ("EDGEVM_IO_MAGIC", MAGIC as u64),
    ("EDGEVM_IO_FIRST_INDEX", crate::headers::FIRST_INDEX as u64),
    ("KVM_REQUEST_INFO_WARMUP", FLAG_WARMUP as u64),
];

/// The `where` argument of the header calls: which header set.
///
/// `where` is a C `int` (only the low 32 bits of the register count). As in the reference,
/// whose programs always run as a backend: REQ and BEREQ (0, and Varnish's HDR_BEREQ 4) select
/// the request headers, RESP and BERESP (1, and HDR_BERESP 5) the response headers; any other
/// value names a header set that is not available ([`Where::from_arg`] gives None: the host
/// fails the request, the in-guest fast paths leave it to the host). The same on both paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// REQ / BEREQ.
    Req,
    /// RESP / BERESP.
    Resp,
}

impl Where {
    /// Decode a `where` argument (a C `int` in a 64-bit register).
    pub fn from_arg(v: u64) -> Option<Where> {
        match v as u32 as i32 {
            0 | 4 => Some(Where::Req),
            1 | 5 => Some(Where::Resp),
            _ => None,
        }
    }

    /// The header set's table, capacity and string blob.
    pub fn table(self) -> Table {
        match self {
            Where::Req => Table {
                entries: REQ_TABLE,
                max: REQ_MAX,
                blob: REQ_BLOB,
                blob_size: REQ_BLOB_SIZE,
            },
            Where::Resp => Table {
                entries: RESP_TABLE,
                max: RESP_MAX,
                blob: RESP_BLOB,
                blob_size: RESP_BLOB_SIZE,
            },
        }
    }
}

/// Where one header set lives in the area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Guest address of `struct kvm_request_header[max]`.
    pub entries: u64,
    /// Capacity of the table.
    pub max: u32,
    /// Guest address of the string blob.
    pub blob: u64,
    /// Size of the string blob.
    pub blob_size: u64,
}
