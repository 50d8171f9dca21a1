//! The HTTP/1 front end (hyper 1.x on tokio).
//!
//! Every request is routed by the first path segment of its URL: `/<program>` and anything
//! below it (`/<program>/a/b?x=1`) goes to the program named `<program>` through
//! [`ProgramHost::serve`]. The program sees the request target exactly as the client sent it
//! (path and query, Varnish `req.url`), the method (HEAD included), the headers and the whole
//! body. Paths whose first segment is `metrics` or `_edgevm` are reserved for an
//! [`AdminHandler`]; `/` itself answers 404 with a short hint.
//!
//! The server is HTTP/1 only, keeps connections alive, limits request headers
//! ([`HttpOptions::max_header_bytes`], answered by hyper with 431 and a closed connection) and
//! bodies ([`HttpOptions::max_body_bytes`], answered with 413 without reading the rest), bounds
//! connections and the time clients may take (see [`crate::limits`]), and shuts down
//! gracefully: it stops accepting, lets in-flight requests finish (up to
//! [`HttpOptions::shutdown_grace`]) and returns.

use std::sync::Arc;

use bytes::Bytes;
use edgevm_runtime::ProgramHost;
use http_body_util::Full;

mod answer;
mod handle;
mod hello;
mod options;
pub(crate) mod routes;
mod server;

pub use answer::error_status;
use answer::*;
pub use handle::ARG_HEADER;
use handle::*;
pub use hello::{run_static_hello, serve_static_hello, serve_static_hello_on};
pub use options::*;
pub use server::*;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeout_tests;

/// The response body type of every response this server produces: fully buffered, or a
/// program's streamed body.
type RespBody = http_body_util::Either<Full<Bytes>, answer::GuestBody>;

/// hyper's default read buffer limit (`8192 + 4096 * 100`); raised when headers may be larger.
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;
/// hyper's default limit on the number of request headers.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The health endpoint: an admin path also served on a programs-only listener.
pub const HEALTH_PATH: &str = "/_edgevm/health";

/// First path segments that never reach a program.
/// (The configuration refuses programs of these names: `edgevm check` and `serve` say so.)
pub const RESERVED_SEGMENTS: &[&str] = edgevm_config::RESERVED_PROGRAM_NAMES;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Programs and admin endpoints (no separate admin listener).
    All,
    /// Programs only: the public listener when there is an admin listener.
    Programs,
    /// Admin endpoints only.
    Admin,
}

/// State shared by all connections of one listener.
struct Shared {
    opts: HttpOptions,
    host: Arc<dyn ProgramHost>,
    admin: Option<Arc<dyn AdminHandler>>,
    role: Role,
}
