//! One request: routing by the first path segment, admin paths, the request id and arg header.

use super::*;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use tracing::{debug, info};

use crate::limits::{self};
use crate::listen::Peer;
use crate::logtext::client_text;

/// The service: route one request and produce its response.
pub(super) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let log = shared.opts.log_requests
        && tracing::enabled!(target: "edgevm::access", tracing::Level::INFO);
    let path = log.then(|| req.uri().path().to_owned());
    let id = RequestId::next();
    let outcome = route(&shared, req, id).await;
    let status = outcome.answer.status;
    if let Some(admin) = &shared.admin {
        admin.record(&RequestRecord {
            program: outcome.program.as_deref(),
            method: method.as_str(),
            status: status.as_u16(),
            elapsed: start.elapsed(),
            error: outcome.error.as_ref(),
            exits: outcome.exits,
        });
    }
    if let Some(path) = path {
        // Method and path are the client's: escaped (the program name is a configured one).
        info!(
            target: "edgevm::access",
            "{} {} program={} status={} time_ms={:.3} exits={} id={id}",
            client_text(method.as_str()),
            client_text(&path),
            outcome.program.as_deref().map_or("-".into(), |p| client_text(p).to_string()),
            status.as_u16(),
            start.elapsed().as_secs_f64() * 1e3,
            outcome.exits.map_or("-".into(), |e| e.to_string()),
        );
    }
    let mut answer = outcome.answer;
    // Draining: clients (load balancers) reconnect elsewhere.
    answer.close |= shared.opts.drain.is_draining();
    Ok(finish(
        answer,
        method == Method::HEAD,
        shared.opts.server_header,
    ))
}

/// Decide where a request goes and get its answer.
pub(super) async fn route(shared: &Shared, req: Request<Incoming>, id: RequestId) -> Outcome {
    if req.method() == Method::CONNECT {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported").into();
    }
    if let Err((status, why)) = crate::strict::check_head(&req, shared.opts.lenient_http) {
        crate::client_warn!(
            target = %client_text(request_target(&req)),
            "refused request: {why}"
        );
        let answer = Answer::text(status, why);
        return unread_body_answer(shared, answer, req.into_body()).into();
    }
    let path = req.uri().path();
    let Some(segment) = path
        .strip_prefix('/')
        .map(|p| p.split('/').next().unwrap_or(""))
    else {
        return Answer::text(StatusCode::NOT_FOUND, "not found").into();
    };
    if segment.is_empty() {
        return Answer::text(
            StatusCode::NOT_FOUND,
            "edgevm: no program given; request /<program>/...",
        )
        .into();
    }
    let reserved = RESERVED_SEGMENTS.contains(&segment);
    // With a separate admin listener, each listener serves only its own kind of path; the
    // health endpoint is on both (load balancers probe the address they send traffic to).
    let programs_only = shared.role == Role::Programs && path != HEALTH_PATH;
    if (reserved && programs_only) || (!reserved && shared.role == Role::Admin) {
        let nf = Answer::text(StatusCode::NOT_FOUND, "not found");
        return unread_body_answer(shared, nf, req.into_body()).into();
    }
    if reserved {
        return admin(shared, req).await.into();
    }
    if let Some(r) = super::routes::find(shared, &req) {
        let mut outcome = super::routes::run_route(shared, &r, req, id).await;
        outcome.program.get_or_insert_with(|| r.program.clone());
        return outcome;
    }
    let program = segment.to_owned();
    let mut outcome = run_program(shared, &program, req, id).await;
    outcome.program = Some(program);
    outcome
}

/// Answer a reserved path through the admin handler (404 without one). The handler decides
/// from the request head ([`AdminHandler::check`]) before any byte of the body is read, and
/// runs on a blocking thread: a live update boots a whole program.
pub(super) async fn admin(shared: &Shared, req: Request<Incoming>) -> Answer {
    let Some(handler) = shared.admin.clone() else {
        let nf = Answer::text(StatusCode::NOT_FOUND, "not found");
        return unread_body_answer(shared, nf, req.into_body());
    };
    let mut areq = AdminRequest {
        method: req.method().as_str().to_owned(),
        url: request_target(&req).to_owned(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: copy_headers(req.headers()),
        body: Vec::new(),
    };
    let limit = match handler.check(&areq) {
        AdminCheck::Answer(resp) => {
            return unread_body_answer(shared, guest_answer(resp), req.into_body())
        }
        AdminCheck::ReadBody(limit) => limit,
        AdminCheck::ReadNormalBody => shared.opts.max_body_bytes,
    };
    let opts = &shared.opts;
    let _lease =
        match limits::read_body(req.into_body(), limit, opts.body_timeout, &opts.body_memory).await
        {
            Ok((b, lease)) => {
                areq.body = Vec::from(b);
                lease
            }
            Err(e) => {
                crate::client_warn!(path = %client_text(&areq.path), "{e}");
                return body_error(e);
            }
        };
    match tokio::task::spawn_blocking(move || handler.handle(&areq)).await {
        Ok(Some(resp)) => guest_answer(resp),
        Ok(None) => Answer::text(StatusCode::NOT_FOUND, "not found"),
        Err(_) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, "admin handler failed"),
    }
}

/// An answer decided without reading the request body. If the client sent one, the
/// connection is closed after the answer; until then the body is read and thrown away (up to
/// the normal body limit, within the body timeout, nothing kept), so that a client still
/// sending it gets to read the answer instead of a connection reset.
pub(super) fn unread_body_answer(shared: &Shared, mut answer: Answer, body: Incoming) -> Answer {
    if !hyper::body::Body::is_end_stream(&body) {
        answer.close = true;
        let (max, timeout) = (shared.opts.max_body_bytes, shared.opts.body_timeout);
        tokio::spawn(limits::discard_body(body, max, timeout));
    }
    answer
}

/// The request target as the client sent it: path and query.
pub(super) fn request_target<B>(req: &Request<B>) -> &str {
    req.uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or_else(|| req.uri().path())
}

/// Request headers as (name, value) strings, in the order hyper keeps them: first appearance
/// of each name, repeated names grouped. Names are lower case; non-UTF-8 bytes are replaced.
pub(super) fn copy_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            let value = match v.to_str() {
                Ok(s) => s.to_owned(),
                Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            };
            (n.as_str().to_owned(), value)
        })
        .collect()
}

/// The request header a trusted front end passes a program's `arg` in.
pub const ARG_HEADER: &str = "x-edgevm-arg";

/// The program's `arg` and the headers it sees: the value of [`ARG_HEADER`] when the
/// connection comes from one of [`HttpOptions::trusted_frontends`] ("" otherwise), and the
/// request headers without [`ARG_HEADER`] (never passed on as a header, trusted or not).
pub(super) fn take_arg(
    opts: &HttpOptions,
    parts: &hyper::http::request::Parts,
) -> (String, Vec<(String, String)>) {
    let mut headers = copy_headers(&parts.headers);
    let given = headers.iter().any(|(n, _)| n == ARG_HEADER);
    if !given {
        return (String::new(), headers);
    }
    let trusted = parts
        .extensions
        .get::<Peer>()
        .is_some_and(|p| opts.trusted_frontends.iter().any(|t| p.trusted_by(t)));
    let arg = if trusted {
        headers
            .iter()
            .find(|(n, _)| n == ARG_HEADER)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    } else {
        debug!("X-Edgevm-Arg from a client not in trusted_frontends: ignored");
        String::new()
    };
    headers.retain(|(n, _)| n != ARG_HEADER);
    (arg, headers)
}
