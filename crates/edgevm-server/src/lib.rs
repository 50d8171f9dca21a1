//! edgevm-server: the HTTP front end, configuration wiring, program fetch/cache and metrics.
//!
//! This crate is the only one that knows about HTTP. It turns each incoming HTTP request into a
//! [`edgevm_runtime::GuestRequest`], hands it to the runtime through
//! [`edgevm_runtime::ProgramHost`] and turns the answer back into an HTTP response.
//!
//! - [`http`]: the hyper-based HTTP/1 server ([`http::serve`], [`http::run_server`],
//!   [`http::HttpServer`]), routing (`/<program>/...`), error mapping, graceful shutdown, the
//!   [`http::AdminHandler`] hook for `/metrics` and `/_edgevm/...`, and a native
//!   "Hello World!" baseline server for benchmarks.
//! - [`listen`]: TCP or Unix-socket listening; [`drain`]: the drain state after SIGTERM.
//! - [`limits`]: what one client can hold: connections (503 beyond `max_connections`), header,
//!   idle and body timeouts.
//! - [`metrics`]: `/metrics` in the Prometheus text format (prometheus-client), every
//!   program's counters, gauges and histograms.
//! - [`logtext`]: client text in log lines (truncated, escaped) and rate-limited warnings
//!   about clients ([`client_warn!`]).
//! - [`capacity`]: what the configured programs need from the process's limits (open files,
//!   memory mappings), checked at start.
//! - [`strict`]: checks of a request head before routing (RFC 9112 strictness, dot segments).
//! - [`fetch`]: program delivery ([`fetch::obtain`]): reads `filename`, or downloads `uri`
//!   (http/https with `If-Modified-Since` and 304 → cached file, or `file://`), unpacks raw ELF
//!   or tar/tar.xz archives with a `*storage` entry, writes the cache files atomically and falls
//!   back to the cache on network failures.
//! - [`native`]: the native baselines of the benchmark: answers byte-identical to the bundled
//!   examples (hello, shared-memory counter, storage counter) without a VM.

pub mod capacity;
pub mod drain;
pub mod fetch;
pub mod http;
pub mod limits;
pub mod listen;
pub mod logtext;
pub mod metrics;
pub mod native;
pub mod outgoing;
pub mod programs;
pub mod strict;
