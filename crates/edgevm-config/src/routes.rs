//! The top-level `"routes"` list: requests matched by path prefix (and optionally method and
//! host) go to a program with a configured `url` and `arg`, optionally through a chain of
//! programs whose output is POSTed into the next (issue 14, item 7).
//!
//! ```json
//! "routes": [
//!   { "prefix": "/thumbs/", "program": "thumbnail", "arg": "{\"width\": 128}",
//!     "chain": [ { "program": "fetch", "url": "/images/cat.jpg" },
//!                { "program": "decode", "arg": "jpeg" } ],
//!     "error_threshold": 400, "method": ["GET", "HEAD"], "host": "img.example" }
//! ]
//! ```

use serde_json::{Map, Value};

/// The name of the top-level list.
pub const ROUTES_SECTION: &str = "routes";

/// The special first chain step that fetches `url`: a path of this server (served in-process)
/// or an `http(s)://` URL (fetched under the route program's network policy).
pub const FETCH_STEP: &str = "fetch";

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path prefix the request's path must start with.
    pub prefix: String,
    /// The program that answers.
    pub program: String,
    /// The URL the program receives (the request target when None).
    pub url: Option<String>,
    /// The program's `arg` ("" when not given).
    pub arg: String,
    /// Methods the route takes (any when empty), upper case.
    pub methods: Vec<String>,
    /// Host (without port, lower case) the route takes (any when None).
    pub host: Option<String>,
    /// Steps run before `program`, each one's output POSTed into the next.
    pub chain: Vec<ChainStep>,
    /// A step answering with this status or above ends the chain with its answer.
    pub error_threshold: u16,
}

/// One step of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStep {
    /// The program, or [`FETCH_STEP`].
    pub program: String,
    /// The URL it receives (for `fetch`: what is fetched).
    pub url: Option<String>,
    /// Its `arg`.
    pub arg: String,
}

impl Route {
    /// Whether a request (method, Host header, path) takes this route.
    pub fn matches(&self, method: &str, host: Option<&str>, path: &str) -> bool {
        if !path.starts_with(&self.prefix) {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        match &self.host {
            None => true,
            Some(want) => host
                .map(|h| {
                    let h = h.rsplit_once(':').map_or(h, |(name, port)| {
                        if port.bytes().all(|b| b.is_ascii_digit()) {
                            name
                        } else {
                            h
                        }
                    });
                    h.eq_ignore_ascii_case(want)
                })
                .unwrap_or(false),
        }
    }
}

fn string(obj: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{what}: '{key}' must be a string")),
    }
}

fn url(obj: &Map<String, Value>, what: &str) -> Result<Option<String>, String> {
    url_or(obj, what, false)
}

/// `url`: a path; with `external`, also an `http://` or `https://` URL (a `fetch` step's).
fn url_or(obj: &Map<String, Value>, what: &str, external: bool) -> Result<Option<String>, String> {
    let u = string(obj, "url", what)?;
    if let Some(u) = &u {
        let lower = u.to_ascii_lowercase();
        let is_url = external
            && (lower.starts_with("http://") || lower.starts_with("https://"))
            && u.len() > "https://".len();
        if (!u.starts_with('/') && !is_url) || u.contains(['\r', '\n', ' ', '\0']) || u.len() > 8192
        {
            if external {
                return Err(format!(
                    "{what}: a 'fetch' step's 'url' must be a path starting with '/' or an http(s):// URL (no spaces or control characters), got {u:?}"
                ));
            }
            return Err(format!(
                "{what}: 'url' must be a path starting with '/' (no spaces or control characters), got {u:?}"
            ));
        }
    }
    Ok(u)
}

fn arg(obj: &Map<String, Value>, what: &str) -> Result<String, String> {
    let a = string(obj, "arg", what)?.unwrap_or_default();
    if a.len() > 65535 || a.contains('\0') {
        return Err(format!(
            "{what}: 'arg' must be at most 65535 bytes, without NUL"
        ));
    }
    Ok(a)
}

fn step(v: &Value, what: &str, first: bool) -> Result<ChainStep, String> {
    let Value::Object(obj) = v else {
        return Err(format!(
            "{what}: a chain step must be an object {{\"program\", \"url\", \"arg\"}}"
        ));
    };
    for k in obj.keys() {
        if !["program", "url", "arg"].contains(&k.as_str()) {
            return Err(format!(
                "{what}: unknown key '{k}' (a step has program, url, arg)"
            ));
        }
    }
    let program = string(obj, "program", what)?
        .ok_or_else(|| format!("{what}: a chain step needs 'program'"))?;
    let url = url_or(obj, what, program == FETCH_STEP)?;
    if program == FETCH_STEP {
        if !first {
            return Err(format!(
                "{what}: 'fetch' can only be the first step of a chain"
            ));
        }
        if url.is_none() {
            return Err(format!(
                "{what}: a 'fetch' step needs 'url' (a path on this server, e.g. \"/images/a.jpg\", or an http(s):// URL)"
            ));
        }
    }
    Ok(ChainStep {
        program,
        url,
        arg: arg(obj, what)?,
    })
}

fn route(v: &Value, i: usize) -> Result<Route, String> {
    let what = format!("route {}", i + 1);
    let Value::Object(obj) = v else {
        return Err(format!("{what}: a route must be an object"));
    };
    const KEYS: [&str; 8] = [
        "prefix",
        "program",
        "url",
        "arg",
        "chain",
        "error_threshold",
        "method",
        "host",
    ];
    for k in obj.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(format!(
                "{what}: unknown key '{k}' (a route has {})",
                KEYS.join(", ")
            ));
        }
    }
    let prefix = string(obj, "prefix", &what)?
        .ok_or_else(|| format!("{what}: a route needs 'prefix' (e.g. \"/thumbs/\")"))?;
    if !prefix.starts_with('/') {
        return Err(format!(
            "{what}: 'prefix' must start with '/', got {prefix:?}"
        ));
    }
    let program =
        string(obj, "program", &what)?.ok_or_else(|| format!("{what}: a route needs 'program'"))?;
    if program == FETCH_STEP {
        return Err(format!(
            "{what}: 'fetch' is a chain step, not a route's program"
        ));
    }
    let methods = match obj.get("method") {
        None => Vec::new(),
        Some(Value::String(m)) => vec![m.to_ascii_uppercase()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| {
                m.as_str().map(str::to_ascii_uppercase).ok_or_else(|| {
                    format!("{what}: 'method' must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(format!(
                "{what}: 'method' must be a string or a list of strings"
            ))
        }
    };
    if let Some(m) = methods
        .iter()
        .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return Err(format!("{what}: {m:?} is not an HTTP method"));
    }
    let host = string(obj, "host", &what)?.map(|h| h.to_ascii_lowercase());
    let chain = match obj.get("chain") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(j, s)| step(s, &format!("{what}, chain step {}", j + 1), j == 0))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{what}: 'chain' must be a list of steps")),
    };
    if chain.len() > 16 {
        return Err(format!("{what}: at most 16 chain steps"));
    }
    let error_threshold = match obj.get("error_threshold") {
        None => 400,
        Some(v) => match v.as_u64() {
            Some(n @ 200..=600) => n as u16,
            _ => {
                return Err(format!(
                    "{what}: 'error_threshold' must be a status between 200 and 600"
                ))
            }
        },
    };
    Ok(Route {
        prefix,
        url: url(obj, &what)?,
        arg: arg(obj, &what)?,
        program,
        methods,
        host,
        chain,
        error_threshold,
    })
}

/// Parse a `"routes"` value.
pub(crate) fn parse(v: &Value) -> Result<Vec<Route>, String> {
    let Value::Array(a) = v else {
        return Err(format!("'{ROUTES_SECTION}' must be a list of routes"));
    };
    a.iter().enumerate().map(|(i, r)| route(r, i)).collect()
}

/// The programs a route names that are not configured.
pub(crate) fn unknown_programs(
    routes: &[Route],
    known: impl Fn(&str) -> bool,
) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        for p in
            std::iter::once(r.program.as_str()).chain(r.chain.iter().map(|s| s.program.as_str()))
        {
            if p != FETCH_STEP && !known(p) {
                out.push((i, p));
            }
        }
    }
    out
}
