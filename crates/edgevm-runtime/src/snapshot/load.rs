//! Reading a snapshot file: header and checksums, identity (version, binary, settings, host),
//! the frozen state, and the image; anything wrong is an error, never run.

use super::*;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use edgevm_abi::cpu;
use edgevm_abi::elf;
use edgevm_abi::layout::Layout;
use edgevm_abi::linux::{LinuxConfig, LinuxState};
use edgevm_abi::regex::Regexes;
use edgevm_abi::snapcodec::Reader;
use edgevm_kvm::{MainMemory, PAGE_SIZE};

use crate::settings::ProgramSettings;
use crate::vm::{Frozen, Handlers};

/// Read the snapshot at `path` for a program with `settings` (its binary at hand): a frozen
/// program ready to fork request VMs from, or why the file cannot be used.
pub fn load(settings: &ProgramSettings, path: &Path) -> Result<Frozen, SnapshotError> {
    supported(settings)?;
    let t0 = std::time::Instant::now();
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let mut phase = |name: &'static str| phases.push((name, t0.elapsed().as_secs_f64() * 1e3));
    check_dir(path)?;
    let o = &settings.vm;
    let size = o.memory_size();
    let (mut f, head, meta, data_len) = open_checked(path, size)?;
    let mut r = Reader::new(&meta);
    // Identity first: a stale file says why.
    let (binary_hash, binary_file, ident, host) = read_identity(&mut r)?;
    phase("header and metadata");
    check_identity(settings, &binary_hash, &binary_file, &ident, &host)?;
    phase("binary hash");
    if r.u64().map_err(corrupt)? != size {
        return Err(corrupt("memory size"));
    }
    let regs = get_regs(&mut r)?;
    let fs_base = r.u64().map_err(corrupt)?;
    let gs_base = r.u64().map_err(corrupt)?;
    let use_xsave = r.bool().map_err(corrupt)?;
    let (handlers, ephemeral_override, paused) = read_handlers(&mut r)?;
    let layout = Layout::new(size, o.shared_memory).map_err(SnapshotError::Io)?;
    let mut linux = LinuxState::restore(
        layout,
        LinuxConfig {
            max_memory: o.max_memory,
            exe_path: exe_path(settings),
            verbose_syscalls: false,
            state_file: o.state_file.clone(),
            allowed_paths: o.allowed_paths.clone(),
            cwd: o.cwd.clone(),
            verbose: o.verbose,
            net: Some(o.net.policy.clone()),
            executable_heap: o.executable_heap,
            blackout: o.blackout_area.clone(),
            keep_mmap_addresses: !o.relocate_fixed_mmap,
            remaps: o.remappings.clone(),
            mmap_backed_files: o.mmap_backed_files,
        },
        &mut r,
    )
    .map_err(corrupt)?;
    let elf = elf::LoadedElf::restore(&mut r).map_err(corrupt)?;
    let protections = linux.read_protections(&mut r).map_err(corrupt)?;
    let mut patterns = Vec::new();
    for _ in 0..r.count(8).map_err(corrupt)? {
        patterns.push(match r.u64().map_err(corrupt)? {
            0 => None,
            1 => Some(r.str().map_err(corrupt)?.to_string()),
            v => return Err(corrupt(format!("regex slot {v}"))),
        });
    }
    let extents = read_extents(&mut r, size, data_len)?;
    r.finish().map_err(corrupt)?;
    // The data straight into the new image, hashed on the way.
    phase("identity and state");
    let mut mem = read_image(&mut f, &head, &extents, size, data_len)?;
    phase("image read and checked");
    // This build's supervisor structures, whatever the file held there (the FPU image and
    // the entry slot the freeze wrote are not among them).
    cpu::write_system_tables(&mut mem, &layout, o.executable_heap)
        .map_err(|e| SnapshotError::Io(e.to_string()))?;
    // Page protections as the program left them, in tables this build writes.
    linux
        .protect_segments(&mut mem, &protections)
        .map_err(corrupt)?;
    mem.set_user_write_check(layout.tables);
    // The remapped areas' tables, made again from the pool (the image's are gone with the
    // system tables above), as at boot.
    let remaps = linux.map_remaps(&mut mem).map_err(corrupt)?;
    mem.set_remaps(remaps);
    mem.set_protected(crate::vm::protected_ranges(o, &layout));
    crate::vm::advise_huge_pages(&mem, o).map_err(|e| SnapshotError::Io(e.to_string()))?;
    mem.find_holes(layout.shared_start as usize);
    let regex = Regexes::from_patterns(&patterns).map_err(corrupt)?;
    phase("system tables, holes, regexes");
    tracing::debug!(
        "snapshot {} loaded: {phases:?} (ms since start)",
        path.display()
    );
    let mut opts = o.clone();
    opts.binary = Arc::default();
    Ok(Frozen {
        image: mem.freeze(),
        regs,
        fs_base,
        gs_base,
        linux,
        regex,
        handlers,
        elf,
        layout,
        opts,
        ephemeral_override,
        paused,
        use_xsave,
        // Not recorded in snapshots: multiprocess maps the workers' stacks per request.
        smp_stacks: 0,
    })
}

/// Open a snapshot file and check its header and metadata checksum: the file (at the data),
/// the header, the metadata and the data length.
fn open_checked(
    path: &Path,
    size: u64,
) -> Result<(std::fs::File, [u8; HEADER], Vec<u8>, u64), SnapshotError> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(SnapshotError::Refused(
                "it is a symbolic link (snapshots are regular files)".into(),
            ))
        }
        Err(e) => return Err(io("cannot open", path)(e)),
    };
    let md = f.metadata().map_err(io("cannot stat", path))?;
    if !md.file_type().is_file() {
        return Err(SnapshotError::Refused("not a regular file".into()));
    }
    let len = md.len();
    if len < HEADER as u64 || len > size + MAX_META + (HEADER + PAGE_SIZE) as u64 {
        return Err(corrupt(format!("file size {len}")));
    }
    let mut head = [0u8; HEADER];
    f.read_exact(&mut head).map_err(corrupt)?;
    if &head[0..8] != MAGIC {
        return Err(corrupt("not an edgevm snapshot"));
    }
    let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap_or([0; 8]));
    let (format, meta_len, data_len) = (word(8), word(16), word(24));
    if format != FORMAT {
        return Err(SnapshotError::Stale(format!(
            "snapshot format {format}, this edgevm reads format {FORMAT}"
        )));
    }
    if meta_len > MAX_META || data_len > size {
        return Err(corrupt("section sizes out of range"));
    }
    let pad = pad_after_meta(meta_len as usize) as u64;
    if HEADER as u64 + meta_len + pad + data_len != len {
        return Err(corrupt(format!(
            "file size {len} does not match its sections ({meta_len} + {data_len})"
        )));
    }
    let mut meta = vec![0u8; (meta_len + pad) as usize];
    f.read_exact(&mut meta).map_err(corrupt)?;
    meta.truncate(meta_len as usize);
    if sha256(&meta)[..] != head[64..96] {
        return Err(corrupt(
            "metadata checksum mismatch (the file was changed or damaged)",
        ));
    }
    Ok((f, head, meta, data_len))
}

/// The identity section: edgevm's version (checked here), the binary's hash and file
/// identity, the settings identity and the host.
fn read_identity(r: &mut Reader) -> Result<(Vec<u8>, String, String, String), SnapshotError> {
    let version = r.str().map_err(corrupt)?.to_string();
    let binary_hash = r.bytes().map_err(corrupt)?.to_vec();
    let binary_file = r.str().map_err(corrupt)?.to_string();
    let ident = r.str().map_err(corrupt)?.to_string();
    let host = r.str().map_err(corrupt)?.to_string();
    if version != edgevm_version() {
        return Err(SnapshotError::Stale(format!(
            "written by {version}, this is {}",
            edgevm_version()
        )));
    }
    Ok((binary_hash, binary_file, ident, host))
}

/// Whether the snapshot was written for this binary, these settings and this host.
fn check_identity(
    settings: &ProgramSettings,
    binary_hash: &[u8],
    binary_file: &str,
    ident: &str,
    host: &str,
) -> Result<(), SnapshotError> {
    let o = &settings.vm;
    let same_file = !binary_file.is_empty() && binary_file == file_identity(&o.program_path);
    let now_hash = if same_file {
        binary_hash.to_vec()
    } else if o.binary.is_empty() {
        return Err(SnapshotError::BinaryUnread);
    } else {
        sha256(&o.binary).to_vec()
    };
    if binary_hash != now_hash {
        return Err(SnapshotError::Stale(format!(
            "the program's binary changed (sha256 {} in the snapshot, {} now)",
            hex(binary_hash),
            hex(&now_hash)
        )));
    }
    let now = settings_identity(settings);
    if ident != now {
        let diff = ident
            .lines()
            .zip(now.lines())
            .find(|(a, b)| a != b)
            .map_or("settings".to_string(), |(a, b)| {
                format!("'{a}' is now '{b}'")
            });
        return Err(SnapshotError::Stale(format!(
            "written for other settings: {diff}"
        )));
    }
    if host != host_identity() {
        return Err(SnapshotError::Stale(format!(
            "written on another CPU or hypervisor ({host})"
        )));
    }
    Ok(())
}

/// The registered handlers, the ephemeral choice and the paused point.
fn read_handlers(r: &mut Reader) -> Result<(Handlers, Option<bool>, Option<u64>), SnapshotError> {
    let mut hv = [0u64; 8];
    for x in &mut hv {
        *x = r.u64().map_err(corrupt)?;
    }
    let handlers = Handlers {
        get: hv[0],
        post: hv[1],
        request: hv[2],
        stream_post: hv[3],
        on_error: hv[4],
        on_live_update: hv[5],
        on_live_restore: hv[6],
        socket_pause: hv[7],
    };
    let ephemeral_override = match r.u64().map_err(corrupt)? {
        0 => None,
        1 => Some(false),
        2 => Some(true),
        v => return Err(corrupt(format!("ephemeral choice {v}"))),
    };
    let paused = match r.u64().map_err(corrupt)? {
        0 => None,
        1 => Some(r.u64().map_err(corrupt)?),
        v => return Err(corrupt(format!("paused point {v}"))),
    };
    Ok((handlers, ephemeral_override, paused))
}

/// The data extents (address, length), in order, inside the memory, adding up to `data_len`.
fn read_extents(
    r: &mut Reader,
    size: u64,
    data_len: u64,
) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let mut extents = Vec::new();
    let (mut end, mut total) = (0u64, 0u64);
    for _ in 0..r.count(16).map_err(corrupt)? {
        let (a, n) = (r.u64().map_err(corrupt)?, r.u64().map_err(corrupt)?);
        let page = PAGE_SIZE as u64;
        if a < end || a % page != 0 || n % page != 0 || n == 0 || a.saturating_add(n) > size {
            return Err(corrupt("data extents out of order or out of range"));
        }
        end = a + n;
        total += n;
        extents.push((a, n));
    }
    if total != data_len {
        return Err(corrupt("data extents do not add up to the data length"));
    }
    Ok(extents)
}

/// Read the image data into a fresh memory (from the file into a buffer, checksummed there,
/// then into the memory's memfd: no page faults of the process), and check its CRC-32
/// against the header: the bytes checked are the bytes the memory holds, whatever happens to
/// the file afterwards (the program never maps the file itself, so a file truncated or
/// rewritten later cannot touch a running program or the server; docs/DESIGN.md, "Snapshot
/// files").
fn read_image(
    f: &mut std::fs::File,
    head: &[u8; HEADER],
    extents: &[(u64, u64)],
    size: u64,
    data_len: u64,
) -> Result<MainMemory, SnapshotError> {
    use std::io::Seek;
    let mut mem = MainMemory::new(size as usize).map_err(|e| SnapshotError::Io(e.to_string()))?;
    let mut at = f.stream_position().map_err(corrupt)?;
    let mut hasher = crc32fast::Hasher::new();
    // Small enough to stay in the CPU's caches between the read, the checksum and the write.
    let mut buf = vec![0u8; (128usize << 10).min(data_len as usize).max(1)];
    for &(a, n) in extents {
        mem.fill_from_file(f, at, a, n as usize, &mut buf, |b| hasher.update(b))
            .map_err(corrupt)?;
        at += n;
    }
    let sum = u64::from(hasher.finalize());
    if sum.to_le_bytes()[..] != head[32..40] || head[40..64].iter().any(|&b| b != 0) {
        return Err(corrupt(
            "image checksum mismatch (the file was changed or damaged)",
        ));
    }
    Ok(mem)
}
