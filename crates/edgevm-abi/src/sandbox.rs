//! The file sandbox: which host files a guest may reach, under which names (`allowed_paths`).
//!
//! The guest sees a virtual file tree made only of what the configuration lists: each
//! [`PathRule`] maps a virtual path to a real host path (a file or a directory tree). Guest
//! paths are made absolute (against the current working directory) and normalized lexically
//! (`.` and `..` are resolved on the guest's names, never on host names), then matched against
//! the rules, the most specific (longest) virtual path first:
//!
//! * a plain rule matches its virtual path and, when its real path is a directory, everything
//!   below it (`/v/a/b` -> `real/a/b`);
//! * a `prefix` rule matches any path that starts with its virtual path as a string
//!   (`/cache/remote` matches `/cache/remote/x` and `/cache/remote2`);
//! * a `symlink` rule is a symbolic link at its virtual path whose target is its real path:
//!   `readlink` answers it, `lstat` shows a link, `open`/`stat` follow it to the real file;
//! * proper ancestors of virtual paths are read-only virtual directories listing the next
//!   component of each rule below them (so `/` lists the top of every rule).
//!
//! Confinement is the kernel's: below a rule's real directory, the rest of the path is resolved
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to a descriptor of that
//! directory, so neither `..` nor a symbolic link (absolute or relative, including one swapped
//! in while the call runs) nor a /proc magic link can leave it; such a path fails (`EXDEV` or
//! `ELOOP` from the kernel). Where a prefix rule's match extends its last component
//! (`/cache/remote2/...`), that first component is opened with `RESOLVE_NO_SYMLINKS` too, so it
//! cannot lead to a sibling the prefix does not name. A rule's own real path is the
//! configuration's, opened as given. Names are never looked up by string comparison with host
//! paths: the string matching above only picks the rule.
//!
//! Writes (`O_WRONLY`/`O_RDWR`/`O_CREAT`/`O_TRUNC`, `mkdir`, `rename`, `unlink`, `ftruncate`)
//! need a `writable` rule (else `EROFS`), and the caller decides whether this VM may write at
//! all (request VMs never do).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};

use crate::errno::*;

/// Longest guest path accepted (PATH_MAX).
pub const PATH_MAX: usize = 4096;

/// One entry of `allowed_paths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    /// The path the guest uses (absolute, normalized).
    pub virt: Vec<u8>,
    /// The host path.
    pub real: PathBuf,
    /// Match any guest path that starts with `virt`.
    pub prefix: bool,
    /// Writes allowed (main and storage VMs only).
    pub writable: bool,
    /// A symbolic link at `virt` pointing to `real`.
    pub symlink: bool,
}

impl PathRule {
    /// The 1:1 rule for `path` (a string entry of `allowed_paths`).
    pub fn same(path: &str) -> PathRule {
        PathRule {
            virt: normalize(b"/", path.as_bytes()).unwrap_or_else(|_| b"/".to_vec()),
            real: PathBuf::from(path),
            prefix: false,
            writable: false,
            symlink: false,
        }
    }
}

/// The rules of one program, most specific first.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    rules: Vec<PathRule>,
}

/// What a guest path names.
#[derive(Debug)]
pub enum Target<'a> {
    /// A host object: `base` (a rule's real path, or for a prefix rule extending its last
    /// component, the real path's parent) and the guest's remainder below it (no `.`/`..`
    /// components; empty: `base` itself).
    Host {
        /// The rule.
        rule: &'a PathRule,
        /// Host path the remainder is resolved beneath.
        base: PathBuf,
        /// Remainder (relative, `/`-separated).
        rel: Vec<u8>,
        /// The first component of `rel` must not be a symbolic link (prefix extension).
        strict_first: bool,
    },
    /// A symlink rule: the link itself.
    Link(&'a PathRule),
    /// A virtual directory with these entries (sorted, unique).
    VirtualDir(Vec<Vec<u8>>),
}

/// Make `path` absolute against `cwd` and resolve `.`, `..` and repeated slashes on the names.
/// A trailing slash is kept as a trailing "/" (the path must then be a directory).
pub fn normalize(cwd: &[u8], path: &[u8]) -> Result<Vec<u8>, i64> {
    if path.is_empty() {
        return Err(-ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(-ENAMETOOLONG);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    let full: Vec<u8>;
    let src = if path[0] == b'/' {
        path
    } else {
        full = [cwd, b"/", path].concat();
        &full
    };
    for c in src.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(src.len() + 1);
    for c in &parts {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    let last = path.rsplit(|&b| b == b'/').next();
    let trailing = matches!(last, Some(b"" | b"." | b".."));
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    Ok(out)
}

fn errno(e: rustix::io::Errno) -> i64 {
    -i64::from(e.raw_os_error())
}

impl Sandbox {
    /// A sandbox of these rules (virtual paths are normalized; duplicates keep the first).
    pub fn new(rules: Vec<PathRule>) -> Sandbox {
        let mut rules: Vec<PathRule> = rules
            .into_iter()
            .map(|mut r| {
                r.virt = normalize(b"/", &r.virt).unwrap_or_else(|_| b"/".to_vec());
                if r.virt.len() > 1 && r.virt.ends_with(b"/") && !r.prefix {
                    r.virt.pop();
                }
                r
            })
            .collect();
        // Stable: among equal virtual paths the first listed wins.
        rules.sort_by_key(|r| std::cmp::Reverse(r.virt.len()));
        rules.dedup_by(|a, b| a.virt == b.virt);
        Sandbox { rules }
    }

    /// The rules, most specific first.
    pub fn rules(&self) -> &[PathRule] {
        &self.rules
    }

    /// Whether no path is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What the normalized guest path `p` names (ENOENT: nothing).
    pub fn resolve(&self, p: &[u8]) -> Result<Target<'_>, i64> {
        let dir_only = p.len() > 1 && p.ends_with(b"/");
        let p = if dir_only { &p[..p.len() - 1] } else { p };
        for r in &self.rules {
            let v = &r.virt[..];
            if r.symlink {
                if p == v {
                    return Ok(Target::Link(r));
                }
                if p.starts_with(v) && p.get(v.len()) == Some(&b'/') {
                    // Below a symlink rule: through the link, like Linux would.
                    return Ok(Target::Host {
                        rule: r,
                        base: r.real.clone(),
                        rel: p[v.len() + 1..].to_vec(),
                        strict_first: false,
                    });
                }
                continue;
            }
            let rest: &[u8] = if v == b"/" {
                &p[1..]
            } else if r.prefix && p.starts_with(v) {
                let s = &p[v.len()..];
                if !s.is_empty() && s[0] != b'/' {
                    // Extends the last component: resolved from the real path's parent.
                    let name = r.real.file_name().map(OsStr::as_bytes).unwrap_or(b"");
                    let parent = r.real.parent().unwrap_or(Path::new("/"));
                    if name.is_empty() {
                        continue;
                    }
                    return Ok(Target::Host {
                        rule: r,
                        base: parent.to_path_buf(),
                        rel: [name, s].concat(),
                        strict_first: true,
                    });
                }
                s.strip_prefix(b"/").unwrap_or(s)
            } else if p == v {
                b""
            } else if p.starts_with(v) && p.get(v.len()) == Some(&b'/') {
                &p[v.len() + 1..]
            } else {
                continue;
            };
            return Ok(Target::Host {
                rule: r,
                base: r.real.clone(),
                rel: rest.to_vec(),
                strict_first: false,
            });
        }
        // A proper ancestor of some rule: a virtual directory.
        let mut names: Vec<Vec<u8>> = Vec::new();
        for r in &self.rules {
            let below = if p == b"/" {
                Some(&r.virt[1..])
            } else if r.virt.starts_with(p) && r.virt.get(p.len()) == Some(&b'/') {
                Some(&r.virt[p.len() + 1..])
            } else {
                None
            };
            if let Some(b) = below {
                let first = b.split(|&c| c == b'/').next().unwrap_or(b"");
                if !first.is_empty() {
                    names.push(first.to_vec());
                }
            }
        }
        if names.is_empty() {
            return Err(-ENOENT);
        }
        names.sort();
        names.dedup();
        Ok(Target::VirtualDir(names))
    }
}

/// Open a host object named by a [`Target::Host`]: `base` as configured, everything below it
/// by the kernel, beneath `base`. `flags` are the host open flags (O_CLOEXEC and O_NOCTTY are
/// added).
pub fn open_host(
    base: &Path,
    rel: &[u8],
    strict_first: bool,
    flags: OFlags,
    mode: u32,
) -> Result<OwnedFd, i64> {
    // O_PATH takes no other flags than O_DIRECTORY and O_NOFOLLOW under openat2.
    let flags = if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOCTTY
    };
    // openat2 refuses a mode without O_CREAT.
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(mode & 0o7777)
    } else {
        Mode::empty()
    };
    if rel.is_empty() {
        return rustix::fs::openat(CWD, base, flags, mode).map_err(errno);
    }
    let root = rustix::fs::openat(
        CWD,
        base,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let rel = OsStr::from_bytes(rel);
    if !strict_first {
        return openat2_retry(root.as_fd(), rel, flags, mode, beneath);
    }
    let bytes = rel.as_bytes();
    match bytes.iter().position(|&b| b == b'/') {
        None => openat2_retry(
            root.as_fd(),
            rel,
            flags,
            mode,
            beneath | ResolveFlags::NO_SYMLINKS,
        ),
        Some(i) => {
            let first = openat2_retry(
                root.as_fd(),
                OsStr::from_bytes(&bytes[..i]),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                beneath | ResolveFlags::NO_SYMLINKS,
            )?;
            openat2_retry(
                first.as_fd(),
                OsStr::from_bytes(&bytes[i + 1..]),
                flags,
                mode,
                beneath,
            )
        }
    }
}

/// openat2, retried a few times on EAGAIN (the kernel returns it when a rename elsewhere raced
/// with a `..` lookup); a path that keeps racing fails with EAGAIN.
fn openat2_retry(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &OsStr,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd, i64> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags, mode, resolve) {
            Err(rustix::io::Errno::AGAIN) if tries < 8 => tries += 1,
            Err(rustix::io::Errno::INTR) => {}
            r => return r.map_err(errno),
        }
    }
}

/// The directory (opened `O_PATH`, confined like [`open_host`]) that holds the last component
/// of `base`/`rel`, and that component's name: for mkdir, unlink and rename. Err(EBUSY) for a
/// rule's root itself, which only the configuration names.
pub fn parent_of(base: &Path, rel: &[u8], strict_first: bool) -> Result<(OwnedFd, Vec<u8>), i64> {
    if rel.is_empty() {
        return Err(-EBUSY);
    }
    let (dir, name) = match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b""[..], rel),
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY;
    let fd = if dir.is_empty() {
        // With strict_first, the name itself is the prefix-extended component: its parent
        // is `base`, which the configuration names.
        open_host(base, b"", false, flags, 0)?
    } else {
        open_host(base, dir, strict_first, flags, 0)?
    };
    Ok((fd, name.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical_and_never_leaves_the_root() {
        let n = |c: &str, p: &str| {
            String::from_utf8(normalize(c.as_bytes(), p.as_bytes()).unwrap()).unwrap()
        };
        assert_eq!(n("/", "a/b"), "/a/b");
        assert_eq!(n("/x/y", "../z"), "/x/z");
        assert_eq!(n("/", "../../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/", "/a/./b//c/"), "/a/b/c/");
        assert_eq!(n("/a", "."), "/a/");
        assert_eq!(n("/", "/.."), "/");
        assert_eq!(normalize(b"/", b""), Err(-ENOENT));
    }

    #[test]
    fn rules_match_most_specific_first() {
        let s = Sandbox::new(vec![
            PathRule {
                virt: b"/".to_vec(),
                real: "/home/deno".into(),
                prefix: false,
                writable: false,
                symlink: false,
            },
            PathRule::same("/dev/urandom"),
            PathRule {
                virt: b"/cache/remote".to_vec(),
                real: "/host/cache/remote".into(),
                prefix: true,
                writable: true,
                symlink: false,
            },
        ]);
        match s.resolve(b"/dev/urandom").unwrap() {
            Target::Host { base, rel, .. } => {
                assert_eq!(base, Path::new("/dev/urandom"));
                assert!(rel.is_empty());
            }
            t => panic!("{t:?}"),
        }
        match s.resolve(b"/main.ts").unwrap() {
            Target::Host { base, rel, .. } => {
                assert_eq!(base, Path::new("/home/deno"));
                assert_eq!(rel, b"main.ts");
            }
            t => panic!("{t:?}"),
        }
        match s.resolve(b"/cache/remote2/x").unwrap() {
            Target::Host {
                base,
                rel,
                strict_first,
                ..
            } => {
                assert_eq!(base, Path::new("/host/cache"));
                assert_eq!(rel, b"remote2/x");
                assert!(strict_first);
            }
            t => panic!("{t:?}"),
        }
        let only = Sandbox::new(vec![PathRule::same("/usr/lib/x/y.so")]);
        match only.resolve(b"/usr").unwrap() {
            Target::VirtualDir(n) => assert_eq!(n, vec![b"lib".to_vec()]),
            t => panic!("{t:?}"),
        }
        assert!(matches!(only.resolve(b"/usr/lib2"), Err(e) if e == -ENOENT));
        assert!(matches!(only.resolve(b"/etc/passwd"), Err(e) if e == -ENOENT));
    }
}
