//! The `server` key of a program: the TCP server mode (the reference's experimental epoll
//! server). The program accepts and serves connections itself with the socket-event API
//! (`wait_for_socket_events_paused`, `sys_sockets_write`); the host owns the listening
//! socket and the connections (edgevm-runtime `tcp_server.rs`).
//!
//! ```json
//! "server": { "port": 8081, "address": "127.0.0.1", "systems": 2 }
//! "server": { "path": "/run/edgevm/lines.sock" }
//! "websocket_server": { "port": 8082, "max_message": 65536 }
//! ```
//!
//! `websocket_server` takes the same keys (and `max_message`): the host does the WebSocket
//! handshake and framing, the program sees whole messages.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Most VMs serving one program's connections (`systems`).
pub const MAX_SYSTEMS: u64 = 64;
/// Most connections one program may hold open (`max_connections`).
pub const MAX_TCP_CONNECTIONS: u64 = 65_536;
/// Default `max_connections`.
pub const DEFAULT_TCP_CONNECTIONS: u32 = 1024;
/// Default `idle_timeout`, seconds.
pub const DEFAULT_TCP_IDLE_SECS: u64 = 60;
/// Default `max_message` of a `websocket_server`, bytes.
pub const DEFAULT_WS_MESSAGE: u32 = 1 << 20;
/// Largest `max_message`.
pub const MAX_WS_MESSAGE: u64 = 16 << 20;

/// Where the program's server listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TcpListen {
    /// `port` (with `address`, default 127.0.0.1 as the HTTP listener).
    Tcp(SocketAddr),
    /// `path`: a Unix-domain stream socket.
    Unix(PathBuf),
}

/// The `server` object (`edgevm check` shows it with its configuration keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcpServerConfig {
    /// `port` + `address`, or `path`.
    #[serde(flatten, serialize_with = "listen_keys")]
    pub listen: TcpListen,
    /// `systems`: how many VMs serve connections in parallel (default 1).
    pub systems: u32,
    /// `max_connections` (edgevm): connections open at once, all systems together (1024).
    pub max_connections: u32,
    /// `idle_timeout` (edgevm), seconds: a connection with no byte either way for this long
    /// is closed (60).
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// `max_message` (`websocket_server` only): the largest message, all its fragments
    /// together, in bytes (1 MiB); a bigger one closes the connection with 1009.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message: Option<u32>,
}

/// `listen` as the keys it came from: `port` and `address`, or `path`.
fn listen_keys<S: serde::Serializer>(l: &TcpListen, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    match l {
        TcpListen::Tcp(a) => {
            m.serialize_entry("port", &a.port())?;
            m.serialize_entry("address", &a.ip().to_string())?;
        }
        TcpListen::Unix(p) => m.serialize_entry("path", p)?,
    }
    m.end()
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Parse a `server` object, or a `websocket_server` one (`websocket`: `max_message` too)
/// (`expand` expands `$HOME`/`$PWD` in a `path`).
pub(crate) fn parse(
    v: &Value,
    websocket: bool,
    expand: impl Fn(&str) -> Result<String, String>,
) -> Result<TcpServerConfig, String> {
    let o = v
        .as_object()
        .ok_or_else(|| "must be an object with a \"port\" or a \"path\"".to_string())?;
    let mut known = vec![
        "port",
        "path",
        "address",
        "systems",
        "max_connections",
        "idle_timeout",
    ];
    if websocket {
        known.push("max_message");
    }
    for k in o.keys() {
        if !known.contains(&k.as_str()) {
            return Err(format!("unknown key {k:?} (known: {})", known.join(", ")));
        }
    }
    let num = |k: &str, min: u64, max: u64| -> Result<Option<u64>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(format!(
                    "\"{k}\" must be a whole number from {min} to {max}, got {v}"
                )),
            },
        }
    };
    let listen = match (o.get("port"), o.get("path")) {
        (Some(_), Some(_)) => return Err("give a \"port\" or a \"path\", not both".into()),
        (None, None) => return Err("needs a \"port\" (TCP) or a \"path\" (Unix socket)".into()),
        (Some(_), None) => {
            let port = num("port", 1, 65535)?.unwrap_or_default() as u16;
            let ip: IpAddr = match o.get("address") {
                None => IpAddr::from([127, 0, 0, 1]),
                Some(a) => a.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                    format!("\"address\" must be an IP address such as \"127.0.0.1\", got {a}")
                })?,
            };
            TcpListen::Tcp(SocketAddr::new(ip, port))
        }
        (None, Some(p)) => {
            if o.contains_key("address") {
                return Err("\"address\" goes with \"port\", not with \"path\"".into());
            }
            let p = p
                .as_str()
                .ok_or_else(|| format!("\"path\" must be a string, got {p}"))?;
            let p = expand(p)?;
            if !p.starts_with('/') {
                return Err(format!("\"path\" must be an absolute path, got {p:?}"));
            }
            // sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
            if p.len() > 107 || p.contains('\0') {
                return Err(format!("\"path\" is not a usable Unix socket path: {p:?}"));
            }
            TcpListen::Unix(PathBuf::from(p))
        }
    };
    Ok(TcpServerConfig {
        listen,
        systems: num("systems", 1, MAX_SYSTEMS)?.unwrap_or(1) as u32,
        max_connections: num("max_connections", 1, MAX_TCP_CONNECTIONS)?
            .map_or(DEFAULT_TCP_CONNECTIONS, |n| n as u32),
        idle_timeout: Duration::from_secs(
            num("idle_timeout", 1, 86_400)?.unwrap_or(DEFAULT_TCP_IDLE_SECS),
        ),
        max_message: if websocket {
            Some(num("max_message", 125, MAX_WS_MESSAGE)?.map_or(DEFAULT_WS_MESSAGE, |n| n as u32))
        } else {
            None
        },
    })
}

/// Two programs cannot listen at the same place, nor a program where the HTTP server
/// listens: the later one (in name order) fails with the reason.
pub(crate) fn refuse_shared_listeners(
    programs: &mut std::collections::BTreeMap<
        String,
        Result<crate::ProgramConfig, crate::ConfigError>,
    >,
    server: &crate::ServerConfig,
) {
    let mut seen: Vec<(TcpListen, String)> = Vec::new();
    for (name, p) in programs.iter_mut() {
        let Ok(cfg) = p else { continue };
        if cfg.server.is_some() && cfg.websocket_server.is_some() {
            *p = Err(crate::ConfigError::Inconsistent {
                name: name.clone(),
                message: "give 'server' or 'websocket_server', not both".into(),
            });
            continue;
        }
        let Some(s) = cfg.server.as_ref().or(cfg.websocket_server.as_ref()) else {
            continue;
        };
        let clash = match &s.listen {
            TcpListen::Tcp(a) if server.listen.is_some_and(|l| l.port() == a.port()) => {
                Some("the HTTP server's own 'listen' port".to_string())
            }
            TcpListen::Unix(p) if server.listen_unix.as_ref() == Some(p) => {
                Some("the HTTP server's own 'listen' socket".to_string())
            }
            l => seen
                .iter()
                .find(|(o, _)| same_place(o, l))
                .map(|(_, other)| format!("program '{other}'")),
        };
        if let Some(what) = clash {
            let key = if cfg.server.is_some() {
                "server"
            } else {
                "websocket_server"
            };
            *p = Err(crate::ConfigError::Inconsistent {
                name: name.clone(),
                message: format!("'{key}' listens where {what} does"),
            });
            continue;
        }
        seen.push((s.listen.clone(), name.clone()));
    }
}

/// Two listeners conflict on the same path, or the same port with overlapping addresses.
fn same_place(a: &TcpListen, b: &TcpListen) -> bool {
    match (a, b) {
        (TcpListen::Tcp(x), TcpListen::Tcp(y)) => {
            x.port() == y.port()
                && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        (TcpListen::Unix(x), TcpListen::Unix(y)) => x == y,
        _ => false,
    }
}
