//! Guest sockets: real host sockets (non-blocking, owned by the VM's descriptor table) under
//! the program's outgoing network policy (`edgevm-netpolicy`, the one `sys_fetch` uses).
//!
//! * `socket` makes AF_INET/AF_INET6 stream and datagram sockets and AF_UNIX stream, datagram
//!   and seqpacket sockets (`socketpair` too); other families and raw sockets are refused.
//! * Every destination is checked where the program names it: `connect`, and `sendto`/
//!   `sendmsg` with an address, against the policy on the address itself (a guest resolves
//!   names itself, so name entries of the policy do not match). Refused: `EACCES` and a line
//!   in the program's log. The host's name servers (from its /etc/resolv.conf) are reachable
//!   on port 53 so that the guest's resolver works.
//! * AF_UNIX paths are guest paths resolved through `allowed_paths`: the parent directory is
//!   opened by the kernel beneath its rule, and the socket reached through it
//!   (`/proc/self/fd/N/name`), only if that name is a socket (not a symbolic link). Abstract
//!   names are refused.
//! * No listening: `bind` only to an ephemeral port (port 0), `listen` is refused, `accept`
//!   fails (the TCP server mode serves incoming connections).
//! * Options: a list of harmless ones pass through; `SO_RCVTIMEO`/`SO_SNDTIMEO` are kept
//!   here (the host socket never blocks); anything else is `ENOPROTOOPT`. Ancillary data is
//!   never passed (no descriptor passing in either direction).
//! * Bounded: [`MAX_SOCKETS`] per VM (`EMFILE`), [`MAX_NET_BYTES`] sent and received per
//!   request (`ENOBUFS` after it; `main()` and the storage VM have their time limits). A request VM's reset closes the sockets the request opened;
//!   sockets open at the freeze are closed by it in the frozen state (their descriptors stay,
//!   and fail with `ENOTCONN`): one host connection cannot be shared by request VMs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use edgevm_kvm::{GuestMemory, KvmError, Vcpu};

use super::{DescKind, O_CLOEXEC, O_NONBLOCK};
use crate::errno::*;
use crate::hostnet::{self, RawAddr};
use crate::linux::wait::{Io, Timeout};
use crate::linux::{LinuxState, Output, SyscallOutcome};
use crate::sandbox::{normalize, parent_of, Target};

/// Sockets a VM may have open at once.
pub const MAX_SOCKETS: usize = 64;
/// Bytes a request (or a boot) may send and receive through sockets together.
pub const MAX_NET_BYTES: u64 = 256 << 20;
/// Bytes one send or receive call moves at most (a stream call is then short).
const MAX_IO: usize = 4 << 20;
/// Refused destinations logged per VM state (a loop of refused connects logs no more).
const MAX_REFUSAL_LOGS: u32 = 8;

/// A guest socket.
#[derive(Debug, Clone)]
pub(in crate::linux) struct Socket {
    /// The host socket (None: closed at the freeze).
    pub fd: Option<Arc<OwnedFd>>,
    pub domain: i32,
    /// A blocking connect is in progress.
    connecting: bool,
    rcvtimeo: Option<Duration>,
    sndtimeo: Option<Duration>,
}

type CallResult = Result<Result<i64, SyscallOutcome>, KvmError>;

/// What a guest `struct sockaddr` names.
enum Dest {
    Ip(SocketAddr),
    Unix(Vec<u8>),
    Unspec,
}

fn read_sockaddr(mem: &GuestMemory, at: u64, len: u64) -> Result<Dest, i64> {
    if !(2..=128).contains(&len) {
        return Err(-EINVAL);
    }
    let b = mem.read_vec(at, len as usize).map_err(|_| -EFAULT)?;
    let family = i32::from(u16::from_ne_bytes([b[0], b[1]]));
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match family {
        libc::AF_INET if b.len() >= 16 => Ok(Dest::Ip(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(b[4], b[5], b[6], b[7]),
            port(&b),
        )))),
        libc::AF_INET6 if b.len() >= 24 => {
            let ip: [u8; 16] = b[8..24].try_into().expect("16");
            let flow = u32::from_be_bytes(b[4..8].try_into().expect("4"));
            let scope = if b.len() >= 28 {
                u32::from_ne_bytes(b[24..28].try_into().expect("4"))
            } else {
                0
            };
            Ok(Dest::Ip(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port(&b),
                flow,
                scope,
            ))))
        }
        libc::AF_INET | libc::AF_INET6 => Err(-EINVAL),
        libc::AF_UNIX => {
            let path = &b[2..];
            if path.first().is_none_or(|&c| c == 0) {
                // Autobind or the abstract namespace: no file the sandbox could confine.
                return Err(-EACCES);
            }
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            Ok(Dest::Unix(path[..end].to_vec()))
        }
        libc::AF_UNSPEC => Ok(Dest::Unspec),
        _ => Err(-EAFNOSUPPORT),
    }
}

/// Write a host address to the guest (`at`, with the buffer length at `len_at`), as
/// recvfrom/getsockname do: truncated to the buffer, the full length written back. Unix
/// addresses are given as unnamed (their host paths are not the guest's).
fn write_sockaddr(mem: &mut GuestMemory, at: u64, len_at: u64, a: &RawAddr) -> i64 {
    if at == 0 {
        return 0;
    }
    let Ok(b) = mem.read_vec(len_at, 4) else {
        return -EFAULT;
    };
    let room = i32::from_ne_bytes(b[..4].try_into().expect("4"));
    if room < 0 {
        return -EINVAL;
    }
    let unix_name = (libc::AF_UNIX as u16).to_ne_bytes();
    let bytes: &[u8] = if a.family() == libc::AF_UNIX {
        &unix_name
    } else {
        a.bytes()
    };
    let n = bytes.len().min(room as usize);
    if mem.write(at, &bytes[..n]).is_err() {
        return -EFAULT;
    }
    match mem.write(len_at, &(bytes.len() as u32).to_ne_bytes()) {
        Ok(()) => 0,
        Err(_) => -EFAULT,
    }
}

/// The host's name servers (its /etc/resolv.conf), which guests may query on port 53.
fn name_servers() -> &'static [std::net::IpAddr] {
    static S: OnceLock<Vec<std::net::IpAddr>> = OnceLock::new();
    S.get_or_init(|| {
        std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver"))
                    .then(|| w.next().and_then(|a| a.split('%').next()?.parse().ok()))
                    .flatten()
            })
            .collect()
    })
}

/// The resolver files a guest sees read-only at their own paths (unless its configuration
/// maps those paths itself).
pub(in crate::linux) const RESOLVER_FILES: [&str; 6] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
];

/// Options passed through to the host socket, as (level, option).
const PASS_OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_TYPE),
    (libc::SOL_SOCKET, libc::SO_ERROR),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_ACCEPTCONN),
    (libc::SOL_SOCKET, libc::SO_PROTOCOL),
    (libc::SOL_SOCKET, libc::SO_DOMAIN),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_INFO),
    (libc::IPPROTO_TCP, libc::TCP_QUICKACK),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
];

impl Socket {
    fn host(&self) -> Result<Arc<OwnedFd>, i64> {
        self.fd.clone().ok_or(-ENOTCONN)
    }
}

/// The (guest address, length) pairs of an iovec array.
fn read_iov(mem: &GuestMemory, iov: u64, cnt: u64) -> Result<Vec<(u64, u64)>, i64> {
    if cnt > 1024 {
        return Err(-EINVAL);
    }
    (0..cnt)
        .map(|i| {
            let base = mem
                .read_u64(iov.wrapping_add(16 * i))
                .map_err(|_| -EFAULT)?;
            let len = mem
                .read_u64(iov.wrapping_add(16 * i + 8))
                .map_err(|_| -EFAULT)?;
            if len > i64::MAX as u64 {
                return Err(-EINVAL);
            }
            Ok((base, len))
        })
        .collect()
}

/// `struct msghdr`: name, namelen, iov, iovlen (control data is never passed).
struct MsgHdr {
    name: u64,
    namelen: u64,
    iov: u64,
    iovlen: u64,
}

fn read_msghdr(mem: &GuestMemory, at: u64) -> Result<MsgHdr, i64> {
    let w = |i: u64| mem.read_u64(at.wrapping_add(8 * i)).map_err(|_| -EFAULT);
    Ok(MsgHdr {
        name: w(0)?,
        namelen: w(1)? & 0xFFFF_FFFF,
        iov: w(2)?,
        iovlen: w(3)?,
    })
}

impl LinuxState {
    /// The socket calls, and reads and writes of sockets that wait; None for other calls.
    pub(in crate::linux) fn socket_call(
        &mut self,
        nr: i64,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> Option<CallResult> {
        let fd = a[0] as i64 as i32;
        let now = |v: i64| Some(Ok(Ok(v)));
        match nr {
            libc::SYS_socket => now(self.sys_socket(a[0], a[1], a[2])),
            libc::SYS_socketpair => now(self.sys_socketpair(a, mem)),
            libc::SYS_connect => Some(self.sys_connect(nr, fd, a[1], a[2], cpu, mem, out)),
            libc::SYS_bind => now(self.sys_bind(fd, a[1], a[2], mem, out)),
            libc::SYS_listen => now(match self.socket(fd) {
                Ok(_) => {
                    self.refusal_log(out, "listen() refused: programs do not listen (the TCP server mode serves incoming connections)");
                    -EACCES
                }
                Err(e) => e,
            }),
            libc::SYS_accept | libc::SYS_accept4 => now(match self.socket(fd) {
                Ok(_) => -EINVAL,
                Err(e) => e,
            }),
            libc::SYS_shutdown => now(match self.socket(fd).and_then(|s| s.host()) {
                Ok(h) => match hostnet::shutdown(h.as_fd(), a[1] as i32) {
                    Ok(()) => 0,
                    Err(e) => e,
                },
                Err(e) => e,
            }),
            libc::SYS_getsockname | libc::SYS_getpeername => {
                now(match self.socket(fd).and_then(|s| s.host()) {
                    Ok(h) => match hostnet::name(h.as_fd(), nr == libc::SYS_getpeername) {
                        Ok(addr) => write_sockaddr(mem, a[1], a[2], &addr),
                        Err(e) => e,
                    },
                    Err(e) => e,
                })
            }
            libc::SYS_setsockopt => now(self.sys_setsockopt(fd, a, mem)),
            libc::SYS_getsockopt => now(self.sys_getsockopt(fd, a, mem)),
            libc::SYS_sendto => {
                let iov = [(a[1], a[2])];
                let to = (a[4] != 0).then_some((a[4], a[5]));
                Some(
                    self.sock_io(nr, fd, a[3], true, cpu, mem, out, &mut |s, mem, out| {
                        s.sock_send(fd, &iov, a[3], to, mem, out)
                    }),
                )
            }
            libc::SYS_recvfrom => {
                let iov = [(a[1], a[2])];
                let from = (a[4] != 0).then_some((a[4], a[5]));
                Some(
                    self.sock_io(nr, fd, a[3], false, cpu, mem, out, &mut |s, mem, out| {
                        s.sock_recv(fd, &iov, a[3], from, mem, out).0
                    }),
                )
            }
            libc::SYS_sendmsg | libc::SYS_recvmsg => {
                let send = nr == libc::SYS_sendmsg;
                Some(
                    self.sock_io(nr, fd, a[2], send, cpu, mem, out, &mut |s, mem, out| {
                        s.sock_msg(fd, a[1], a[2], send, mem, out)
                    }),
                )
            }
            // read()/write() of a blocking socket wait like recv()/send(): up to
            // SO_RCVTIMEO/SO_SNDTIMEO, then EAGAIN.
            libc::SYS_read | libc::SYS_write | libc::SYS_readv | libc::SYS_writev
                if self.socket(fd).is_ok() =>
            {
                let send = matches!(nr, libc::SYS_write | libc::SYS_writev);
                Some(self.sock_io(
                    nr,
                    fd,
                    0,
                    send,
                    cpu,
                    mem,
                    out,
                    &mut |s, mem, out| match nr {
                        libc::SYS_read => s.read(fd, a[1], a[2], mem, out),
                        libc::SYS_write => s.write(fd, a[1], a[2], mem, out),
                        libc::SYS_readv => s.vectored(fd, a[1], a[2], false, mem, out),
                        _ => s.vectored(fd, a[1], a[2], true, mem, out),
                    },
                ))
            }
            libc::SYS_sendmmsg | libc::SYS_recvmmsg => {
                let send = nr == libc::SYS_sendmmsg;
                Some(
                    self.sock_io(nr, fd, a[3], send, cpu, mem, out, &mut |s, mem, out| {
                        s.sock_mmsg(fd, a[1], a[2], a[3], send, mem, out)
                    }),
                )
            }
            _ => None,
        }
    }

    fn socket(&self, fd: i32) -> Result<&Socket, i64> {
        match self.fds.desc(fd).map(|d| &d.kind) {
            Some(DescKind::Socket(s)) => Ok(s),
            Some(_) => Err(-ENOTSOCK),
            None => Err(-EBADF),
        }
    }

    fn socket_mut(&mut self, fd: i32) -> Result<&mut Socket, i64> {
        match self.fds.desc_mut(fd).map(|d| &mut d.kind) {
            Some(DescKind::Socket(s)) => Ok(s),
            Some(_) => Err(-ENOTSOCK),
            None => Err(-EBADF),
        }
    }

    /// Log a refused destination (at most [`MAX_REFUSAL_LOGS`] times per VM state).
    fn refusal_log(&mut self, out: &mut dyn Output, line: &str) {
        if self.net_refusals < MAX_REFUSAL_LOGS {
            self.net_refusals += 1;
            out.log(line);
        }
    }

    /// May the program reach `a`? Err(-EACCES) with a log line when the policy refuses it.
    fn net_check(&mut self, a: SocketAddr, out: &mut dyn Output) -> Result<(), i64> {
        if a.port() == 53 && name_servers().contains(&a.ip()) {
            return Ok(());
        }
        let r = match &self.cfg.net {
            Some(p) => p.check(None, a),
            None => edgevm_netpolicy::NetPolicy::public_only().check(None, a),
        };
        r.map_err(|refused| {
            self.refusal_log(out, &format!("connection to {a} refused: {refused}"));
            -EACCES
        })
    }

    fn sys_socket(&mut self, domain: u64, ty: u64, proto: u64) -> i64 {
        let (domain, proto) = (domain as i32, proto as i32);
        let flags = ty & (O_CLOEXEC | O_NONBLOCK);
        let ty = (ty & !(O_CLOEXEC | O_NONBLOCK)) as i32;
        let ok_type = match domain {
            libc::AF_INET | libc::AF_INET6 => match ty {
                libc::SOCK_STREAM => matches!(proto, 0 | libc::IPPROTO_TCP),
                libc::SOCK_DGRAM => matches!(proto, 0 | libc::IPPROTO_UDP),
                libc::SOCK_RAW => return -EPERM,
                _ => return -EINVAL,
            },
            libc::AF_UNIX => match ty {
                libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET => proto == 0,
                _ => return -EINVAL,
            },
            _ => return -EAFNOSUPPORT,
        };
        if !ok_type {
            return -EPROTONOSUPPORT;
        }
        if self.fds.socket_count() >= MAX_SOCKETS {
            return -EMFILE;
        }
        match hostnet::socket(domain, ty, proto) {
            Ok(h) => self.install_socket(h, domain, flags),
            Err(e) => e,
        }
    }

    fn install_socket(&mut self, h: OwnedFd, domain: i32, flags: u64) -> i64 {
        let s = Socket {
            fd: Some(Arc::new(h)),
            domain,
            connecting: false,
            rcvtimeo: None,
            sndtimeo: None,
        };
        self.fds.install(
            DescKind::Socket(s),
            flags & O_CLOEXEC != 0,
            flags & O_NONBLOCK != 0,
        )
    }

    fn sys_socketpair(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        let flags = a[1] & (O_CLOEXEC | O_NONBLOCK);
        let ty = (a[1] & !(O_CLOEXEC | O_NONBLOCK)) as i32;
        if a[0] as i32 != libc::AF_UNIX {
            return -EAFNOSUPPORT;
        }
        if !matches!(
            ty,
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
        ) {
            return -EINVAL;
        }
        if a[2] != 0 {
            return -EPROTONOSUPPORT;
        }
        if !mem.contains(a[3], 8) {
            return -EFAULT;
        }
        if self.fds.socket_count() + 2 > MAX_SOCKETS || self.fds.count() + 2 > crate::files::MAX_FDS
        {
            return -EMFILE;
        }
        let (x, y) = match hostnet::socketpair(ty) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let f0 = self.install_socket(x, libc::AF_UNIX, flags);
        let f1 = self.install_socket(y, libc::AF_UNIX, flags);
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&(f0 as i32).to_ne_bytes());
        b[4..].copy_from_slice(&(f1 as i32).to_ne_bytes());
        if mem.write(a[3], &b).is_err() {
            self.fds.close(f0 as i32);
            self.fds.close(f1 as i32);
            return -EFAULT;
        }
        0
    }

    /// The host address for a guest destination on a socket of `domain` (policy checked).
    /// For a Unix path, also the directory descriptor its host path goes through.
    fn host_dest(
        &mut self,
        domain: i32,
        d: Dest,
        out: &mut dyn Output,
    ) -> Result<(RawAddr, Option<OwnedFd>), i64> {
        match d {
            Dest::Unspec => Ok((RawAddr::unspec(), None)),
            Dest::Ip(a) => {
                match (domain, a) {
                    (libc::AF_INET, SocketAddr::V4(_)) | (libc::AF_INET6, SocketAddr::V6(_)) => {}
                    _ => return Err(-EAFNOSUPPORT),
                }
                self.net_check(a, out)?;
                Ok((RawAddr::ip(a), None))
            }
            Dest::Unix(path) => {
                if domain != libc::AF_UNIX {
                    return Err(-EAFNOSUPPORT);
                }
                let (dir, name) = self.unix_target(&path).inspect_err(|&e| {
                    if e == -EACCES || e == -ENOENT {
                        let p = String::from_utf8_lossy(&path).into_owned();
                        self.refusal_log(
                            out,
                            &format!("unix socket {p:?}: not reachable through allowed_paths"),
                        );
                    }
                })?;
                let host = [
                    format!("/proc/self/fd/{}/", dir.as_raw_fd()).as_bytes(),
                    &name,
                ]
                .concat();
                let a = RawAddr::unix(&host).ok_or(-ENAMETOOLONG)?;
                Ok((a, Some(dir)))
            }
        }
    }

    /// The confined directory holding the Unix socket the guest path names, and its name:
    /// the name must be a socket, not a symbolic link.
    fn unix_target(&self, path: &[u8]) -> Result<(OwnedFd, Vec<u8>), i64> {
        let p = normalize(&self.cwd, path)?;
        let Target::Host {
            base,
            rel,
            strict_first,
            ..
        } = self.sandbox.resolve(&p)?
        else {
            return Err(-ECONNREFUSED);
        };
        let (dir, name) = if rel.is_empty() {
            // The rule names the socket itself.
            let parent = base.parent().ok_or(-ECONNREFUSED)?;
            let name = base.file_name().ok_or(-ECONNREFUSED)?;
            let d = crate::sandbox::open_host(
                parent,
                b"",
                false,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                0,
            )?;
            (d, std::os::unix::ffi::OsStrExt::as_bytes(name).to_vec())
        } else {
            parent_of(&base, &rel, strict_first)?
        };
        let st = rustix::fs::statat(&dir, name.as_slice(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| -i64::from(e.raw_os_error()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
            return Err(-ECONNREFUSED);
        }
        Ok((dir, name))
    }

    #[allow(clippy::too_many_arguments)]
    fn sys_connect(
        &mut self,
        nr: i64,
        fd: i32,
        addr: u64,
        len: u64,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> CallResult {
        let (domain, nonblock, timeout) = match self.fds.desc(fd) {
            Some(d) => match &d.kind {
                DescKind::Socket(s) => (s.domain, d.nonblock, s.sndtimeo),
                _ => return Ok(Ok(-ENOTSOCK)),
            },
            None => return Ok(Ok(-EBADF)),
        };
        let dest = match read_sockaddr(mem, addr, len) {
            Ok(d) => d,
            Err(e) => return Ok(Ok(e)),
        };
        let (host, _dir) = match self.host_dest(domain, dest, out) {
            Ok(h) => h,
            Err(e) => return Ok(Ok(e)),
        };
        self.wait_io(nr as u64, timeout, cpu, mem, |s, _mem, last| {
            let Ok(sock) = s.socket_mut(fd) else {
                return Io::Done(-EBADF);
            };
            let Ok(h) = sock.host() else {
                return Io::Done(-ENOTCONN);
            };
            if sock.connecting {
                // A blocking connect waiting for the host's answer.
                if hostnet::poll_now(h.as_fd(), libc::POLLOUT) == 0 {
                    return if last {
                        sock.connecting = false;
                        Io::Done(-ETIMEDOUT)
                    } else {
                        Io::Wait(vec![(fd, super::EPOLLOUT)])
                    };
                }
                sock.connecting = false;
                return Io::Done(hostnet::take_error(h.as_fd()));
            }
            match hostnet::connect(h.as_fd(), &host) {
                Ok(()) => Io::Done(0),
                Err(e) if e == -EINPROGRESS && !nonblock => {
                    sock.connecting = true;
                    Io::Wait(vec![(fd, super::EPOLLOUT)])
                }
                Err(e) => Io::Done(e),
            }
        })
    }

    fn sys_bind(
        &mut self,
        fd: i32,
        addr: u64,
        len: u64,
        mem: &GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        let (h, domain) = match self.socket(fd).and_then(|s| Ok((s.host()?, s.domain))) {
            Ok(x) => x,
            Err(e) => return e,
        };
        match read_sockaddr(mem, addr, len) {
            Ok(Dest::Ip(a)) if a.port() == 0 => {
                match (domain, a) {
                    (libc::AF_INET, SocketAddr::V4(_)) | (libc::AF_INET6, SocketAddr::V6(_)) => {}
                    _ => return -EAFNOSUPPORT,
                }
                match hostnet::bind(h.as_fd(), &RawAddr::ip(a)) {
                    Ok(()) => 0,
                    Err(e) => e,
                }
            }
            Ok(_) => {
                self.refusal_log(
                    out,
                    "bind() refused: only an ephemeral port (0) can be bound",
                );
                -EACCES
            }
            Err(e) => e,
        }
    }

    /// Run `f` (a send or receive on socket `fd`) and, on a blocking socket without
    /// MSG_DONTWAIT, wait while it would block (up to SO_RCVTIMEO/SO_SNDTIMEO, then EAGAIN).
    #[allow(clippy::too_many_arguments)]
    fn sock_io(
        &mut self,
        nr: i64,
        fd: i32,
        flags: u64,
        send: bool,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
        f: &mut dyn FnMut(&mut LinuxState, &mut GuestMemory, &mut dyn Output) -> i64,
    ) -> CallResult {
        let (nonblock, timeout): (bool, Timeout) = match self.fds.desc(fd) {
            Some(d) => match &d.kind {
                DescKind::Socket(s) => (d.nonblock, if send { s.sndtimeo } else { s.rcvtimeo }),
                _ => return Ok(Ok(-ENOTSOCK)),
            },
            None => return Ok(Ok(-EBADF)),
        };
        if nonblock || flags & libc::MSG_DONTWAIT as u64 != 0 {
            return Ok(Ok(f(self, mem, out)));
        }
        let ev = if send {
            super::EPOLLOUT
        } else {
            super::EPOLLIN
        };
        self.wait_io(nr as u64, timeout, cpu, mem, |s, mem, last| {
            let v = f(s, mem, out);
            if v == -EAGAIN && !last {
                Io::Wait(vec![(fd, ev)])
            } else {
                Io::Done(v)
            }
        })
    }

    /// Room left in this request's socket byte budget (outside requests, `main()` and the
    /// storage VM, the run's time limits bound the traffic).
    fn net_room(&self) -> u64 {
        if self.request_usage().is_none() {
            return u64::MAX;
        }
        MAX_NET_BYTES.saturating_sub(self.net_bytes.saturating_sub(self.net_base))
    }

    /// Send the bytes of `iov` (at most MAX_IO) on socket `fd`, to `to` if given.
    pub(in crate::linux) fn sock_send(
        &mut self,
        fd: i32,
        iov: &[(u64, u64)],
        flags: u64,
        to: Option<(u64, u64)>,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        let (h, domain) = match self.socket(fd).and_then(|s| Ok((s.host()?, s.domain))) {
            Ok(x) => x,
            Err(e) => return e,
        };
        const ALLOWED: i32 = libc::MSG_DONTWAIT
            | libc::MSG_NOSIGNAL
            | libc::MSG_MORE
            | libc::MSG_OOB
            | libc::MSG_EOR;
        if flags as i32 & !ALLOWED != 0 {
            return -EOPNOTSUPP;
        }
        let dest = match to {
            Some((at, len)) => {
                match read_sockaddr(mem, at, len).and_then(|d| self.host_dest(domain, d, out)) {
                    Ok(d) => Some(d),
                    Err(e) => return e,
                }
            }
            None => None,
        };
        let room = self.net_room();
        if room == 0 {
            self.refusal_log(
                out,
                &format!("socket traffic past {MAX_NET_BYTES} bytes in one request: ENOBUFS"),
            );
            return -ENOBUFS;
        }
        let cap = (MAX_IO as u64).min(room) as usize;
        let mut data = Vec::new();
        for &(base, len) in iov {
            let take = (len as usize).min(cap - data.len());
            match mem.read_vec(base, take) {
                Ok(d) => data.extend_from_slice(&d),
                Err(_) => return -EFAULT,
            }
            if data.len() == cap {
                break;
            }
        }
        match hostnet::send(h.as_fd(), &data, flags as i32, dest.as_ref().map(|d| &d.0)) {
            Ok(n) => {
                self.net_bytes += n as u64;
                n as i64
            }
            Err(e) => e,
        }
    }

    /// Receive into `iov` from socket `fd` (the sender's address to `from` if given): the
    /// byte count (or -errno) and the MSG_* flags of the result.
    pub(in crate::linux) fn sock_recv(
        &mut self,
        fd: i32,
        iov: &[(u64, u64)],
        flags: u64,
        from: Option<(u64, u64)>,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> (i64, i32) {
        let h = match self.socket(fd).and_then(|s| s.host()) {
            Ok(h) => h,
            Err(e) => return (e, 0),
        };
        const ALLOWED: i32 = libc::MSG_DONTWAIT
            | libc::MSG_PEEK
            | libc::MSG_TRUNC
            | libc::MSG_WAITALL
            | libc::MSG_OOB
            | libc::MSG_CMSG_CLOEXEC;
        if flags as i32 & !ALLOWED != 0 {
            return (-EOPNOTSUPP, 0);
        }
        let room = self.net_room();
        if room == 0 {
            self.refusal_log(
                out,
                &format!("socket traffic past {MAX_NET_BYTES} bytes in one request: ENOBUFS"),
            );
            return (-ENOBUFS, 0);
        }
        let want: u64 = iov.iter().map(|x| x.1).fold(0u64, u64::saturating_add);
        for &(base, len) in iov {
            if !mem.contains(base, (len as usize).min(MAX_IO)) {
                return (-EFAULT, 0);
            }
        }
        let mut buf = vec![0u8; want.min(MAX_IO as u64).min(room) as usize];
        // MSG_WAITALL is the emulation's: the host socket never blocks.
        let host_flags =
            flags as i32 & !(libc::MSG_WAITALL | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC);
        let (n, addr) = match hostnet::recv(h.as_fd(), &mut buf, host_flags) {
            Ok(x) => x,
            Err(e) => return (e, 0),
        };
        let got = n.min(buf.len());
        let mut off = 0;
        for &(base, len) in iov {
            if off >= got {
                break;
            }
            let k = (len as usize).min(got - off);
            if mem.write(base, &buf[off..off + k]).is_err() {
                return (-EFAULT, 0);
            }
            off += k;
        }
        self.net_bytes += got as u64;
        if let Some((at, len_at)) = from {
            let r = write_sockaddr(mem, at, len_at, &addr);
            if r != 0 {
                return (r, 0);
            }
        }
        let msg_flags = if n > buf.len() { libc::MSG_TRUNC } else { 0 };
        (n as i64, msg_flags)
    }

    /// sendmsg/recvmsg on the `struct msghdr` at `at`.
    fn sock_msg(
        &mut self,
        fd: i32,
        at: u64,
        flags: u64,
        send: bool,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        let m = match read_msghdr(mem, at) {
            Ok(m) => m,
            Err(e) => return e,
        };
        let iov = match read_iov(mem, m.iov, m.iovlen) {
            Ok(v) => v,
            Err(e) => return e,
        };
        let name = (m.name != 0).then_some(m.name);
        if send {
            return self.sock_send(fd, &iov, flags, name.map(|n| (n, m.namelen)), mem, out);
        }
        // The name length goes back into msg_namelen (offset 8), the flags into msg_flags
        // (offset 48); no control data: msg_controllen (offset 40) is 0.
        let (n, mflags) = self.sock_recv(fd, &iov, flags, name.map(|n| (n, at + 8)), mem, out);
        if n < 0 {
            return n;
        }
        if mem.write_u64(at + 40, 0).is_err() || mem.write(at + 48, &mflags.to_ne_bytes()).is_err()
        {
            return -EFAULT;
        }
        n
    }

    /// sendmmsg/recvmmsg: up to `vlen` messages (1024 at most); stops at the first that
    /// would block once one went through.
    #[allow(clippy::too_many_arguments)]
    fn sock_mmsg(
        &mut self,
        fd: i32,
        vec: u64,
        vlen: u64,
        flags: u64,
        send: bool,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        let vlen = vlen.min(1024);
        let mut done = 0;
        for i in 0..vlen {
            let at = vec.wrapping_add(64 * i);
            let r = self.sock_msg(fd, at, flags, send, mem, out);
            if r < 0 {
                return if done > 0 { done } else { r };
            }
            if mem.write(at + 56, &(r as u32).to_ne_bytes()).is_err() {
                return if done > 0 { done } else { -EFAULT };
            }
            done += 1;
        }
        done
    }

    fn sys_setsockopt(&mut self, fd: i32, a: [u64; 6], mem: &GuestMemory) -> i64 {
        let (level, opt, val, len) = (a[1] as i32, a[2] as i32, a[3], a[4] as i32);
        if !(0..=256).contains(&len) {
            return -EINVAL;
        }
        let Ok(bytes) = mem.read_vec(val, len as usize) else {
            return -EFAULT;
        };
        let sock = match self.socket_mut(fd) {
            Ok(s) => s,
            Err(e) => return e,
        };
        if level == libc::SOL_SOCKET && matches!(opt, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO) {
            if bytes.len() < 16 {
                return -EINVAL;
            }
            let sec = i64::from_ne_bytes(bytes[..8].try_into().expect("8"));
            let usec = i64::from_ne_bytes(bytes[8..16].try_into().expect("8"));
            if sec < 0 || !(0..1_000_000).contains(&usec) {
                return -EDOM;
            }
            let d = Duration::new(sec as u64, usec as u32 * 1000);
            let v = (!d.is_zero()).then_some(d.min(Duration::from_secs(1 << 32)));
            if opt == libc::SO_RCVTIMEO {
                sock.rcvtimeo = v;
            } else {
                sock.sndtimeo = v;
            }
            return 0;
        }
        if !PASS_OPTIONS.contains(&(level, opt)) {
            return -ENOPROTOOPT;
        }
        match sock.host() {
            Ok(h) => match hostnet::setsockopt(h.as_fd(), level, opt, &bytes) {
                Ok(()) => 0,
                Err(e) => e,
            },
            Err(e) => e,
        }
    }

    fn sys_getsockopt(&mut self, fd: i32, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        let (level, opt, val, len_at) = (a[1] as i32, a[2] as i32, a[3], a[4]);
        let Ok(lb) = mem.read_vec(len_at, 4) else {
            return -EFAULT;
        };
        let room = i32::from_ne_bytes(lb[..4].try_into().expect("4"));
        if room < 0 {
            return -EINVAL;
        }
        let sock = match self.socket(fd) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let bytes: Vec<u8> =
            if level == libc::SOL_SOCKET && matches!(opt, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO) {
                let d = if opt == libc::SO_RCVTIMEO {
                    sock.rcvtimeo
                } else {
                    sock.sndtimeo
                }
                .unwrap_or_default();
                [
                    (d.as_secs() as i64).to_ne_bytes(),
                    i64::from(d.subsec_micros()).to_ne_bytes(),
                ]
                .concat()
            } else if PASS_OPTIONS.contains(&(level, opt)) {
                let h = match sock.host() {
                    Ok(h) => h,
                    Err(e) => return e,
                };
                let mut v = vec![0u8; (room as usize).min(256)];
                match hostnet::getsockopt(h.as_fd(), level, opt, &mut v) {
                    Ok(n) => {
                        v.truncate(n);
                        v
                    }
                    Err(e) => return e,
                }
            } else {
                return -ENOPROTOOPT;
            };
        let n = bytes.len().min(room as usize);
        if mem.write(val, &bytes[..n]).is_err()
            || mem.write(len_at, &(n as u32).to_ne_bytes()).is_err()
        {
            return -EFAULT;
        }
        0
    }
}
