//! Outgoing requests of programs (`sys_fetch`, edgevm-runtime's [`Fetcher`]):
//!
//! * `http://` and `https://` URLs with ureq, every connection (redirects included) checked
//!   against the program's [`NetPolicy`] *after* DNS resolution, in the resolver: a name that
//!   resolves to a loopback or private address is refused like the address itself;
//! * a path is a **self-request**: served in-process by edgevm's own router (no TCP) as a
//!   client's request would be — the first configured route it takes (its program, url, arg
//!   and chain), else `/<program>/...` — at most [`MAX_SELF_REQUESTS`] at once server-wide and
//!   [`MAX_SELF_DEPTH`] deep (a program fetching itself cannot recurse forever).
//!
//! The runtime calls [`Outgoing::fetch`] only on threads that may block (never an HTTP worker):
//! see docs/DESIGN.md, "Outgoing fetch". [`Outgoing::self_request`] (blocking) and
//! [`Outgoing::self_request_async`] are the entry points for other in-process callers (a
//! chain's `fetch` step).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use edgevm_config::Route;
use edgevm_runtime::net::{
    FetchError, FetchRequest, FetchResponse, Fetcher, NetPolicy, FETCH_CONNECT_TIMEOUT,
    MAX_REDIRECTS,
};
use edgevm_runtime::{GuestRequest, GuestResponse, ProgramHost, ServeError};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// Self-requests in flight at once, server-wide (the reference's `max_concurrent_requests`
/// default); more fail at once.
pub const MAX_SELF_REQUESTS: usize = 50;
/// How deep self-requests may nest (a request that fetches itself that fetches itself ...).
pub const MAX_SELF_DEPTH: u32 = 4;

/// Makes the outgoing requests of every program of the server.
pub struct Outgoing {
    host: OnceLock<Weak<dyn ProgramHost>>,
    routes: OnceLock<Arc<Vec<Route>>>,
    /// Each program's network policy (for fetches made on its behalf by a chain's `fetch`).
    policies: std::sync::Mutex<std::collections::HashMap<String, Arc<NetPolicy>>>,
    handle: OnceLock<tokio::runtime::Handle>,
    self_in_flight: AtomicUsize,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing").finish_non_exhaustive()
    }
}

/// The server's one [`Outgoing`].
pub fn outgoing() -> Arc<Outgoing> {
    static O: OnceLock<Arc<Outgoing>> = OnceLock::new();
    O.get_or_init(|| {
        Arc::new(Outgoing {
            host: OnceLock::new(),
            routes: OnceLock::new(),
            policies: Default::default(),
            handle: OnceLock::new(),
            self_in_flight: AtomicUsize::new(0),
        })
    })
    .clone()
}

/// Give self-requests the router they go to (the programs being served). Without it, a
/// self-request fails with "self-requests are not available".
pub fn attach_host(host: &Arc<dyn ProgramHost>) {
    let _ = outgoing().host.set(Arc::downgrade(host));
}

/// Give self-requests the configuration's routes (the server's, set once when it starts).
pub fn attach_routes(routes: Arc<Vec<Route>>) {
    let _ = outgoing().routes.set(routes);
}

/// Remember `program`'s network policy (its fetches through a route's chain use it).
pub fn remember_policy(program: &str, policy: Arc<NetPolicy>) {
    outgoing()
        .policies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(program.to_owned(), policy);
}

/// A chain's `fetch` step with an `http(s)://` URL, made for `program` under its network
/// policy (public addresses only for a program the server does not know). GET, no client
/// header passed on, redirects followed, certificates checked; the answer as the program's
/// would be (a failure: 502 with the reason). Runs on a blocking thread.
pub async fn fetch_for_chain(program: &str, url: &str, depth: u32) -> GuestResponse {
    let o = outgoing();
    let policy = o
        .policies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(program)
        .cloned()
        .unwrap_or_else(|| Arc::new(NetPolicy::public_only()));
    let req = FetchRequest {
        program: program.to_owned(),
        url: url.to_owned(),
        method: "GET".into(),
        headers: Vec::new(),
        body: None,
        follow_location: true,
        verify_tls: true,
        max_body: edgevm_runtime::net::MAX_FETCH_BODY,
        deadline: Instant::now() + fetch_budget(),
        depth,
        policy,
    };
    let (p, u) = (program.to_owned(), url.to_owned());
    // Counted as the program's own fetches are (stats and metrics: fetches, fetch_failures,
    // fetch_bytes).
    let counters = o
        .host
        .get()
        .and_then(|h| h.upgrade())
        .and_then(|h| h.fetch_counters(program));
    let r = tokio::task::spawn_blocking(move || o.http(req)).await;
    if let Some(c) = counters {
        match &r {
            Ok(Ok(f)) => {
                c.fetches.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(f.body.len() as u64, Ordering::Relaxed);
            }
            _ => {
                c.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    match r {
        Ok(Ok(f)) => GuestResponse {
            status: f.status,
            content_type: f.content_type,
            headers: Vec::new(),
            body: f.body,
            ..Default::default()
        },
        Ok(Err(e)) => {
            tracing::warn!(program = %p, "chain fetch of {u} failed: {e}");
            GuestResponse {
                status: 502,
                content_type: "text/plain".into(),
                body: format!("fetch of {u} failed: {e}\n").into_bytes(),
                ..Default::default()
            }
        }
        Err(_) => GuestResponse {
            status: 502,
            content_type: "text/plain".into(),
            body: b"fetch failed: internal error\n".to_vec(),
            ..Default::default()
        },
    }
}

/// Give self-requests the runtime to run on when made from a thread outside it (the storage
/// VM's task thread). Called by the server when its runtime starts.
pub fn attach_runtime(handle: tokio::runtime::Handle) {
    let _ = outgoing().handle.set(handle);
}

/// Decrements the self-request count when dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Outgoing {
    /// A self-request: `method url` (a path, `/program/...`) served by the router in-process,
    /// as a client's request would be. `depth` is the self-request depth of the request making
    /// it (0: a client's). Blocking: call it from a thread that may block (never from inside
    /// the async runtime: use [`Outgoing::self_request_async`] there).
    pub fn self_request(
        &self,
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        depth: u32,
        deadline: Instant,
    ) -> Result<FetchResponse, FetchError> {
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.handle.get().cloned())
            .ok_or_else(|| FetchError("self-requests are not available here".into()))?;
        handle.block_on(self.self_request_async(method, url, headers, body, depth, deadline))
    }

    /// [`Outgoing::self_request`] for async callers on the server's runtime (a chain's `fetch`
    /// step): the same limits (depth, server-wide count, `deadline`), awaited instead of
    /// blocking.
    pub async fn self_request_async(
        &self,
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        depth: u32,
        deadline: Instant,
    ) -> Result<FetchResponse, FetchError> {
        if depth >= MAX_SELF_DEPTH {
            return Err(FetchError(format!(
                "self-request {url} refused: self-requests nest at most {MAX_SELF_DEPTH} deep"
            )));
        }
        let host = self
            .host
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| FetchError("self-requests are not available here".into()))?;
        let path = url.split(['?', '#']).next().unwrap_or("");
        let host_header = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.as_str());
        let route = self
            .routes
            .get()
            .and_then(|rs| rs.iter().find(|r| r.matches(method, host_header, path)))
            .cloned();
        let program = match &route {
            Some(r) => r.program.as_str(),
            None => path
                .strip_prefix('/')
                .and_then(|p| p.split('/').next())
                .unwrap_or(""),
        };
        if program.is_empty() || crate::http::RESERVED_SEGMENTS.contains(&program) {
            return Ok(FetchResponse {
                status: 404,
                content_type: "text/plain".into(),
                headers: Vec::new(),
                body: b"not found".to_vec(),
            });
        }
        if self.self_in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_SELF_REQUESTS {
            self.self_in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(FetchError(format!(
                "self-request {url} refused: {MAX_SELF_REQUESTS} self-requests are in flight already"
            )));
        }
        let _count = InFlight(&self.self_in_flight);
        let content_type = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut req = GuestRequest {
            method: method.to_string(),
            url: route
                .as_ref()
                .and_then(|r| r.url.clone())
                .unwrap_or_else(|| url.to_string()),
            arg: route.as_ref().map(|r| r.arg.clone()).unwrap_or_default(),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            content_type,
            body,
            body_in: None,
            warmup: false,
            self_depth: depth + 1,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let serve = async {
            if let Some(route) = route.as_ref().filter(|r| !r.chain.is_empty()) {
                let routes = self.routes.get().cloned().unwrap_or_default();
                let url = req.url.clone();
                match crate::http::routes::run_chain(&host, &routes, route, &mut req).await {
                    Ok(Some(answer)) => return Ok(answer),
                    Ok(None) => req.url = url,
                    Err(f) => {
                        tracing::warn!(
                            program = %route.program,
                            "self-request {url}: chain step {} ({}) failed: {}",
                            f.step,
                            f.name,
                            f.error
                        );
                        return Err(f.error);
                    }
                }
            }
            // A streamed answer is collected: the fetching program gets it whole.
            let limit = edgevm_runtime::request_vm::MAX_RESPONSE_BODY;
            match host.serve(program, req).await {
                Ok(resp) => resp.collected(limit).await,
                Err(e) => Err(e),
            }
        };
        let r = tokio::time::timeout(left, serve).await;
        match r {
            Err(_) => Err(FetchError(format!(
                "self-request {url} timed out after {left:?}"
            ))),
            Ok(Ok(resp)) => Ok(FetchResponse {
                status: resp.status,
                content_type: resp.content_type,
                headers: resp.headers,
                body: resp.body,
            }),
            Ok(Err(e)) => {
                let status = crate::http::error_status(&e).as_u16();
                let body = match &e {
                    ServeError::ProgramNotFound(_) => "not found".to_string(),
                    _ => format!("{status} {}", e),
                };
                Ok(FetchResponse {
                    status,
                    content_type: "text/plain".into(),
                    headers: Vec::new(),
                    body: body.into_bytes(),
                })
            }
        }
    }

    fn http(&self, req: FetchRequest) -> Result<FetchResponse, FetchError> {
        let left = req.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FetchError("no time left".into()));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(!req.verify_tls)
            .root_certs(trusted_roots())
            .build();
        let config = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .timeout_connect(Some(FETCH_CONNECT_TIMEOUT.min(left)))
            .timeout_global(Some(left))
            .max_redirects(if req.follow_location {
                MAX_REDIRECTS
            } else {
                0
            })
            .max_redirects_will_error(false)
            .tls_config(tls)
            .user_agent("edgevm")
            .build();
        let resolver = PolicyResolver {
            policy: req.policy.clone(),
            program: req.program.clone(),
        };
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
        let mut b = ureq::http::Request::builder()
            .method(req.method.as_str())
            .uri(req.url.as_str());
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let shown = |e: ureq::Error| -> FetchError {
            FetchError(match e {
                ureq::Error::Timeout(t) => format!("timed out ({t})"),
                ureq::Error::BodyExceedsLimit(n) => {
                    format!("response body larger than {n} bytes")
                }
                ureq::Error::Io(io) => io.to_string(),
                e => e.to_string(),
            })
        };
        let resp = match req.body {
            Some(body) => {
                let r = b
                    .body(body)
                    .map_err(|e| FetchError(format!("bad request: {e}")))?;
                agent.run(r)
            }
            None => {
                let r = b
                    .body(())
                    .map_err(|e| FetchError(format!("bad request: {e}")))?;
                agent.run(r)
            }
        };
        let mut resp = resp.map_err(shown)?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let content_type = headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let body = resp
            .body_mut()
            .with_config()
            .limit(req.max_body)
            .read_to_vec()
            .map_err(shown)?;
        Ok(FetchResponse {
            status,
            content_type,
            headers,
            body,
        })
    }
}

impl Fetcher for Outgoing {
    fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, FetchError> {
        if req.url.starts_with('/') {
            let body = req.body.unwrap_or_default();
            return self.self_request(
                &req.method,
                &req.url,
                req.headers,
                body,
                req.depth,
                req.deadline,
            );
        }
        self.http(req)
    }
}

/// Resolves like ureq's default resolver, then keeps only the addresses the program's policy
/// allows: the check is on the address actually connected to, for every hop.
#[derive(Debug)]
struct PolicyResolver {
    policy: Arc<NetPolicy>,
    program: String,
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("");
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = bare.parse::<IpAddr>().is_err().then_some(bare);
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        if let Some(rule) = name.and_then(|n| self.policy.name_denied(n, port)) {
            let why = format!("network policy refuses {bare}:{port}: listed in deny_net ({rule})");
            tracing::warn!(program = %self.program, "sys_fetch refused: {why}");
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                why,
            )));
        }
        let all = DefaultResolver::default().resolve(uri, config, timeout)?;
        let mut out = self.empty();
        let mut refused = None;
        for a in all.iter() {
            let a: SocketAddr = *a;
            match self.policy.check(name, a) {
                Ok(()) => out.push(a),
                Err(r) => refused = Some(r),
            }
        }
        if out.is_empty() {
            let why = refused.map_or_else(|| format!("{bare}: no address"), |r| r.to_string());
            tracing::warn!(program = %self.program, "sys_fetch refused: {why}");
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                why,
            )));
        }
        Ok(out)
    }
}

/// A program's policy: the server's lists plus the program's (group's included).
pub fn program_policy(
    server_allow: &[String],
    server_deny: &[String],
    allow: &[String],
    deny: &[String],
) -> Result<NetPolicy, String> {
    NetPolicy::parse(server_allow, server_deny)?.with(allow, deny)
}

/// How long a fetch may take at most.
pub fn fetch_budget() -> Duration {
    FETCH_CONNECT_TIMEOUT + edgevm_runtime::net::FETCH_READ_TIMEOUT
}

/// Where the system's trusted certificate authorities are on Debian (and derivatives); the
/// `SSL_CERT_FILE` environment variable names another bundle, as for curl and OpenSSL.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The authorities HTTPS fetches trust: the system's bundle (so a private authority added
/// with `update-ca-certificates` is trusted, as by curl, which the reference uses), or
/// Mozilla's list built into edgevm when there is no readable bundle (logged once).
fn trusted_roots() -> ureq::tls::RootCerts {
    static ROOTS: OnceLock<ureq::tls::RootCerts> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let path = std::env::var_os("SSL_CERT_FILE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
            match load_bundle(&path) {
                Ok(certs) => {
                    tracing::debug!(
                        "HTTPS fetches trust the {} authorities of {}",
                        certs.len(),
                        path.display()
                    );
                    ureq::tls::RootCerts::new_with_certs(&certs)
                }
                Err(why) => {
                    tracing::info!(
                        "HTTPS fetches trust Mozilla's authorities built into edgevm ({}: {why})",
                        path.display()
                    );
                    ureq::tls::RootCerts::WebPki
                }
            }
        })
        .clone()
}

/// The certificates of a PEM bundle (at least one).
fn load_bundle(path: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}
