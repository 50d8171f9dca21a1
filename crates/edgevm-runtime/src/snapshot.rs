//! Snapshot files (`cold_start_file`, the server's `snapshot_dir`): a program frozen at
//! `wait_for_requests()` written to disk, so the next start maps it instead of booting.
//!
//! A file holds the frozen image (the pages the main VM wrote; holes stay holes), the CPU
//! state at the frozen point (registers, FS/GS bases, the FPU/SSE/AVX image the request entry
//! stub restores, which lives in the image), the emulated process state (heap and mmap
//! bounds, signal actions), the handlers, the program's ELF description with its function
//! symbols (for crash reports: a start does not parse the binary), the regexes compiled in
//! `main()` (their patterns, compiled again) and `sys_make_ephemeral()`'s choice. Its identity: edgevm's version and
//! snapshot format, the SHA-256 of the program's binary, the settings that shape the image
//! (name, group, path, arguments, environment, memory sizes, warmup, the state file's
//! identity) and the host CPU (vendor, model, feature bits, XCR0, kvm_pvm or not). A file
//! whose identity differs from the program's now is *stale*; one whose checksums (SHA-256 of
//! the metadata, CRC-32 of the image data: a damaged page, not a forged one — see the
//! directory rule below) or structure are wrong is *corrupt*. The binary is read and its
//! SHA-256 computed at load only when its file is not the very file the snapshot was written
//! from (device, inode, size, modification and change times, recorded when its content was
//! verified and it had not changed for `SETTLED`; docs/DESIGN.md, "Snapshot files"). Either is ignored
//! with a log line and the program boots as usual (and writes a new file); neither is ever
//! run.
//!
//! Layout: a 96-byte header (`EDGEVMSN`, format, metadata length, data length, checksums),
//! the metadata ([`edgevm_abi::snapcodec`]), zero padding to a page, the data extents one
//! after the other. Written to a fresh temporary file in the same directory (`O_EXCL`,
//! `O_NOFOLLOW`, mode 0600), synced, then renamed over the old file: a reader sees the old
//! file or the new one, never a part. Read with `O_NOFOLLOW | O_NONBLOCK`: a symbolic link,
//! a FIFO or anything but a regular file is refused. The supervisor structures (GDT, IDT,
//! stubs, page tables) are written again by this edgevm after loading, so a snapshot never
//! brings in another build's system code.
//!
//! Not snapshotted (the program boots every time, with a log line): programs with a storage
//! VM (its state is not in the file), programs with host files open at
//! `wait_for_requests()`, programs with `allowed_paths` and dynamically linked ones (what
//! `main()` read from host files could change unseen).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgevm_abi::elf;
use edgevm_abi::layout::{self};
use edgevm_abi::snapcodec::{Reader, Writer};
use edgevm_kvm::PAGE_SIZE;
use sha2::{Digest, Sha256};

use crate::settings::ProgramSettings;
use crate::vm::Frozen;

mod load;
pub use load::load;

/// File magic.
const MAGIC: &[u8; 8] = b"EDGEVMSN";
/// Snapshot format version (bumped whenever what is written changes).
pub const FORMAT: u64 = 5;
/// Header: magic, format, metadata length, data length, CRC-32 of the data (8 bytes, then 24
/// zero), SHA-256 of the metadata (checked before anything in it is believed).
const HEADER: usize = 96;
/// Largest metadata block read (the binary's function symbols are the largest part).
const MAX_META: u64 = 64 << 20;

/// Why a snapshot was not used or not written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No file yet.
    #[error("no snapshot file")]
    Missing,
    /// The file is not one this program may use now (it says why).
    #[error("stale: {0}")]
    Stale(String),
    /// The file is damaged or not a snapshot.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The file is not a regular file (a symbolic link, a FIFO, a directory).
    #[error("refused: {0}")]
    Refused(String),
    /// This program cannot be snapshotted.
    #[error("not snapshotted: {0}")]
    Unsupported(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
    /// The program's binary was not read, and its file is not the one the snapshot was
    /// written from (or the snapshot recorded none): read it and load again.
    #[error("the binary must be read to check the snapshot")]
    BinaryUnread,
}

/// edgevm's version as written into snapshots, with the address-space constants a program's
/// image depends on.
fn edgevm_version() -> String {
    format!(
        "edgevm {} snapshot {FORMAT} vdso {:016x} layout {:#x}/{:#x}/{:#x}/{:#x}/{:#x}/{:#x}",
        env!("CARGO_PKG_VERSION"),
        // A program keeps pointers into the vDSO it started with.
        edgevm_kvm::vdso::image_id(),
        layout::USER_BASE,
        layout::TABLES_SIZE,
        layout::PIE_BASE,
        layout::STACK_SIZE,
        layout::INPUT_AREA_SIZE,
        layout::IO_AREA,
    )
}

/// The host CPU as a program's image may depend on it (glibc picks string functions by CPUID
/// at start; the FPU image follows XCR0). Computed once: CPUID traps to the hypervisor when
/// edgevm itself runs in a VM.
fn host_identity() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(host_identity_now)
}

fn host_identity_now() -> String {
    use std::arch::x86_64::__cpuid_count;
    let l0 = __cpuid_count(0, 0);
    let l1 = __cpuid_count(1, 0);
    let l7 = __cpuid_count(7, 0);
    format!(
        "cpu {:08x}{:08x}{:08x} {:08x} {:08x}/{:08x} {:08x}/{:08x}/{:08x} xcr0 {:?} pvm {} user_xsave {} user_fsgsbase {}",
        l0.ebx,
        l0.edx,
        l0.ecx,
        l1.eax,
        // Leaf 1 ECX/EDX without the APIC id and the OSXSAVE bit of the moment.
        l1.ecx & !(1 << 27),
        l1.edx,
        l7.ebx,
        l7.ecx,
        l7.edx,
        edgevm_kvm::KvmVcpu::guest_xcr0(),
        edgevm_kvm::is_kvm_pvm(),
        edgevm_kvm::guest_user_xsave(),
        edgevm_kvm::guest_user_fsgsbase(),
    )
}

/// What readlink("/proc/self/exe") answers for this program (as [`crate::vm::MainVm::load`]
/// computes it).
fn exe_path(settings: &ProgramSettings) -> String {
    let p = &settings.vm.program_path;
    let exe = std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.clone())
        .to_string_lossy()
        .into_owned();
    if exe.starts_with('/') {
        exe
    } else {
        format!("/{exe}")
    }
}

/// The settings that shape a program's frozen image, one per line.
fn settings_identity(s: &ProgramSettings) -> String {
    let o = &s.vm;
    let mut t = String::new();
    let mut line = |k: &str, v: String| {
        t.push_str(k);
        t.push_str(": ");
        t.push_str(&v);
        t.push('\n');
    };
    line("name", format!("{:?}", o.name));
    line("group", format!("{:?}", o.group));
    line("program path", format!("{:?}", exe_path(s)));
    line("main_arguments", format!("{:?}", o.arguments));
    line(
        "environment",
        format!("{:?}", crate::vm::program_environment(o)),
    );
    line("max_memory", o.max_memory.to_string());
    line("address space", o.memory_size().to_string());
    line("shared_memory", o.shared_memory.to_string());
    line("control_ephemeral", o.control_ephemeral.to_string());
    line("current_working_directory", format!("{:?}", o.cwd));
    line(
        "warmup",
        match &s.warmup {
            None => "none".into(),
            Some(w) => format!(
                "{} {:?} {:?} {:?}",
                w.num_requests, w.method, w.url, w.headers
            ),
        },
    );
    // The file sandbox main() saw (not the contents of the files in it).
    if !o.allowed_paths.is_empty() || o.cwd != "/" {
        line("files", format!("{:?} cwd {:?}", o.allowed_paths, o.cwd));
    }
    // main() may read the state file: a different file is a different image.
    line(
        "state file",
        match &o.state_file {
            None => "none".into(),
            Some(p) => match std::fs::metadata(p) {
                Ok(m) => format!(
                    "{p:?} size {} mtime {}.{:09} inode {}",
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ino()
                ),
                Err(_) => format!("{p:?} absent"),
            },
        },
    );
    t
}

/// Device, inode, size, modification and change times of a file ("" when it cannot be read):
/// a file that still has all of them holds the same bytes (any write changes the change time;
/// a replaced file is another inode).
fn file_identity(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => format!(
            "{} {} {} {}.{} {}.{}",
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ),
        _ => String::new(),
    }
}

/// How long before the snapshot is written its program's file must have been changed last
/// for its identity to be trusted.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(3);

/// [`file_identity`] of the program's file if its content now is the binary the image was
/// booted from (read between two equal identities) and it was last changed at least
/// [`SETTLED`] ago, else "" (every load then reads and hashes the binary).
///
/// Why the age: file times come from a coarse clock (one tick: 1-10 ms, on some file systems
/// up to 2 s), so a file rewritten within the same tick as the identity was taken would keep
/// its times, size and inode while its bytes changed. A file last changed well before gets,
/// on any later write, a change time after the recorded one (the kernel sets it on every
/// write; it cannot be set by hand) — unless the system clock is stepped back by more than
/// [`SETTLED`] in between, which only root can do, and root can as well rewrite the
/// snapshot itself.
fn verified_file_identity(s: &ProgramSettings) -> String {
    let p = &s.vm.program_path;
    let before = file_identity(p);
    let same = std::fs::read(p).is_ok_and(|b| b == *s.vm.binary);
    if before.is_empty() || !same || file_identity(p) != before || !settled(p) {
        return String::new();
    }
    before
}

/// Whether `path` was last modified and changed at least [`SETTLED`] ago.
fn settled(path: &Path) -> bool {
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let limit = now - SETTLED.as_secs() as i64;
    m.mtime() < limit && m.ctime() < limit
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether (and why not) a program can be started from or written to a snapshot.
pub fn supported(s: &ProgramSettings) -> Result<(), SnapshotError> {
    if s.storage {
        return Err(SnapshotError::Unsupported(
            "the program has a storage VM, whose state a snapshot does not hold".into(),
        ));
    }
    if !s.vm.allowed_paths.is_empty() {
        return Err(SnapshotError::Unsupported(
            "main() may read host files (allowed_paths), whose later changes a snapshot would not see"
                .into(),
        ));
    }
    if matches!(elf::interpreter(&s.vm.binary), Ok(Some(_))) {
        return Err(SnapshotError::Unsupported(
            "a dynamically linked program: its libraries are host files a snapshot would not see change"
                .into(),
        ));
    }
    Ok(())
}

fn put_regs(w: &mut Writer, r: &kvm_bindings::kvm_regs) {
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        w.u64(v);
    }
}

fn get_regs(r: &mut Reader) -> Result<kvm_bindings::kvm_regs, SnapshotError> {
    let mut v = [0u64; 18];
    for x in &mut v {
        *x = r.u64().map_err(corrupt)?;
    }
    Ok(kvm_bindings::kvm_regs {
        rax: v[0],
        rbx: v[1],
        rcx: v[2],
        rdx: v[3],
        rsi: v[4],
        rdi: v[5],
        rsp: v[6],
        rbp: v[7],
        r8: v[8],
        r9: v[9],
        r10: v[10],
        r11: v[11],
        r12: v[12],
        r13: v[13],
        r14: v[14],
        r15: v[15],
        rip: v[16],
        rflags: v[17],
    })
}

fn corrupt(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Corrupt(e.to_string())
}

fn io<'a>(what: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    let what = what.to_string();
    move |e| SnapshotError::Io(format!("{what} {}: {e}", path.display()))
}

/// The directory of a snapshot file, refused when every user may write it (anybody could
/// plant a file there that this server would run).
fn check_dir(path: &Path) -> Result<&Path, SnapshotError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let md = std::fs::metadata(dir).map_err(io("cannot use the directory", dir))?;
    if !md.is_dir() {
        return Err(SnapshotError::Refused(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if md.permissions().mode() & 0o002 != 0 {
        return Err(SnapshotError::Refused(format!(
            "the directory {} is writable by every user",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Write `frozen` (booted with `settings`) to `path`, atomically. Returns the file's size.
pub fn save(
    frozen: &Frozen,
    settings: &ProgramSettings,
    path: &Path,
) -> Result<u64, SnapshotError> {
    supported(settings)?;
    let dir = check_dir(path)?;
    let binary = &settings.vm.binary;
    if binary.is_empty() {
        return Err(SnapshotError::Unsupported(
            "the binary is not at hand".into(),
        ));
    }
    let (meta, extents, data_len) = metadata(frozen, settings, binary)?;
    let pad = pad_after_meta(meta.len());
    // The data, read from the image in chunks, hashed as it goes.
    let mut hasher = crc32fast::Hasher::new();
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{:x}",
        path.file_name()
            .map_or("snapshot".into(), |n| n.to_string_lossy()),
        std::process::id(),
        rand_suffix()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io("cannot create", &tmp))?;
        // Header placeholder; the checksum is known at the end.
        f.write_all(&[0u8; HEADER])
            .map_err(io("cannot write", &tmp))?;
        f.write_all(&meta).map_err(io("cannot write", &tmp))?;
        f.write_all(&vec![0u8; pad])
            .map_err(io("cannot write", &tmp))?;
        let mut buf = vec![0u8; 1 << 20];
        for &(a, b) in &extents {
            let mut at = a;
            while at < b {
                let n = (b - at).min(buf.len());
                frozen
                    .image
                    .read_raw(at as u64, &mut buf[..n])
                    .map_err(|e| SnapshotError::Io(e.to_string()))?;
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(io("cannot write", &tmp))?;
                at += n;
            }
        }
        let sum = u64::from(hasher.finalize());
        let mut head = [0u8; HEADER];
        head[0..8].copy_from_slice(MAGIC);
        head[8..16].copy_from_slice(&FORMAT.to_le_bytes());
        head[16..24].copy_from_slice(&(meta.len() as u64).to_le_bytes());
        head[24..32].copy_from_slice(&data_len.to_le_bytes());
        head[32..40].copy_from_slice(&sum.to_le_bytes());
        head[64..96].copy_from_slice(&sha256(&meta));
        use std::os::unix::fs::FileExt;
        f.write_all_at(&head, 0).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot sync", &tmp))?;
        let size = f.metadata().map_err(io("cannot stat", &tmp))?.len();
        std::fs::rename(&tmp, path).map_err(io("cannot rename to", path))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(size)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A snapshot's metadata section, its data extents (start, end) and the data length.
type Meta = (Vec<u8>, Vec<(usize, usize)>, u64);

/// The metadata section of `frozen`'s snapshot, its data extents and the data length.
fn metadata(
    frozen: &Frozen,
    settings: &ProgramSettings,
    binary: &[u8],
) -> Result<Meta, SnapshotError> {
    let mut w = Writer::default();
    w.str(&edgevm_version())
        .bytes(&sha256(binary))
        .str(&verified_file_identity(settings))
        .str(&settings_identity(settings))
        .str(host_identity())
        .u64(frozen.image.size() as u64);
    put_regs(&mut w, &frozen.regs);
    w.u64(frozen.fs_base)
        .u64(frozen.gs_base)
        .u64(u64::from(frozen.use_xsave));
    let h = &frozen.handlers;
    for v in [
        h.get,
        h.post,
        h.request,
        h.stream_post,
        h.on_error,
        h.on_live_update,
        h.on_live_restore,
        h.socket_pause,
    ] {
        w.u64(v);
    }
    w.u64(match frozen.ephemeral_override {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    match frozen.paused {
        None => w.u64(0),
        Some(req) => w.u64(1).u64(req),
    };
    frozen
        .linux
        .save(&mut w)
        .map_err(SnapshotError::Unsupported)?;
    frozen.elf.save(&mut w);
    frozen.linux.save_protections(&frozen.image, &mut w);
    let patterns = frozen.regex.patterns();
    w.u64(patterns.len() as u64);
    for p in &patterns {
        match p {
            None => w.u64(0),
            Some(p) => w.u64(1).str(p),
        };
    }
    let extents = frozen.image.data_extents();
    w.u64(extents.len() as u64);
    let mut data_len = 0u64;
    for &(a, b) in &extents {
        w.u64(a as u64).u64((b - a) as u64);
        data_len += (b - a) as u64;
    }
    let meta = w.0;
    Ok((meta, extents, data_len))
}

fn pad_after_meta(meta_len: usize) -> usize {
    (HEADER + meta_len).next_multiple_of(PAGE_SIZE) - HEADER - meta_len
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    edgevm_abi::linux::fill_random(&mut b);
    u64::from_le_bytes(b)
}

/// `dir/<program>.snapshot`: a program's file in the server's snapshot directory.
pub fn file_in(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("{program}.snapshot"))
}

impl crate::pool::Program {
    /// The program's frozen state from its snapshot file, if it has a valid one. A stale,
    /// corrupt or refused file is logged and counted; the caller boots instead.
    pub(crate) fn load_snapshot(&self, settings: &ProgramSettings) -> Option<Arc<Frozen>> {
        use std::sync::atomic::Ordering;
        let path = settings.snapshot.as_deref()?;
        let t = std::time::Instant::now();
        match load(settings, path) {
            // Without the binary (see `load_snapshot_unread`): nothing to say yet.
            Err(SnapshotError::BinaryUnread) => None,
            Ok(f) => {
                self.stats.snapshot_starts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "Program '{}' started from its snapshot {} ({} KiB in {:.2} ms)",
                    self.name,
                    path.display(),
                    f.image.allocated_bytes() >> 10,
                    t.elapsed().as_secs_f64() * 1e3
                );
                Some(Arc::new(f))
            }
            Err(SnapshotError::Missing) => None,
            Err(e @ SnapshotError::Unsupported(_)) => {
                tracing::info!("Program '{}': snapshot {}: {e}", self.name, path.display());
                None
            }
            Err(e) => {
                self.stats.snapshot_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "Program '{}': snapshot {} ignored, booting instead: {e}",
                    self.name,
                    path.display()
                );
                None
            }
        }
    }

    /// [`Program::load_snapshot`] before the binary is read, for a program whose loader reads
    /// only its local file: a snapshot written from that very file, unchanged since (its
    /// recorded identity, see `verified_file_identity`), starts without reading it. None in
    /// every other case, silently: the caller reads the binary and calls `load_snapshot`,
    /// which says why a file is not used.
    pub(crate) fn load_snapshot_unread(&self, settings: &ProgramSettings) -> Option<Arc<Frozen>> {
        let only = settings.loader.as_ref()?.1.as_deref()?;
        if settings.storage || only != settings.vm.program_path || !settings.vm.binary.is_empty() {
            return None;
        }
        let path = settings.snapshot.as_deref()?;
        // Cheap refusals first: no file, or not the recorded binary file (load says which).
        if !path.exists() {
            return None;
        }
        let t = std::time::Instant::now();
        let f = load(settings, path).ok()?;
        self.stats
            .snapshot_starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "Program '{}' started from its snapshot {} ({} KiB in {:.2} ms; its binary not read: the file the snapshot was written from is unchanged)",
            self.name,
            path.display(),
            f.image.allocated_bytes() >> 10,
            t.elapsed().as_secs_f64() * 1e3
        );
        Some(Arc::new(f))
    }

    /// Write the program's snapshot file after a boot (if it has one); failures are logged.
    pub(crate) fn write_snapshot(&self, frozen: &Frozen, settings: &ProgramSettings) {
        use std::sync::atomic::Ordering;
        let Some(path) = settings.snapshot.as_deref() else {
            return;
        };
        let t = std::time::Instant::now();
        match save(frozen, settings, path) {
            Ok(size) => {
                self.stats.snapshot_writes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "Program '{}': snapshot written to {} ({} KiB in {:.2} ms)",
                    self.name,
                    path.display(),
                    size >> 10,
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e @ SnapshotError::Unsupported(_)) => {
                tracing::info!("Program '{}': snapshot {}: {e}", self.name, path.display())
            }
            Err(e) => tracing::warn!(
                "Program '{}': cannot write the snapshot {}: {e}",
                self.name,
                path.display()
            ),
        }
    }
}
