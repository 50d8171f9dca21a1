//! The guest vDSO: `clock_gettime`, `gettimeofday`, `time`, `clock_getres` and `getcpu`
//! answered inside the VM, without a VM exit (docs/DESIGN.md, "vDSO").
//!
//! One read-only region (the "ROM", [`ROM_SIZE`] bytes of a memfd) is KVM memory slot 1 of
//! every VM, at guest-physical (= guest-virtual) [`ROM_GPA`], above every address space
//! (at most 256 GiB): the vDSO image (guest/vdso/vdso.c, built by build.rs and embedded) at
//! [`VDSO_ADDR`], read+execute, and the data page at [`VVAR_ADDR`], read-only. The guest page
//! tables that map it (the PDPT entry [`PDPT_INDEX`], a page directory and a page table) are
//! the VM's own, in its ordinary memory (`edgevm-abi` `cpu.rs`): page tables in a read-only
//! slot would make hardware KVM emulate the instructions whose page walks touch them. The slot
//! is `KVM_MEM_READONLY` and the host maps it `PROT_READ`; only this module writes the memfd,
//! through a second mapping of the data page.
//!
//! Time: the guest reads its TSC, which is the host's (every vCPU's TSC offset is set to 0
//! with `KVM_VCPU_TSC_OFFSET`; kvm_pvm's guests read the host's TSC anyway), and converts it
//! with the data page: `ns = base + ((tsc - tsc_base) * mult >> 32)` under a sequence counter.
//! A host thread ([`updater`]) re-anchors the page every second (and at once when the host's
//! real-time clock is set) so that it follows the host's `CLOCK_MONOTONIC` (NTP slews
//! included) continuously: the new base is what the old page gives at that TSC, and the
//! multiplier is chosen to close the remaining difference over the next second. The real-time,
//! boot-time and TAI clocks are offsets to the monotonic one (Linux keeps those differences
//! constant except when the clock is set). The page lives outside every image: forks, resets,
//! snapshots and live updates never copy or roll it back.
//!
//! Offered (`AT_SYSINFO_EHDR`, [`offered`]) only when the TSC is usable: the guest's CPUID says
//! invariant TSC, the host kernel's clocksource is the TSC, KVM takes a TSC offset of 0 and the
//! guest TSC then reads as the host's (one probe VM at start). `EDGEVM_VDSO=0` turns it off;
//! `EDGEVM_VDSO=force` skips the first two checks (for emulated CPUs such as QEMU's TCG, which
//! never claim an invariant TSC). When it is not
//! usable the page stays in fallback mode: a program that still calls into the vDSO (a
//! snapshot made where it was offered) gets the real system call.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use kvm_bindings::{kvm_device_attr, kvm_msr_entry, Msrs, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET};
use kvm_ioctls::{Kvm, VcpuFd};

/// Guest-physical (and guest-virtual) address of the ROM, in the last 2 MiB below 512 GiB.
pub const ROM_GPA: u64 = 0x7F_FFE0_2000;
/// Bytes of the ROM: two pages of vDSO image, the data page.
pub const ROM_SIZE: usize = 0x3000;
/// Where the vDSO's ELF header is (`AT_SYSINFO_EHDR`); its image is linked for this address.
pub const VDSO_ADDR: u64 = ROM_GPA;
/// Room for the vDSO image.
pub const VDSO_MAX: usize = 0x2000;
/// The data page (read-only to the guest).
pub const VVAR_ADDR: u64 = ROM_GPA + 0x2000;
/// The guest page-table entries that map the ROM (address, user-mode permissions): written
/// into a page table of the VM's own by `edgevm-abi`.
pub const ROM_PAGES: [(u64, RomPerm); 3] = [
    (VDSO_ADDR, RomPerm::ReadExec),
    (VDSO_ADDR + 0x1000, RomPerm::ReadExec),
    (VVAR_ADDR, RomPerm::Read),
];
/// What the guest may do with a ROM page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RomPerm {
    /// Read and execute (the vDSO code).
    ReadExec,
    /// Read only, no execute (the data page).
    Read,
}
/// Index of the guest PDPT entry whose page directory maps the ROM.
pub const PDPT_INDEX: u64 = ROM_GPA >> 30;

/// A hash of the vDSO image (FNV-1a): snapshots record it, since a program started with the
/// vDSO keeps pointers into it.
pub fn image_id() -> u64 {
    IMAGE.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The vDSO image (guest/vdso/vdso.c + vdso.lds, built by build.rs).
pub static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vdso.so"));

/// The data page's fields (guest/vdso/vdso.c `struct vdso_page`), byte offsets.
mod field {
    pub const SEQ: usize = 0;
    pub const MODE: usize = 4;
    pub const TSC_BASE: usize = 8;
    pub const MONO_NS: usize = 16;
    pub const MULT: usize = 24;
    pub const SHIFT: usize = 32;
    pub const REAL_OFF: usize = 40;
    pub const BOOT_OFF: usize = 48;
    pub const TAI_OFF: usize = 56;
    pub const RAW_NS: usize = 64;
    pub const RAW_MULT: usize = 72;
}
/// `mode`: the guest converts its TSC.
const MODE_TSC: u32 = 1;
/// Fixed-point shift of `mult`.
const SHIFT: u32 = 32;

/// The ROM: its memfd, the host's read-only mapping KVM slots point at, the writable data page.
pub struct Rom {
    _fd: OwnedFd,
    /// Host address of the read-only mapping (every VM's slot 1).
    host_ro: u64,
    /// The data page, writable (a separate shared mapping of the same memfd page).
    page: *mut u8,
    /// Whether the TSC is usable (the page is in TSC mode, `AT_SYSINFO_EHDR` is passed).
    usable: bool,
    /// Why not, when it is not.
    why_not: Option<String>,
}

// SAFETY: `page` points at a shared mapping that lives for the process (the Rom is static);
// it is written only by the one updater thread (and by `init` before that thread starts) with
// the sequence protocol, and read with it.
unsafe impl Send for Rom {}
// SAFETY: as above.
unsafe impl Sync for Rom {}

static ROM: OnceLock<Option<Rom>> = OnceLock::new();

/// The ROM, made at the first call (with `kvm` for the probe VM); None when it could not be
/// made (no memfd or read-only memory slots), in which case no VM gets it.
pub(crate) fn rom(kvm: &Kvm) -> Option<&'static Rom> {
    ROM.get_or_init(|| match Rom::new(kvm) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("edgevm: no vDSO for guests: {e}");
            None
        }
    })
    .as_ref()
}

fn made() -> Option<&'static Rom> {
    ROM.get().and_then(Option::as_ref)
}

/// Whether guests get the vDSO (`AT_SYSINFO_EHDR`): the ROM exists and the TSC is usable.
/// Makes the ROM (and its probe VM) if no VM was made yet; false without `/dev/kvm`.
pub fn offered() -> bool {
    if made().is_none() && crate::vm::kvm_available().is_ok() {
        let _ = crate::vm::global_rom();
    }
    made().is_some_and(|r| r.usable)
}

/// Whether every VM maps the ROM (slot 1, the PDPT entry): true once the ROM is made, also
/// when the vDSO is not offered (its page then sends every call to the system call).
pub fn mapped() -> bool {
    if made().is_none() && crate::vm::kvm_available().is_ok() {
        let _ = crate::vm::global_rom();
    }
    made().is_some()
}

/// Why the vDSO is not offered (None when it is, or nothing was tried yet).
pub fn why_not() -> Option<String> {
    made().and_then(|r| r.why_not.clone())
}

impl Rom {
    fn new(kvm: &Kvm) -> Result<Rom, String> {
        if IMAGE.len() > VDSO_MAX {
            return Err(format!("the vDSO image is {} bytes", IMAGE.len()));
        }
        if kvm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_READONLY_MEM)) <= 0 {
            return Err("KVM has no read-only memory slots".into());
        }
        let fd =
            nix::sys::memfd::memfd_create(c"edgevm-vdso", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| format!("memfd_create: {e}"))?;
        nix::unistd::ftruncate(&fd, ROM_SIZE as i64).map_err(|e| format!("ftruncate: {e}"))?;
        let rw = map(&fd, ROM_SIZE, libc::PROT_READ | libc::PROT_WRITE)?;
        // SAFETY: the image fits the room checked above, at the start of the mapping.
        unsafe { std::ptr::copy_nonoverlapping(IMAGE.as_ptr(), rw as *mut u8, IMAGE.len()) };
        // Only the data page stays writable on the host; the rest of the writable mapping goes.
        let data_off = (VVAR_ADDR - ROM_GPA) as usize;
        // SAFETY: unmaps the first pages of our own mapping, which nothing else references.
        unsafe { libc::munmap(rw as *mut libc::c_void, data_off) };
        let page = (rw + data_off as u64) as *mut u8;
        let host_ro = map(&fd, ROM_SIZE, libc::PROT_READ)?;
        let why_not = usable_tsc(kvm).err();
        let rom = Rom {
            _fd: fd,
            host_ro,
            page,
            usable: why_not.is_none(),
            why_not,
        };
        if rom.usable {
            let clock = Clock::new();
            clock.publish(&rom);
            std::thread::Builder::new()
                .name("edgevm-vdso".into())
                .spawn(move || updater(clock))
                .map_err(|e| format!("cannot start the vDSO thread: {e}"))?;
        }
        Ok(rom)
    }

    /// Host address of the read-only mapping a VM's slot 1 points at.
    pub(crate) fn host_addr(&self) -> u64 {
        self.host_ro
    }

    fn seq(&self) -> &AtomicU32 {
        // SAFETY: the page is 4096-aligned and lives for the process; the sequence word is
        // only accessed atomically by the host.
        unsafe { &*self.page.add(field::SEQ).cast::<AtomicU32>() }
    }

    fn write_u64(&self, off: usize, v: u64) {
        // SAFETY: `off` is one of the page's 8-aligned fields, inside the page.
        unsafe { self.page.add(off).cast::<u64>().write_volatile(v) }
    }

    fn read_u64(&self, off: usize) -> u64 {
        // SAFETY: as in write_u64.
        unsafe { self.page.add(off).cast::<u64>().read_volatile() }
    }
}

/// mmap `len` bytes of `fd`, shared.
fn map(fd: &OwnedFd, len: usize, prot: libc::c_int) -> Result<u64, String> {
    // SAFETY: a fresh shared mapping of our own memfd at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    Ok(p as u64)
}

fn env_setting() -> Option<String> {
    std::env::var("EDGEVM_VDSO").ok()
}

/// Whether guests may use their TSC as a clock: Err says why not.
fn usable_tsc(kvm: &Kvm) -> Result<(), String> {
    let setting = env_setting().unwrap_or_default();
    match setting.as_str() {
        "" | "1" | "on" | "force" => {}
        "0" | "off" => return Err("turned off (EDGEVM_VDSO=0)".into()),
        other => return Err(format!("EDGEVM_VDSO={other:?} is not 0, 1 or force: off")),
    }
    if setting != "force" {
        if !invariant_tsc(kvm) {
            return Err("the guest's CPUID has no invariant TSC".into());
        }
        // A host kernel that does not trust its TSC (another clocksource) also makes KVM
        // move guests' TSC offsets when vCPUs are loaded.
        let cs = std::fs::read_to_string(CLOCKSOURCE).unwrap_or_default();
        if cs.trim() != "tsc" {
            return Err(format!(
                "the host's clocksource is {:?}, not the TSC",
                cs.trim()
            ));
        }
    }
    probe_tsc(kvm)
}

const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// CPUID.80000007H:EDX[8] (invariant TSC) where guests look: the host's CPUID on kvm_pvm
/// (guests see it), KVM's supported CPUID elsewhere (what edgevm gives guests).
fn invariant_tsc(kvm: &Kvm) -> bool {
    const INVTSC: u32 = 1 << 8;
    let host = std::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0007
        && std::arch::x86_64::__cpuid(0x8000_0007).edx & INVTSC != 0;
    if crate::vm::is_kvm_pvm() {
        return host;
    }
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .ok()
        .is_some_and(|c| {
            c.as_slice()
                .iter()
                .any(|e| e.function == 0x8000_0007 && e.edx & INVTSC != 0)
        })
}

/// Make a VM and vCPU, set the TSC offset to 0 and check the guest's TSC reads as the host's.
fn probe_tsc(kvm: &Kvm) -> Result<(), String> {
    let vm = kvm.create_vm().map_err(|e| format!("probe VM: {e}"))?;
    let vcpu = vm.create_vcpu(0).map_err(|e| format!("probe vCPU: {e}"))?;
    zero_tsc_offset(&vcpu)?;
    const IA32_TSC: u32 = 0x10;
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: IA32_TSC,
        ..Default::default()
    }])
    .map_err(|_| "msr list".to_string())?;
    // A descheduled thread between the reads makes the window wide, never wrong: try thrice.
    for _ in 0..3 {
        let before = rdtsc();
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(|e| format!("KVM_GET_MSRS: {e}"))?;
        let after = rdtsc();
        let guest = msrs.as_slice()[0].data;
        if n == 1 && (before..=after).contains(&guest) {
            return Ok(());
        }
        if n == 1 && (after - before) < 1_000_000 {
            return Err(format!(
                "the guest's TSC is not the host's with offset 0 (guest {guest}, host {before}..{after}): scaled?"
            ));
        }
    }
    Err("the guest's TSC could not be compared with the host's".into())
}

/// Set `vcpu`'s TSC offset to 0: its TSC reads as the host's.
pub(crate) fn zero_tsc_offset(vcpu: &VcpuFd) -> Result<(), String> {
    let offset: u64 = 0;
    let attr = kvm_device_attr {
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr: &offset as *const u64 as u64,
        flags: 0,
    };
    // SAFETY: a vCPU ioctl with a valid kvm_device_attr that KVM only reads (and, for the
    // set, the u64 its `addr` points at, alive for the call).
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_HAS_DEVICE_ATTR(), &attr) };
    if r != 0 {
        return Err(format!(
            "KVM has no TSC offset control (KVM_VCPU_TSC_OFFSET): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_SET_DEVICE_ATTR(), &attr) };
    if r != 0 {
        return Err(format!(
            "KVM_VCPU_TSC_OFFSET: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

const KVMIO: libc::c_uint = 0xAE;
vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(KVM_HAS_DEVICE_ATTR, KVMIO, 0xe3, kvm_device_attr);

/// Whether vCPUs must get a TSC offset of 0 (the vDSO is offered).
pub(crate) fn wants_zero_offset() -> bool {
    made().is_some_and(|r| r.usable)
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions (CR4.TSD is clear for host processes).
    unsafe { std::arch::x86_64::_rdtsc() }
}

fn host_ns(clk: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(clk, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// One (TSC, host clock) pair, the TSC taken as the middle of the tightest of a few tries.
fn sample(clk: libc::clockid_t) -> (u64, i128) {
    let mut best = (u64::MAX, 0u64, 0i128);
    for _ in 0..5 {
        let a = rdtsc();
        let ns = host_ns(clk);
        let b = rdtsc();
        if b >= a && b - a < best.0 {
            best = (b - a, a + (b - a) / 2, ns);
        }
    }
    (best.1, best.2)
}

/// `clk` minus CLOCK_MONOTONIC, ns (the monotonic clock read on both sides).
fn offset_to_mono(clk: libc::clockid_t) -> i64 {
    let a = host_ns(libc::CLOCK_MONOTONIC);
    let c = host_ns(clk);
    let b = host_ns(libc::CLOCK_MONOTONIC);
    (c - (a + b) / 2) as i64
}

/// One host clock followed by the page: the values at the page's TSC base.
#[derive(Clone, Copy, Debug)]
struct Track {
    clk: libc::clockid_t,
    /// ns at the page's `tsc_base`, as guests compute them.
    base_ns: u64,
    mult: u64,
    /// The last host sample (TSC, ns), for the rate.
    last: (u64, i128),
}

impl Track {
    /// Value the page gives at `tsc` with base `tsc_base`.
    fn at(&self, tsc_base: u64, tsc: u64) -> i128 {
        let d = u128::from(tsc.saturating_sub(tsc_base));
        i128::from(self.base_ns) + ((d * u128::from(self.mult)) >> SHIFT) as i128
    }

    /// Re-anchor at `tsc` (the new base), steering toward the host's clock over `ahead` TSC
    /// ticks. `old_base` is the page's current TSC base.
    fn steer(&mut self, old_base: u64, tsc: u64, ahead: u64) {
        let (st, sns) = sample(self.clk);
        let (lt, lns) = self.last;
        // Host ns per TSC tick over the last interval, in 2^-32 units.
        let rate = if st > lt && sns > lns {
            (((sns - lns) as u128) << SHIFT) / u128::from(st - lt)
        } else {
            u128::from(self.mult)
        };
        self.last = (st, sns);
        // The host's clock at `tsc`, from the sample.
        let host_at = sns + (((i128::from(tsc) - i128::from(st)) * rate as i128) >> SHIFT);
        let cur = self.at(old_base, tsc);
        let err = host_at - cur;
        let base = if err > 1_000_000_000 {
            // Far behind (a stopped host, a first calibration that went wrong): step forward.
            host_at
        } else {
            // Never step back: slew, at most 0.1% (a 1 ms error takes a second).
            cur
        };
        let err = host_at - base;
        let corr = (err << SHIFT) / i128::from(ahead.max(1));
        let limit = (rate / 1000) as i128;
        let mult = (rate as i128 + corr.clamp(-limit, limit)).max(1);
        self.base_ns = base.max(0) as u64;
        self.mult = mult as u64;
    }
}

/// The page's contents, as the updater keeps them.
struct Clock {
    tsc_base: u64,
    mono: Track,
    raw: Track,
    real_off: i64,
    boot_off: i64,
    tai_off: i64,
}

impl Clock {
    /// Calibrate over ~2 ms (the updater refines it within a second).
    fn new() -> Clock {
        let start = |clk| {
            let (t0, n0) = sample(clk);
            (t0, n0)
        };
        let (m0, r0) = (
            start(libc::CLOCK_MONOTONIC),
            start(libc::CLOCK_MONOTONIC_RAW),
        );
        std::thread::sleep(Duration::from_millis(2));
        let track = |clk, (t0, n0): (u64, i128)| {
            let (t1, n1) = sample(clk);
            let mult = if t1 > t0 && n1 > n0 {
                (((n1 - n0) as u128) << SHIFT) / u128::from(t1 - t0)
            } else {
                // 1 GHz until the updater knows better.
                1u128 << SHIFT
            };
            Track {
                clk,
                base_ns: n1 as u64,
                mult: mult as u64,
                last: (t1, n1),
            }
        };
        let mono = track(libc::CLOCK_MONOTONIC, m0);
        let mut raw = track(libc::CLOCK_MONOTONIC_RAW, r0);
        // Both tracks are anchored at the monotonic sample's TSC.
        let tsc_base = mono.last.0;
        raw.base_ns = (raw.last.1
            + (((i128::from(tsc_base) - i128::from(raw.last.0)) * i128::from(raw.mult)) >> SHIFT))
            as u64;
        let mut c = Clock {
            tsc_base,
            mono,
            raw,
            real_off: 0,
            boot_off: 0,
            tai_off: 0,
        };
        c.offsets();
        c
    }

    fn offsets(&mut self) {
        self.real_off = offset_to_mono(libc::CLOCK_REALTIME);
        self.boot_off = offset_to_mono(libc::CLOCK_BOOTTIME);
        self.tai_off = offset_to_mono(libc::CLOCK_TAI);
    }

    /// Re-anchor both tracks at the current TSC, aiming to agree with the host `ahead` ticks
    /// from now, and read the offsets again.
    fn update(&mut self, ahead: u64) {
        let now = rdtsc();
        let old = self.tsc_base;
        self.mono.steer(old, now, ahead);
        self.raw.steer(old, now, ahead);
        self.tsc_base = now;
        self.offsets();
    }

    /// Write the page (sequence odd while writing).
    fn publish(&self, rom: &Rom) {
        let seq = rom.seq();
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        rom.write_u64(field::TSC_BASE, self.tsc_base);
        rom.write_u64(field::MONO_NS, self.mono.base_ns);
        rom.write_u64(field::MULT, self.mono.mult);
        rom.write_u64(field::SHIFT, u64::from(SHIFT));
        rom.write_u64(field::REAL_OFF, self.real_off as u64);
        rom.write_u64(field::BOOT_OFF, self.boot_off as u64);
        rom.write_u64(field::TAI_OFF, self.tai_off as u64);
        rom.write_u64(field::RAW_NS, self.raw.base_ns);
        rom.write_u64(field::RAW_MULT, self.raw.mult);
        // mode shares a word with seq: written as a 32-bit value.
        // SAFETY: MODE is a 4-aligned u32 field inside the page.
        unsafe {
            rom.page
                .add(field::MODE)
                .cast::<u32>()
                .write_volatile(MODE_TSC)
        };
        fence(Ordering::Release);
        seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

/// How often the page is re-anchored (and the horizon its multiplier aims at).
const PERIOD: Duration = Duration::from_secs(1);

/// The updater thread: re-anchors the page every [`PERIOD`] (the first few sooner, as the
/// rate estimate settles), and at once when the host's real-time clock is set (a timerfd with
/// `TFD_TIMER_CANCEL_ON_SET` reports it).
fn updater(mut clock: Clock) {
    // Started while the ROM is being made: wait until it is in place.
    let rom = loop {
        match made() {
            Some(r) => break r,
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let tfd = cancel_on_set_timer();
    let mut step = 0u32;
    loop {
        let wait = match step {
            0 => Duration::from_millis(20),
            1 => Duration::from_millis(200),
            _ => PERIOD,
        };
        step = step.saturating_add(1);
        let set = wait_for(tfd.as_ref(), wait);
        if set {
            // Re-arm (a cancelled timer stays cancelled until set again).
            if let Some(t) = &tfd {
                arm(t);
            }
        }
        let ns_per_tick = clock.mono.mult as f64 / (1u64 << SHIFT) as f64;
        let ahead = if ns_per_tick > 0.0 {
            (PERIOD.as_nanos() as f64 / ns_per_tick) as u64
        } else {
            1
        };
        clock.update(ahead);
        clock.publish(rom);
    }
}

/// A real-time timerfd that fires never but is cancelled when the clock is set.
fn cancel_on_set_timer() -> Option<OwnedFd> {
    // SAFETY: timerfd_create has no memory arguments; the fd is checked and owned below.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    arm(&fd);
    Some(fd)
}

fn arm(fd: &OwnedFd) {
    const TFD_TIMER_CANCEL_ON_SET: libc::c_int = 2;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        // Far in the future: the timer never expires, it only reports clock changes.
        it_value: libc::timespec {
            tv_sec: i64::from(i32::MAX),
            tv_nsec: 0,
        },
    };
    // SAFETY: valid descriptor and itimerspec; no old value is asked for.
    unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET,
            &spec,
            std::ptr::null_mut(),
        )
    };
}

/// Wait up to `d`; true when the real-time clock was set meanwhile.
fn wait_for(tfd: Option<&OwnedFd>, d: Duration) -> bool {
    let Some(fd) = tfd else {
        std::thread::sleep(d);
        return false;
    };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, d.as_millis() as libc::c_int) };
    if n <= 0 {
        return false;
    }
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into the local buffer; ECANCELED is the clock-set report.
    let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECANCELED)
}

/// The time of `clk` as the guests' vDSO computes it now (the host's own system-call answers
/// use this, so a program sees one clock whichever way it asks): (seconds, nanoseconds), or
/// None for a clock the page does not answer or a page in fallback mode.
pub fn clock(clk: libc::clockid_t) -> Option<(i64, i64)> {
    let rom = made().filter(|r| r.usable)?;
    let (raw, off) = match clk {
        libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE => (false, Some(field::REAL_OFF)),
        libc::CLOCK_MONOTONIC | libc::CLOCK_MONOTONIC_COARSE => (false, None),
        libc::CLOCK_MONOTONIC_RAW => (true, None),
        libc::CLOCK_BOOTTIME => (false, Some(field::BOOT_OFF)),
        libc::CLOCK_TAI => (false, Some(field::TAI_OFF)),
        _ => return None,
    };
    let seq = rom.seq();
    let ns = loop {
        let s = seq.load(Ordering::Acquire);
        if s & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let base = rom.read_u64(field::TSC_BASE);
        let (mut ns, mult) = if raw {
            (rom.read_u64(field::RAW_NS), rom.read_u64(field::RAW_MULT))
        } else {
            (rom.read_u64(field::MONO_NS), rom.read_u64(field::MULT))
        };
        if let Some(o) = off {
            ns = ns.wrapping_add(rom.read_u64(o));
        }
        let d = u128::from(rdtsc().saturating_sub(base));
        ns = ns.wrapping_add(((d * u128::from(mult)) >> SHIFT) as u64);
        fence(Ordering::Acquire);
        if seq.load(Ordering::Relaxed) == s {
            break ns;
        }
    };
    Some(((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_an_elf_shared_object_linked_at_its_address() {
        assert!(IMAGE.len() <= VDSO_MAX);
        assert_eq!(&IMAGE[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([IMAGE[16], IMAGE[17]]), 3, "ET_DYN");
        // First program header (e_phoff 64): PT_LOAD at VDSO_ADDR, read+execute.
        let ph = &IMAGE[64..120];
        assert_eq!(u32::from_le_bytes(ph[0..4].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(ph[4..8].try_into().unwrap()), 5);
        assert_eq!(
            u64::from_le_bytes(ph[16..24].try_into().unwrap()),
            VDSO_ADDR
        );
        assert_eq!(PDPT_INDEX, 511);
    }

    #[test]
    fn a_track_steers_toward_the_host_without_stepping_back() {
        let (t0, n0) = sample(libc::CLOCK_MONOTONIC);
        std::thread::sleep(Duration::from_millis(5));
        let (t1, n1) = sample(libc::CLOCK_MONOTONIC);
        let rate = ((((n1 - n0) as u128) << SHIFT) / u128::from(t1 - t0)) as u64;
        // A track 2 ms ahead of the host: the next anchor keeps its value (no step back) and
        // slows down.
        let mut tr = Track {
            clk: libc::CLOCK_MONOTONIC,
            base_ns: (n1 + 2_000_000) as u64,
            mult: rate,
            last: (t1, n1),
        };
        std::thread::sleep(Duration::from_millis(5));
        let now = rdtsc();
        let before = tr.at(t1, now);
        tr.steer(t1, now, 1_000_000_000);
        assert_eq!(i128::from(tr.base_ns), before);
        assert!(tr.mult < rate, "{} < {rate}", tr.mult);
        // A track far behind steps forward to the host.
        let mut tr2 = Track { base_ns: 0, ..tr };
        let now = rdtsc();
        tr2.steer(now, now, 1_000_000_000);
        let host = host_ns(libc::CLOCK_MONOTONIC);
        assert!((i128::from(tr2.base_ns) - host).abs() < 50_000_000);
    }
}
