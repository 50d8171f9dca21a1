//! The Linux x86_64 structs the emulation reads and writes in guest memory, as `#[repr(C)]`
//! structs with derived byte conversion (no byte offsets in the call handlers).

use edgevm_kvm::GuestMemory;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::errno::EFAULT;

/// Write `v` at `addr`: 0, or -EFAULT.
pub(crate) fn put<T: IntoBytes + Immutable>(mem: &mut GuestMemory, addr: u64, v: &T) -> i64 {
    match mem.write(addr, v.as_bytes()) {
        Ok(()) => 0,
        Err(_) => -EFAULT,
    }
}

/// Read a `T` at `addr`; None if it is not all in guest memory.
pub(crate) fn get<T: FromBytes + IntoBytes>(mem: &GuestMemory, addr: u64) -> Option<T> {
    let mut v = T::new_zeroed();
    mem.read(addr, v.as_mut_bytes()).ok()?;
    Some(v)
}

/// `struct timespec`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Timespec {
    pub tv_sec: i64,
    pub tv_nsec: i64,
}

/// `struct timeval`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Timeval {
    pub tv_sec: i64,
    pub tv_usec: i64,
}

/// `struct rlimit`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Rlimit {
    pub cur: u64,
    pub max: u64,
}

/// `struct pollfd`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct PollFd {
    pub fd: i32,
    pub events: i16,
    pub revents: i16,
}

/// `struct winsize`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Winsize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

/// The kernel's `struct termios` (not glibc's larger one).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; 19],
}

/// `stack_t` (sigaltstack).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct StackT {
    pub sp: u64,
    pub flags: i32,
    pub _pad: u32,
    pub size: u64,
}

/// `struct stat` (x86_64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad0: u32,
    pub rdev: u64,
    pub size: i64,
    pub blksize: i64,
    pub blocks: i64,
    pub atime: i64,
    pub atime_nsec: i64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
    pub _unused: [i64; 3],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<Stat>() == 144);
    assert!(offset_of!(Stat, mode) == 24);
    assert!(offset_of!(Stat, size) == 48);
    assert!(offset_of!(Stat, blksize) == 56);
    assert!(offset_of!(Stat, atime) == 72);
    assert!(offset_of!(Stat, ctime_nsec) == 112);
    assert!(size_of::<Termios>() == 36);
    assert!(size_of::<StackT>() == 24);
    assert!(offset_of!(StackT, flags) == 8);
    assert!(size_of::<PollFd>() == 8);
    assert!(offset_of!(PollFd, revents) == 6);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts agree with the host's libc (the same x86_64 Linux ABI).
    #[test]
    fn layouts_match_libc() {
        use core::mem::{offset_of, size_of};
        assert_eq!(size_of::<Stat>(), size_of::<libc::stat>());
        assert_eq!(offset_of!(Stat, mode), offset_of!(libc::stat, st_mode));
        assert_eq!(offset_of!(Stat, size), offset_of!(libc::stat, st_size));
        assert_eq!(offset_of!(Stat, blocks), offset_of!(libc::stat, st_blocks));
        assert_eq!(
            offset_of!(Stat, mtime_nsec),
            offset_of!(libc::stat, st_mtime_nsec)
        );
        assert_eq!(size_of::<Timespec>(), size_of::<libc::timespec>());
        assert_eq!(size_of::<Timeval>(), size_of::<libc::timeval>());
        assert_eq!(size_of::<Rlimit>(), size_of::<libc::rlimit>());
        assert_eq!(size_of::<PollFd>(), size_of::<libc::pollfd>());
        assert_eq!(size_of::<Winsize>(), size_of::<libc::winsize>());
        assert_eq!(size_of::<StackT>(), size_of::<libc::stack_t>());
        assert_eq!(offset_of!(StackT, size), offset_of!(libc::stack_t, ss_size));
    }
}
