//! The configuration's routes (`edgevm_config::Route`, issue 14 item 7): a request whose path
//! starts with a route's prefix (and whose method and host match, when the route names them)
//! goes to the route's program with the route's `url` (the request target when absent) and
//! `arg`; a chain runs first, each step's answer POSTed into the next, the special first step
//! `fetch` getting a path of this server in-process (no TCP) or an http(s) URL under the route
//! program's network policy (`outgoing::fetch_for_chain`). A step answering with the route's
//! `error_threshold` or above ends the chain with that answer.

use super::*;
use crate::limits;
use crate::logtext::client_text;
use edgevm_config::{Route, FETCH_STEP};
use edgevm_runtime::{GuestRequest, GuestResponse, ProgramHost, ServeError};
use hyper::body::Incoming;
use hyper::header;
use hyper::Request;
use std::sync::Arc;
use tracing::warn;

/// The first route `req` takes.
pub(super) fn find(shared: &Shared, req: &Request<Incoming>) -> Option<Route> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let (method, path) = (req.method().as_str(), req.uri().path());
    shared
        .opts
        .routes
        .iter()
        .find(|r| r.matches(method, host, path))
        .cloned()
}

/// Serve `req` through `route` (its chain, then its program).
pub(super) async fn run_route(
    shared: &Shared,
    route: &Route,
    req: Request<Incoming>,
    id: RequestId,
) -> Outcome {
    let target = request_target(&req).to_owned();
    let (parts, body) = req.into_parts();
    let opts = &shared.opts;
    let (body, _lease) = match limits::read_body(
        body,
        opts.max_body_bytes,
        opts.body_timeout,
        &opts.body_memory,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            crate::client_warn!(program = %client_text(&route.program), "{e}");
            return body_error(e).into();
        }
    };
    let content_type = content_type_of(&parts.headers);
    // The route's arg; without one, a trusted front end's X-Edgevm-Arg.
    let (given, headers) = take_arg(&shared.opts, &parts);
    let url = route.url.clone().unwrap_or(target);
    let mut cur = GuestRequest {
        method: parts.method.as_str().to_owned(),
        url: url.clone(),
        arg: if route.arg.is_empty() {
            given
        } else {
            route.arg.clone()
        },
        headers,
        content_type,
        body: body.into(),
        body_in: None,
        warmup: false,
        self_depth: 0,
    };
    match run_chain(&shared.host, &opts.routes, route, &mut cur).await {
        // A step answered with the error threshold or above: the chain ends with its answer.
        Ok(Some(r)) => Outcome {
            exits: r.exits,
            answer: guest_answer(r),
            program: Some(route.program.clone()),
            error: None,
        },
        Ok(None) => {
            cur.url = url;
            serve_guest(shared, &route.program, cur, id).await
        }
        Err(ChainFailure { step, name, error }) => {
            warn!(
                program = %route.program,
                "chain step {step} ({name}) failed: {error} (request id {id})"
            );
            let name = if name == FETCH_STEP {
                route.program.as_str()
            } else {
                name.as_str()
            };
            Outcome {
                answer: error_answer(shared.opts.error_details, name, &error, id),
                program: Some(route.program.clone()),
                error: Some(error),
                exits: None,
            }
        }
    }
}

/// A chain step that failed: its number (from 1), its program (or `fetch`) and why.
pub(crate) struct ChainFailure {
    pub step: usize,
    pub name: String,
    pub error: ServeError,
}

/// Run `route`'s chain on `cur`: each step's answer is POSTed into the next (`cur` becomes
/// the last step's answer, as a request). `Some(answer)` when a step answered with the route's
/// `error_threshold` or above (the chain ends with that answer), `None` when every step ran.
/// Shared by clients' requests and self-requests (the `url` of `cur` is the route's).
pub(crate) async fn run_chain(
    host: &Arc<dyn ProgramHost>,
    routes: &[Route],
    route: &Route,
    cur: &mut GuestRequest,
) -> Result<Option<GuestResponse>, ChainFailure> {
    let url = cur.url.clone();
    for (i, step) in route.chain.iter().enumerate() {
        let answer = if step.program == FETCH_STEP {
            let path = step.url.clone().unwrap_or_default();
            if path.starts_with('/') {
                fetch_in_process(host, routes, &path, &cur.headers, cur.self_depth).await
            } else {
                let r = crate::outgoing::fetch_for_chain(&route.program, &path, cur.self_depth);
                Ok(r.await)
            }
        } else {
            let r = GuestRequest {
                url: step.url.clone().unwrap_or_else(|| url.clone()),
                arg: step.arg.clone(),
                ..cur.clone()
            };
            host.serve(&step.program, r).await
        };
        // A streamed answer is collected: the next step gets it whole.
        let answer = match answer {
            Ok(r) => {
                r.collected(edgevm_runtime::request_vm::MAX_RESPONSE_BODY)
                    .await
            }
            err => err,
        };
        match answer {
            Ok(r) if r.status >= route.error_threshold => {
                warn!(
                    program = %route.program,
                    "chain step {} ({}) answered {}: the chain ends with its answer",
                    i + 1,
                    step.program,
                    r.status
                );
                return Ok(Some(r));
            }
            // The step's answer is POSTed into the next.
            Ok(r) => post_into_next(cur, r),
            Err(error) => {
                return Err(ChainFailure {
                    step: i + 1,
                    name: step.program.clone(),
                    error,
                })
            }
        }
    }
    Ok(None)
}

/// A chain's `fetch` step: GET `path` of this server in-process: the route it takes (its
/// program with its url and arg; a route's own chain is not run, so fetches never nest) or
/// `/<program>/...`.
async fn fetch_in_process(
    host: &Arc<dyn ProgramHost>,
    routes: &[Route],
    path: &str,
    headers: &[(String, String)],
    depth: u32,
) -> Result<GuestResponse, ServeError> {
    let host_header = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str());
    let only_path = path.split('?').next().unwrap_or(path);
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case("content-type") && !k.eq_ignore_ascii_case("content-length")
        })
        .cloned()
        .collect();
    let mut req = GuestRequest {
        method: "GET".into(),
        url: path.to_owned(),
        headers,
        // Counted as a self-request (the server's self-request depth limit).
        self_depth: depth + 1,
        ..Default::default()
    };
    if let Some(r) = routes
        .iter()
        .find(|r| r.matches("GET", host_header, only_path))
    {
        req.url = r.url.clone().unwrap_or(req.url);
        req.arg = r.arg.clone();
        return host.serve(&r.program, req).await;
    }
    let segment = only_path
        .strip_prefix('/')
        .map(|p| p.split('/').next().unwrap_or(""))
        .unwrap_or("");
    if segment.is_empty() || RESERVED_SEGMENTS.contains(&segment) {
        return Err(ServeError::ProgramNotFound(segment.to_owned()));
    }
    host.serve(segment, req).await
}

/// A chain step's answer becomes the next step's request: a POST of its body and type.
fn post_into_next(cur: &mut GuestRequest, r: GuestResponse) {
    cur.method = "POST".into();
    cur.content_type = r.content_type;
    cur.body = r.body;
    cur.headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case("content-type") && !k.eq_ignore_ascii_case("content-length")
    });
    cur.headers
        .push(("content-type".into(), cur.content_type.clone()));
    cur.headers
        .push(("content-length".into(), cur.body.len().to_string()));
}

/// The request's Content-Type ("" without one).
fn content_type_of(headers: &hyper::HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}
