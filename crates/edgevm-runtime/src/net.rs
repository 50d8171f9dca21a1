//! Outgoing requests of programs (`sys_fetch`): what the runtime hands to whoever can make
//! them. The runtime knows nothing of HTTP: the server gives each program a [`Fetcher`]
//! (edgevm-server's `outgoing` module: HTTP(S) with the program's [`NetPolicy`], and
//! self-requests through its own router), and the guest side (`fetch_calls.rs`) reads the
//! call's arguments from guest memory and writes the answer back.
//!
//! Where the call runs: a fetch may take seconds, so it is never made on an HTTP worker. A
//! request that calls `sys_fetch` during its time slice on the worker is preempted at the call
//! (as a sleeping system call is) and the call is made where the request resumes, on a
//! blocking thread (see docs/DESIGN.md, "Outgoing fetch").

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

pub use edgevm_netpolicy::{NetPolicy, NetRule, Refused};

/// Largest response body `sys_fetch` hands to a program (the reference's 256 MB).
pub const MAX_FETCH_BODY: u64 = 256 << 20;
/// Longest URL `sys_fetch` accepts.
pub const MAX_FETCH_URL: u64 = 8192;
/// Largest POST body `sys_fetch` sends.
pub const MAX_FETCH_POST: u64 = 64 << 20;
/// Connect timeout (the reference's 5 s).
pub const FETCH_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Time for the whole exchange after connecting (the reference's 8 s read timeout).
pub const FETCH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);
/// Redirects followed at most with `follow_location`.
pub const MAX_REDIRECTS: u32 = 10;

/// One outgoing request of a program.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The program making it (for log lines and statistics).
    pub program: String,
    /// `http://`, `https://` URL, or a path (`/prog/x`): a self-request.
    pub url: String,
    /// GET, POST, ...
    pub method: String,
    /// Request header fields, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Body (POST and other methods).
    pub body: Option<Vec<u8>>,
    /// Follow redirects (each hop is checked against the policy again).
    pub follow_location: bool,
    /// Verify the TLS certificate and host name (false: `dont_verify_host`).
    pub verify_tls: bool,
    /// Largest body accepted.
    pub max_body: u64,
    /// The answer must be complete by then.
    pub deadline: Instant,
    /// Self-request depth of the request making it (0: a client's request).
    pub depth: u32,
    /// Where the program may connect.
    pub policy: Arc<NetPolicy>,
}

/// The answer to a [`FetchRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchResponse {
    /// HTTP status.
    pub status: u16,
    /// Content-Type ("" if none).
    pub content_type: String,
    /// Response header fields, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Why a fetch failed: the text goes to the program's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError(pub String);

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FetchError {}

/// Makes the outgoing requests of programs. Blocking: the runtime calls it only on a thread
/// that may block (never an HTTP worker).
pub trait Fetcher: Send + Sync + 'static {
    /// Make `req` (honouring its policy and deadline) and return the answer.
    fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, FetchError>;
}

/// A program's network access: its policy and who makes its requests.
#[derive(Clone)]
pub struct NetAccess {
    /// Where it may connect.
    pub policy: Arc<NetPolicy>,
    /// Makes `sys_fetch` requests; None: `sys_fetch` fails with a log line.
    pub fetcher: Option<Arc<dyn Fetcher>>,
    /// The program's `sys_fetch` counters (its [`crate::settings::Stats`] share them).
    pub counters: Arc<FetchCounters>,
}

impl Default for NetAccess {
    fn default() -> Self {
        NetAccess {
            policy: Arc::new(NetPolicy::public_only()),
            fetcher: None,
            counters: Arc::default(),
        }
    }
}

/// What a program's `sys_fetch` calls did (requests, boot and storage VM together).
#[derive(Debug, Default)]
pub struct FetchCounters {
    /// Fetches answered (any status), self-requests included.
    pub fetches: std::sync::atomic::AtomicU64,
    /// Fetches that failed (refused by the policy or the limits, bad arguments, network
    /// errors, timeouts): `sys_fetch` returned -1.
    pub failures: std::sync::atomic::AtomicU64,
    /// Response body bytes received by answered fetches.
    pub bytes: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for NetAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetAccess")
            .field("policy", &self.policy)
            .field("fetcher", &self.fetcher.is_some())
            .finish()
    }
}
