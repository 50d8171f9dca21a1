//! Linux error numbers, from one place: libc's constants as the negative-return `i64`s the
//! system call emulation uses, and their names for logs (nix).

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("`", stringify!($name), "`.")]
            pub const $name: i64 = libc::$name as i64;
        )*
    };
}

errnos!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    EBADF,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EEXIST,
    ENODEV,
    ENOTDIR,
    EINVAL,
    EMFILE,
    ENOTTY,
    EFBIG,
    ESPIPE,
    EROFS,
    ERANGE,
    ENOSYS,
    ETIMEDOUT,
    ENAMETOOLONG,
    EBUSY,
    EXDEV,
    ELOOP,
    EISDIR,
    EPIPE,
    EOVERFLOW,
    ENODATA,
    EAFNOSUPPORT,
    ENOTCONN,
    ENOTSOCK,
    EPROTONOSUPPORT,
    ECONNREFUSED,
    EINPROGRESS,
    EOPNOTSUPP,
    ENOBUFS,
    ENOPROTOOPT,
    EDOM,
);

/// The name of error number `e` (positive), e.g. "ENOENT"; "E?" if it has none.
pub fn name(e: i64) -> String {
    match i32::try_from(e).map(nix::errno::Errno::from_raw) {
        Ok(nix::errno::Errno::UnknownErrno) | Err(_) => "E?".into(),
        Ok(n) => format!("{n:?}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::name(super::ENOENT), "ENOENT");
        assert_eq!(super::name(super::EROFS), "EROFS");
        assert_eq!(super::name(4095), "E?");
    }
}
