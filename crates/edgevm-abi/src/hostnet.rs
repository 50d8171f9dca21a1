//! The host socket calls behind guest sockets (`linux/fds/socket.rs`): small wrappers over
//! libc, each taking owned or borrowed descriptors and host buffers (never guest pointers),
//! returning `Err(-errno)`. Every host socket is non-blocking; waiting is the emulation's.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn last_errno() -> i64 {
    -i64::from(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn check(r: isize) -> Result<usize, i64> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as usize)
    }
}

/// A host socket address in its C form.
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    /// An empty address buffer (for calls that return one).
    pub fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// An IPv4 or IPv6 address.
    pub fn ip(a: SocketAddr) -> RawAddr {
        let mut r = RawAddr::empty();
        let b = r.bytes_mut();
        match a {
            SocketAddr::V4(v4) => {
                b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&v4.port().to_be_bytes());
                b[4..8].copy_from_slice(&v4.ip().octets());
                r.len = 16;
            }
            SocketAddr::V6(v6) => {
                b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&v6.port().to_be_bytes());
                b[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
                b[8..24].copy_from_slice(&v6.ip().octets());
                b[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
                r.len = 28;
            }
        }
        r
    }

    /// A Unix socket path (at most 107 bytes).
    pub fn unix(path: &[u8]) -> Option<RawAddr> {
        if path.len() > 107 {
            return None;
        }
        let mut r = RawAddr::empty();
        let b = r.bytes_mut();
        b[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        b[2..2 + path.len()].copy_from_slice(path);
        r.len = (2 + path.len() + 1) as libc::socklen_t;
        Some(r)
    }

    /// AF_UNSPEC (connect(2) dissolves a datagram socket's association).
    pub fn unspec() -> RawAddr {
        let mut r = RawAddr::empty();
        r.len = 2;
        r
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: sockaddr_storage is plain data of this size, exclusively borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(
                (&mut self.storage as *mut libc::sockaddr_storage).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_storage>(),
            )
        }
    }

    /// The address bytes (its length as the kernel gave or was given it).
    pub fn bytes(&self) -> &[u8] {
        let n = (self.len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: as in bytes_mut, shared.
        unsafe {
            std::slice::from_raw_parts(
                (&self.storage as *const libc::sockaddr_storage).cast::<u8>(),
                n,
            )
        }
    }

    /// The address family.
    pub fn family(&self) -> i32 {
        i32::from(self.storage.ss_family)
    }
}

/// socket(domain, ty | SOCK_NONBLOCK | SOCK_CLOEXEC, proto).
pub fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, i64> {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// socketpair(AF_UNIX, ty | SOCK_NONBLOCK | SOCK_CLOEXEC, 0).
pub fn socketpair(ty: i32) -> Result<(OwnedFd, OwnedFd), i64> {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two ints into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    // SAFETY: two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// connect(2).
pub fn connect(fd: BorrowedFd<'_>, a: &RawAddr) -> Result<(), i64> {
    // SAFETY: `a.storage` is valid for `a.len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&a.storage as *const libc::sockaddr_storage).cast(),
            a.len,
        )
    };
    check(r as isize).map(|_| ())
}

/// bind(2).
pub fn bind(fd: BorrowedFd<'_>, a: &RawAddr) -> Result<(), i64> {
    // SAFETY: as in connect.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&a.storage as *const libc::sockaddr_storage).cast(),
            a.len,
        )
    };
    check(r as isize).map(|_| ())
}

/// send(2), or sendto(2) with an address.
pub fn send(
    fd: BorrowedFd<'_>,
    data: &[u8],
    flags: i32,
    to: Option<&RawAddr>,
) -> Result<usize, i64> {
    let flags = flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: `data` is valid for its length; the address (if any) for its length.
    let r = unsafe {
        match to {
            Some(a) => libc::sendto(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                flags,
                (&a.storage as *const libc::sockaddr_storage).cast(),
                a.len,
            ),
            None => libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), flags),
        }
    };
    check(r)
}

/// recvfrom(2): the bytes received (the datagram's full length with MSG_TRUNC) and the
/// sender's address.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: i32) -> Result<(usize, RawAddr), i64> {
    let mut from = RawAddr::empty();
    // SAFETY: `buf` is valid for writes of its length, `from` for its storage size.
    let r = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
            (&mut from.storage as *mut libc::sockaddr_storage).cast(),
            &mut from.len,
        )
    };
    check(r).map(|n| (n, from))
}

/// shutdown(2).
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> Result<(), i64> {
    // SAFETY: no pointers.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) } as isize).map(|_| ())
}

/// getsockname(2) (peer: getpeername(2)).
pub fn name(fd: BorrowedFd<'_>, peer: bool) -> Result<RawAddr, i64> {
    let mut a = RawAddr::empty();
    let p = (&mut a.storage as *mut libc::sockaddr_storage).cast();
    // SAFETY: `a.storage` is valid for `a.len` bytes of writes.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut a.len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut a.len)
        }
    };
    check(r as isize).map(|_| a)
}

/// setsockopt(2) with the option's bytes.
pub fn setsockopt(fd: BorrowedFd<'_>, level: i32, opt: i32, val: &[u8]) -> Result<(), i64> {
    // SAFETY: `val` is valid for its length.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    };
    check(r as isize).map(|_| ())
}

/// getsockopt(2) into `val`: the length the kernel gave.
pub fn getsockopt(fd: BorrowedFd<'_>, level: i32, opt: i32, val: &mut [u8]) -> Result<usize, i64> {
    let mut len = val.len() as libc::socklen_t;
    // SAFETY: `val` is valid for writes of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check(r as isize).map(|_| len as usize)
}

/// The pending error of a socket (SO_ERROR), as -errno (0: none).
pub fn take_error(fd: BorrowedFd<'_>) -> i64 {
    let mut v = [0u8; 4];
    match getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut v) {
        Ok(_) => -i64::from(i32::from_ne_bytes(v)),
        Err(e) => e,
    }
}

/// poll(2) one descriptor without waiting: its revents.
pub fn poll_now(fd: BorrowedFd<'_>, events: i16) -> i16 {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        0
    } else {
        p.revents
    }
}

/// Bytes waiting to be read (FIONREAD).
pub fn readable_bytes(fd: BorrowedFd<'_>) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}
