//! What one HTTP client can hold on to, and for how long.
//!
//! The HTTP front end ([`crate::http`]) serves untrusted clients. Besides hyper's own limits on
//! the request head (size and number of headers, answered with 431) and the body size limit
//! (413), this module bounds the time and the connections a client can take:
//!
//! * **Connections**: at most [`crate::http::HttpOptions::max_connections`] are served at
//!   once. At the limit the kept-alive connection idle the longest (no request in progress or
//!   starting) is closed to admit a new one, so clients holding idle connections cannot lock
//!   others out. With none idle, the new connection is **refused**: it gets a `503 Service
//!   Unavailable` (`Connection: close`, `Retry-After: 1`) written without waiting and is
//!   closed at once. It is not queued: a queue would keep the client's socket open with no
//!   answer, which is exactly what an attacker holding connections wants. An optional
//!   per-address limit ([`crate::http::HttpOptions::max_connections_per_address`]) refuses
//!   the same way. [`raise_fd_limit`] lifts the process's open-file limit so that the limit,
//!   not the file descriptors, is what runs out.
//! * **Header timeout** ([`crate::http::HttpOptions::header_read_timeout`], slowloris): a new connection
//!   must deliver its first complete request head within it of being accepted, and on a
//!   kept-alive connection a request head must be complete within it of its first byte. The
//!   connection is closed otherwise (no response: hyper has no request to answer).
//! * **Idle timeout** ([`crate::http::HttpOptions::idle_timeout`]): a kept-alive connection with no request
//!   in progress, nothing arriving and nothing being written is closed after it. It also
//!   bounds a client that stops reading a response.
//! * **Body timeout** ([`crate::http::HttpOptions::body_timeout`]): the whole request body must arrive
//!   within it of the request head; otherwise 408 Request Timeout and the connection is
//!   closed. No VM is involved before the body is complete ([`read_body`]).
//! * **Body memory** ([`BodyBudget`]): the bodies buffered by all connections together stay
//!   within a server-wide budget; past it a body waits [`BUDGET_WAIT`], then gets 503.
//!
//! While a request is in progress (head received, response not yet handed to hyper) neither
//! the header nor the idle timeout runs: the program's own `max_request_time` bounds that.
//!
//! Mechanism: each connection's stream is wrapped in [`TrackedIo`] (notes when bytes move),
//! its service in [`TrackedService`] (notes when requests start and end), and its hyper
//! connection future runs under [`supervise`], which closes the connection when a deadline
//! computed from those notes passes. hyper's own `header_read_timeout` is not used: it also
//! starts right after each response, so it cannot tell a slow head from an idle keep-alive
//! connection.
//!
//! The notes are plain atomic stores: nothing wakes the supervisor when they change (three
//! wake-ups and a timer re-registration per request cost ~1-2 µs of CPU per request). It
//! sleeps until the current deadline but at most one *step* (the shortest timeout) at a time
//! and then looks again. That is never late: a deadline that arises after it went to sleep
//! (a request head starting, a request ending) lies at least one step after that moment, so
//! it is seen on waking and waited for exactly. A connection costs one timer wake-up per step
//! (10 s by default) at most.

mod activity;
mod body;
mod conns;
#[cfg(test)]
mod tests;

pub(crate) use activity::{supervise, Activity, Timeouts};
pub use activity::{TrackedIo, TrackedService};
pub use body::{discard_body, read_body, BodyBudget, BodyError, BodyLease, BUDGET_WAIT};
pub(crate) use conns::Admission;
pub use conns::{connections_for_fds, raise_fd_limit, FD_RESERVE};
