//! Where the server listens: a TCP address or a Unix-domain socket (`listen: "unix:/path"`,
//! what a Varnish backend with `.path` connects to), and the connections either gives.
//!
//! A Unix socket file is created at bind with the configured permission bits and owner. A
//! stale file left by a server that died (nothing accepts on it) is replaced; a live one (a
//! connection to it succeeds) or anything that is not a socket is an error. The server
//! removes the file when it stops.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A Unix-domain socket to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    /// The socket file.
    pub path: PathBuf,
    /// Permission bits of the socket file (connecting needs write permission); `None` leaves
    /// what the umask gives.
    pub mode: Option<u32>,
    /// Owner as configured (`user`, `user:group`, `:group`; names or numeric ids).
    pub owner: Option<String>,
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket; the path is removed when the listener is dropped.
    Unix(UnixListener, SocketFile),
}

/// Removes the socket file on drop.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One accepted connection.
#[derive(Debug)]
pub enum Conn {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over the Unix socket.
    Unix(UnixStream),
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A client of the Unix socket (as trusted as the file permissions make it).
    Unix,
}

impl Peer {
    /// Whether `t` lists this peer.
    pub fn trusted_by(&self, t: &edgevm_config::TrustedFrontend) -> bool {
        match self {
            Peer::Tcp(a) => t.contains_ip(a.ip()),
            Peer::Unix => t.is_unix(),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

impl Listener {
    /// Accept the next connection.
    pub async fn accept(&self) -> io::Result<(Conn, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), Peer::Tcp(a)))
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((Conn::Unix(s), Peer::Unix))
            }
        }
    }

    /// What it listens on, for logs: `127.0.0.1:8080` or `unix:/path`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(_, f) => format!("unix:{}", f.0.display()),
        }
    }
}

impl Conn {
    /// Write without waiting (a refusal that fits the socket buffer); errors ignored.
    pub fn try_write(&self, buf: &[u8]) {
        let _ = match self {
            Conn::Tcp(s) => s.try_write(buf),
            Conn::Unix(s) => s.try_write(buf),
        };
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// Bind a Unix socket: replace a stale socket file, set mode and owner. Must run inside a
/// tokio runtime.
pub fn bind_unix(u: &UnixListen) -> io::Result<Listener> {
    let path = &u.path;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another server listens on it", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let file = SocketFile(path.clone());
    if let Some(mode) = u.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    if let Some(owner) = &u.owner {
        let (uid, gid) = resolve_owner(owner)?;
        std::os::unix::fs::lchown(path, uid, gid)?;
    }
    Ok(Listener::Unix(listener, file))
}

/// `user`, `user:group` or `:group` (names or numeric ids) to ids.
pub fn resolve_owner(owner: &str) -> io::Result<(Option<u32>, Option<u32>)> {
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let uid = match user {
        "" => None,
        u => Some(match u.parse::<u32>() {
            Ok(id) => id,
            Err(_) => lookup_id(Path::new("/etc/passwd"), u, "user")?,
        }),
    };
    let gid = match group {
        None | Some("") => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => lookup_id(Path::new("/etc/group"), g, "group")?,
        }),
    };
    Ok((uid, gid))
}

/// The id of `name` in a passwd/group style file (`name:x:id:...`).
fn lookup_id(file: &Path, name: &str, what: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(file)?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let id = f.nth(1)?.parse::<u32>().ok()?;
            (n == name).then_some(id)
        })
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {what} named '{name}' in {}", file.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_resolve_names_and_ids() {
        assert_eq!(resolve_owner("0").unwrap(), (Some(0), None));
        assert_eq!(resolve_owner("root:root").unwrap(), (Some(0), Some(0)));
        assert_eq!(resolve_owner(":0").unwrap(), (None, Some(0)));
        let e = resolve_owner("no-such-user-edgevm").unwrap_err();
        assert!(e.to_string().contains("no user named"), "{e}");
    }

    #[tokio::test]
    async fn a_unix_socket_is_bound_with_its_mode_replaces_a_stale_file_and_refuses_a_live_one() {
        let dir = std::env::temp_dir().join(format!("edgevm-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let u = UnixListen {
            path: path.clone(),
            mode: Some(0o600),
            owner: None,
        };
        let l = bind_unix(&u).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        // A live listener: a second bind is refused and leaves the file alone.
        let e = bind_unix(&u).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(path.exists());
        // Dropped: the file goes.
        drop(l);
        assert!(!path.exists());
        // A stale socket (bound, never accepted, listener gone without cleanup) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let l = bind_unix(&u).unwrap();
        drop(l);
        // A regular file is not touched.
        std::fs::write(&path, b"data").unwrap();
        let e = bind_unix(&u).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
