//! A program's VM: load the ELF, run it with deadlines and time slices, emulate its system
//! calls and the calls every context shares; freeze it and fork request VMs from the image.
//! Booting is in boot.rs, options in options.rs, errors in error.rs (see docs/DESIGN.md).

use std::time::{Duration, Instant};

use edgevm_abi::api::{self, Call};
use edgevm_abi::cpu;
use edgevm_abi::crash::decode_exception;
use edgevm_abi::elf::{self, LoadedElf};
use edgevm_abi::guest_abi::MemInfo;
use edgevm_abi::io::write_struct;
use edgevm_abi::layout::{self, Layout};
use edgevm_abi::linux::{
    fill_random, FaultDelivery, LinuxConfig, LinuxState, Output, SyscallOutcome,
};
use edgevm_abi::regex::Regexes;
use edgevm_kvm::{
    Exit, FrozenImage, KvmMachine, KvmVcpu, MainMemory, MemoryView, PrivateView, Vcpu, VmShell,
};

use crate::output::Printer;
use crate::timer;

pub use crate::error::{signal_name, RunError};
pub use crate::options::{program_environment, HugePages, VmOptions};

mod deadline;
mod entry;

pub use entry::EntryState;

/// Functions a program registered with `register_func` (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handlers {
    /// 1: on GET.
    pub get: u64,
    /// 2: on POST.
    pub post: u64,
    /// 3: on any request (takes precedence).
    pub request: u64,
    /// 4: streaming POST.
    pub stream_post: u64,
    /// 5: on error.
    pub on_error: u64,
    /// 6: live update (storage).
    pub on_live_update: u64,
    /// 7: live restore.
    pub on_live_restore: u64,
    /// 12: socket pause.
    pub socket_pause: u64,
}

/// What stopped the guest, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// exit/exit_group.
    Exited(i32),
    /// A call into the storage program's range (`crate::remote`): run it in the storage VM,
    /// then [`Vm::return_from_remote`].
    RemoteCall(crate::remote::RemoteCall),
    /// A kvm_api hypercall the generic handler did not finish.
    Hypercall(Call),
    /// A request handler returned without responding.
    Returned,
    /// The time slice set with [`MainVm::set_slice`] is over (the deadline is not): the guest
    /// is stopped at an instruction boundary and can be resumed on any thread.
    Preempted,
    /// With [`Vm::conn_fds`]: system call `nr` (write, writev, sendto, close) with `args` on
    /// a connection number; the caller ends it with `linux.return_from_syscall`.
    ConnCall {
        /// The system call number.
        nr: u64,
        /// Its arguments.
        args: [u64; 6],
    },
}

/// The first connection number of the TCP server mode (no guest descriptor reaches it:
/// `edgevm_abi::files::MAX_FDS`).
pub const CONN_FD_BASE: i32 = 0x1000;

/// How a boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOutcome {
    /// main() returned or exit() was called.
    Exited(i32),
    /// The program called wait_for_requests().
    Ready,
}

/// Figures from a boot.
#[derive(Debug, Clone, Copy)]
pub struct BootReport {
    /// How it ended.
    pub outcome: BootOutcome,
    /// VM creation and ELF load.
    pub load_time: Duration,
    /// Guest run time until exit or wait_for_requests.
    pub init_time: Duration,
    /// VM exits during the boot.
    pub exits: u64,
    /// System calls during the boot.
    pub syscalls: u64,
}

/// A VM running a program: `C` is the vCPU (KVM's, or a scripted one in unit tests), `M` the
/// memory it runs in, which decides its role (docs/DESIGN.md, "VM roles and memory views"):
/// [`MainVm`] boots a program in its own memory and is then frozen ([`MainVm::freeze`]) or
/// kept as a storage VM ([`crate::storage`]); [`ForkedVm`] runs requests in a copy-on-write
/// view of the frozen image and is reset after each ([`crate::RequestVm`]). What only one
/// role may do is implemented for that type only: freezing needs a `MainVm`, resetting a
/// `ForkedVm`.
///
/// ```compile_fail
/// fn f(vm: edgevm_runtime::vm::ForkedVm) {
///     let _ = vm.freeze(); // a request VM cannot become a program's image
/// }
/// ```
///
/// ```compile_fail
/// fn f(vm: &mut edgevm_runtime::vm::MainVm) {
///     vm.machine.mem.discard_private().unwrap(); // a main VM's memory is never reset
/// }
/// ```
pub struct Vm<C: Vcpu = KvmVcpu, M: MemoryView = MainMemory> {
    /// Extra vCPUs of `multiprocess*` (crate::smp), made when a request first asks. First
    /// field: dropped (its threads stopped and joined) before the VM and its memory.
    pub(crate) smp: Option<Box<crate::smp::Smp>>,
    /// The VM and its memory.
    pub machine: KvmMachine<C, M>,
    /// Emulated process state.
    pub linux: LinuxState,
    /// Compiled regexes (the regex calls' handles).
    pub regex: Regexes,
    /// The loaded program.
    pub elf: LoadedElf,
    /// Address-space layout.
    pub layout: Layout,
    /// Output printer.
    pub printer: Printer,
    /// Registered handler functions.
    pub handlers: Handlers,
    /// The options it was booted with.
    pub opts: VmOptions,
    /// Set by sys_make_ephemeral during init (None = not called).
    pub ephemeral_override: Option<bool>,
    /// Functions named by STORAGE_ALLOW during a storage VM's init.
    pub storage_allowed: Vec<u64>,
    /// Initialization is over (wait_for_requests() was called): the handler table is fixed.
    pub initialized: bool,
    /// An event-loop program (`wait_for_requests_paused(req)`) stands at its paused point
    /// with `req` its request pointer: the next request resumes it there.
    pub paused: Option<u64>,
    /// Some register_func() call succeeded (any index, as the reference).
    pub registered: bool,
    /// A TCP server system: `write`, `writev`, `sendto` and `close` of a descriptor from
    /// [`CONN_FD_BASE`] up are [`Event::ConnCall`]s (connection numbers), not emulated.
    pub conn_fds: bool,
    /// The vCPU still holds a half-done instruction of a failed call that KVM would resume
    /// (see [`MainVm::restore_user_mode`]): the VM must be replaced before the next call.
    pub stale: bool,
    pub(crate) deadline: Option<(Instant, Duration, &'static str)>,
    /// End of the current time slice (see [`MainVm::set_slice`]).
    pub(crate) slice_end: Option<Instant>,
    /// End of the running guest thread's time slice, while another thread is ready to run.
    pub(crate) thread_slice: Option<Instant>,
    /// An open (or opening) GDB session (crate::debug).
    pub(crate) debug: Option<Box<crate::debug::Debugger<C, M>>>,
    /// The guest stopped at a system call that is made when the VM resumes (see
    /// [`Event::Preempted`]).
    pending_syscall: bool,
    /// A call that may block (`sys_fetch`) made during a time slice: the slice ended at it and
    /// it is served when the VM resumes, on a thread that may block.
    pending_call: Option<Call>,
    /// Self-request depth of the request being served (0: a client's), for `sys_fetch`.
    pub(crate) fetch_depth: u32,
    /// Where the stacks of `multiprocess` workers are (`smp` x 512 KiB, reserved at boot in
    /// whole 2 MiB pages so no page table changes for them); 0: none reserved.
    pub(crate) smp_stacks: u64,
    /// Exits caused by the run timer without a timeout (time-slice ends): the runtime's own,
    /// not the program's, so they are left out of exits-per-request counts.
    pub timer_exits: u64,
    /// The storage program's range `[lo, hi)` when it is linked high: a call there is a
    /// remote storage call ([`Event::RemoteCall`]), not a crash (request VMs only).
    pub remote: Option<(u64, u64)>,
    /// Clears this thread's timer pointer if the VM is dropped while it points at the vCPU.
    _timer_guard: timer::Guard,
}

/// How long a guest thread runs before the host switches to another ready one.
const THREAD_SLICE: Duration = Duration::from_millis(5);
/// How long a thread switch waits for the page-table routine to return.
const PT_ROUTINE_GRACE: Duration = Duration::from_millis(1);

/// Special registers, XCR0 and syscall MSRs for a fresh vCPU (setup only).
fn setup_cpu<M: MemoryView>(machine: &mut KvmMachine<KvmVcpu, M>) -> Result<(), RunError> {
    setup_vcpu(&mut machine.cpu)
}

/// [`setup_cpu`] on a vCPU alone: nothing here depends on the program or its memory (the
/// tables CR3, GDTR and IDTR point at are at fixed guest addresses), so a KVM VM made ahead
/// is set up ahead too ([`prepared_shell`]).
fn setup_vcpu(cpu: &mut KvmVcpu) -> Result<(), RunError> {
    let base = cpu.sregs()?;
    // XSAVE/AVX: on hardware KVM the guest may use AVX only if CR4.OSXSAVE and XCR0 say
    // so; kvm_pvm runs CPL3 code on the host's own settings and ignores both. Which
    // components are enabled: edgevm_kvm::features.
    let xcr0 = KvmVcpu::guest_xcr0();
    cpu.set_sregs(&cpu::initial_sregs(&base, xcr0.is_some()))?;
    if let Some(x) = xcr0 {
        if let Err(e) = cpu.set_xcr0(x) {
            tracing::warn!("XCR0 {x:#x} refused ({e}): programs run without AVX state");
            cpu.set_sregs(&cpu::initial_sregs(&base, false))?;
        }
    }
    for (msr, v) in cpu::SETUP_MSRS {
        cpu.set_msr(msr, v)?;
    }
    Ok(())
}

/// A KVM VM for a request VM of `size` bytes of memory, made ahead of its fork (on a helper
/// thread): the VM, its vCPU set up ([`setup_vcpu`]) and its memory slot over a reserved
/// range ([`VmShell::with_slot`]). The fork then maps the view and sets the program's
/// registers only.
pub fn prepared_shell(size: usize) -> Result<VmShell, RunError> {
    let mut shell = VmShell::with_slot(size, true)?;
    setup_vcpu(shell.cpu_mut())?;
    shell.cpu_mut().mark_set_up()?;
    Ok(shell)
}

/// A program frozen at `wait_for_requests()`: the memory image every request VM is forked
/// from and reset to, and the CPU and process state that go with it.
pub struct Frozen {
    /// The main VM's memory (its KVM VM is gone), read-only from now on.
    pub image: FrozenImage,
    /// Registers at wait_for_requests().
    pub regs: kvm_bindings::kvm_regs,
    /// FS base (TLS).
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// Emulated process state.
    pub linux: LinuxState,
    /// Regexes compiled before the freeze: every request VM starts with (and is reset to)
    /// these.
    pub regex: Regexes,
    /// Registered handlers.
    pub handlers: Handlers,
    /// The program.
    pub elf: LoadedElf,
    /// Layout.
    pub layout: Layout,
    /// Options it was booted with.
    pub opts: VmOptions,
    /// sys_make_ephemeral() choice, if made.
    pub ephemeral_override: Option<bool>,
    /// An event-loop program: the request pointer of its paused point (`regs` are the
    /// registers there, the image holds its resume slots).
    pub paused: Option<u64>,
    /// The image at FXSAVE_AREA is a full XSAVE image (restored with XRSTOR).
    pub use_xsave: bool,
    /// The `multiprocess` workers' stacks reserved at boot (0: none; see `Vm`).
    pub smp_stacks: u64,
}

/// A VM that boots a program in its own memory: frozen into the program's image, or kept as
/// its storage VM.
pub type MainVm<C = KvmVcpu> = Vm<C, MainMemory>;

/// A request VM's machine: runs in a copy-on-write view of a frozen image.
pub type ForkedVm<C = KvmVcpu> = Vm<C, PrivateView>;

/// The host's glibc dynamic loader (the usual PT_INTERP of an x86_64 Linux program).
pub const HOST_LD_SO: &str = "/lib64/ld-linux-x86-64.so.2";

/// The dynamic loaders a program may name in PT_INTERP: the host's copy boots it. Any other
/// path is refused: PT_INTERP comes from the program's file (a live update can set it), and the
/// loader is read from the host outside `allowed_paths`.
pub const HOST_LOADERS: &[&str] = &[
    HOST_LD_SO,
    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/lib/ld-musl-x86_64.so.1",
];

/// The host loader for a program whose PT_INTERP is `interp`, read from the host.
fn host_loader(interp: &str) -> Result<Vec<u8>, RunError> {
    if !HOST_LOADERS.contains(&interp) {
        return Err(RunError::Sandbox(format!(
            "the program's interpreter (PT_INTERP) {interp:?} is not a dynamic loader edgevm \
             boots (one of {})",
            HOST_LOADERS.join(", ")
        )));
    }
    std::fs::read(interp).map_err(|e| {
        RunError::Sandbox(format!(
            "a dynamically linked program needs the host's {interp}: {e}"
        ))
    })
}

/// Guest-physical ranges the host refuses as pointers: the supervisor structures, the
/// program's `blackout_area`, and the memory of its remapped areas at its own address (only
/// the remapped address reaches it).
pub(crate) fn protected_ranges(opts: &VmOptions, l: &Layout) -> Vec<(u64, u64)> {
    let mut v = l.protected().to_vec();
    v.extend(opts.blackout_area.iter().copied());
    for (_, p, n, _) in edgevm_abi::linux::remap_backing(l, &opts.remappings) {
        v.push((p, p + n));
    }
    v
}

/// `remapping` / `executable_remapping` checked against the layout: 2 MiB aligned, above the
/// address space, below 128 TiB, apart from each other and from `blackout_area`, and room
/// for their memory between the program and the request-body area.
fn check_remappings(opts: &VmOptions, l: &Layout, elf_end: u64) -> Result<(), RunError> {
    const MB2: u64 = 2 << 20;
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut total = 0u64;
    for &(v, n, _) in &opts.remappings {
        let end = v.saturating_add(n);
        let bad = if v % MB2 != 0 || n % MB2 != 0 {
            Some("must start and end on a 2 MB boundary".to_string())
        } else if v < l.mem_size {
            Some(format!(
                "lies inside the address space (0x0-{:#x}), where memory exists already:                  use an address above it",
                l.mem_size
            ))
        } else if end > 1 << 47 {
            Some("ends above 0x800000000000 (128 TiB, the top of user addresses)".into())
        } else if seen.iter().any(|&(s, e)| s < end && v < e) {
            Some("overlaps another remapping".into())
        } else if opts.blackout_area.iter().any(|&(s, e)| s < end && v < e) {
            Some("overlaps a blackout_area".into())
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(RunError::Layout(format!(
                "remapping {v:#x}..{end:#x} {why}"
            )));
        }
        seen.push((v, end));
        total += n;
    }
    let room = (l.input_area & !(MB2 - 1)).saturating_sub(elf_end + MB2);
    if total > room || total.saturating_add(layout::STACK_SIZE) > opts.max_memory {
        return Err(RunError::Layout(format!(
            "the remappings need {} MB of the program's memory: raise max_memory",
            total >> 20
        )));
    }
    Ok(())
}

/// Ask for transparent huge pages over the main memory as configured, with one log line per
/// program where the host will not give them (its image is shared memory, a memfd).
pub(crate) fn advise_huge_pages(
    mem: &edgevm_kvm::GuestMemory,
    opts: &VmOptions,
) -> Result<(), RunError> {
    let h = opts.huge_pages;
    if h.main == 0 && h.request == 0 {
        return Ok(());
    }
    let host = edgevm_kvm::host_huge_pages();
    if !opts.storage {
        if h.main > 0 && !host.shmem_ok() {
            tracing::warn!(
                "program '{}': huge pages asked for its memory, but this host gives shared memory                  none (/sys/kernel/mm/transparent_hugepage/shmem_enabled is {:?}): its image                  stays on 4 KiB pages",
                opts.name,
                host.shmem
            );
        }
        if h.request > 0 && !host.anon_ok() {
            tracing::warn!(
                "program '{}': huge pages asked for request memory, but this host has                  transparent huge pages off (/sys/kernel/mm/transparent_hugepage/enabled is                  {:?}): request VMs stay on 4 KiB pages",
                opts.name,
                host.anon
            );
        }
    }
    if h.main > 0 {
        mem.advise_huge_pages(h.main)?;
    }
    Ok(())
}

impl MainVm {
    /// Create the VM and load the program, ready to run from its entry point.
    pub fn load(opts: VmOptions) -> Result<MainVm, RunError> {
        let size = opts.memory_size();
        let layout = Layout::new(size, opts.shared_memory).map_err(RunError::Layout)?;
        let mut mem = MainMemory::new(size as usize)?;
        advise_huge_pages(&mem, &opts)?;
        cpu::write_system_tables(&mut mem, &layout, opts.executable_heap)?;
        mem.set_protected(layout.protected().to_vec());
        let exe = std::fs::canonicalize(&opts.program_path)
            .unwrap_or_else(|_| opts.program_path.clone())
            .to_string_lossy()
            .into_owned();
        let exe = if exe.starts_with('/') {
            exe
        } else {
            format!("/{exe}")
        };
        let mut opts = opts;
        let mut argv = vec![opts.name.clone()];
        let elf = if let Some(interp) = elf::interpreter(&opts.binary)? {
            // A dynamically linked program: boot the host's copy of the dynamic loader it
            // names (glibc's or musl's) with the program as its argument (as the reference
            // does); the loader reads the program, and the libraries it finds through
            // allowed_paths, with open/mmap.
            let ld = host_loader(&interp)?;
            opts.allowed_paths
                .push(edgevm_abi::sandbox::PathRule::same(&exe));
            argv = vec![interp, exe.clone()];
            elf::load_interpreter(&ld, &mut mem, &layout)?
        } else {
            elf::load(&opts.binary, &mut mem, &layout)?
        };
        argv.extend(opts.arguments.iter().cloned());
        let env = program_environment(&opts);
        let mut random = [0u8; 16];
        fill_random(&mut random);
        check_remappings(&opts, &layout, elf.end)?;
        // The vDSO (edgevm_kvm::vdso): time without VM exits, where the TSC is usable.
        let vdso = edgevm_kvm::vdso::offered().then_some(edgevm_kvm::vdso::VDSO_ADDR);
        let rsp = elf::setup_stack(&mut mem, &layout, &elf, &argv, &env, random, vdso)?;
        if elf.image_bytes + layout::STACK_SIZE > opts.max_memory {
            return Err(RunError::MemoryLimit {
                used: elf.image_bytes + layout::STACK_SIZE,
                limit: opts.max_memory,
            });
        }
        mem.write_raw(layout::ENTRY_SLOT, &elf.entry.to_le_bytes())?;
        let mut machine = KvmMachine::new(mem, false)?;
        setup_cpu(&mut machine)?;
        // %gs points at the per-vCPU data vcpuid()/vcpureqid() read (a program may move it).
        machine.cpu.set_gs_base(edgevm_abi::io::VCPU_INFO)?;
        *machine.cpu.regs_mut() = cpu::initial_regs(rsp);
        let mut linux = LinuxState::new(
            layout,
            LinuxConfig {
                max_memory: opts.max_memory,
                exe_path: exe,
                verbose_syscalls: opts.verbose_syscalls,
                state_file: opts.state_file.clone(),
                allowed_paths: opts.allowed_paths.clone(),
                cwd: opts.cwd.clone(),
                verbose: opts.verbose,
                net: Some(opts.net.policy.clone()),
                executable_heap: opts.executable_heap,
                blackout: opts.blackout_area.clone(),
                keep_mmap_addresses: !opts.relocate_fixed_mmap,
                remaps: opts.remappings.clone(),
                mmap_backed_files: opts.mmap_backed_files,
            },
            elf.end,
            elf.image_bytes,
        );
        linux
            .protect_segments(&mut machine.mem, &elf.segments)
            .map_err(|e| {
                if e.starts_with("blackout_area") {
                    RunError::Layout(e)
                } else {
                    RunError::Emulation(e)
                }
            })?;
        let remaps = linux
            .map_remaps(&mut machine.mem)
            .map_err(RunError::Emulation)?;
        machine.mem.set_remaps(remaps);
        machine.mem.set_protected(protected_ranges(&opts, &layout));
        machine.mem.set_user_write_check(layout.tables);
        linux.check_cwd().map_err(|e| {
            RunError::Sandbox(format!(
                "current_working_directory {:?}: {} (it must be a directory reachable through allowed_paths)",
                opts.cwd,
                edgevm_abi::errno::name(-e)
            ))
        })?;
        // The stacks of `multiprocess` workers (docs/DESIGN.md, "SMP"): reserved now, while
        // the page tables are being written anyway, so a request never changes them for this.
        let smp_stacks = if opts.smp > 0 && !opts.storage {
            let len = u64::from(opts.smp.min(crate::smp::MAX_SMP)) * crate::smp::WORKER_STACK;
            linux
                .map_anonymous_huge(len, &mut machine.mem)
                .ok_or(RunError::MemoryLimit {
                    used: linux.memory_used() + len.next_multiple_of(2 << 20),
                    limit: opts.max_memory,
                })?
        } else {
            0
        };
        let mut vm = Vm::assemble(machine, linux, elf, layout, opts);
        vm.smp_stacks = smp_stacks;
        Ok(vm)
    }

    /// Freeze a program that called wait_for_requests(): keep its memory as the image, record
    /// the CPU state (FPU/SSE/AVX into the image, for the request entry stub), drop its vCPU.
    pub fn freeze(mut self) -> Result<Frozen, RunError> {
        self.printer.flush();
        // Workers a warmup request started are gone with the main VM's vCPUs.
        self.smp = None;
        let use_xsave = self.install_entry_fpu()?;
        let regs = *self.machine.cpu.regs();
        let (fs_base, gs_base) = (self.machine.cpu.fs_base(), self.machine.cpu.gs_base());
        let Vm {
            machine,
            linux,
            mut regex,
            elf,
            layout,
            handlers,
            opts,
            ephemeral_override,
            paused,
            smp_stacks,
            ..
        } = self;
        let KvmMachine { cpu, mut mem } = machine;
        drop(cpu);
        // Never-written pages: anonymous in request VMs (reads must not grow the image).
        mem.find_holes(layout.shared_start as usize);
        // The frozen process state is what request VMs start from and reset to:
        // verbose_syscalls is for the main VM only (glossary).
        let mut linux = linux;
        linux.set_verbose(false);
        // Timers armed in main() do not fire in requests (docs/DESIGN.md, "Signals").
        linux.clear_timers();
        // Request VMs may read the state file, never write it (descriptors open now are
        // inherited read-only).
        linux.make_files_read_only();
        linux.freeze_page_tables();
        regex.mark_frozen();
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
            smp_stacks,
        })
    }
}

impl ForkedVm {
    /// A VM running on a copy-on-write view of a frozen program (a request VM). Call on the
    /// thread that will run it.
    pub fn from_frozen(f: &Frozen) -> Result<ForkedVm, RunError> {
        ForkedVm::from_frozen_in(f, None)
    }

    /// [`ForkedVm::from_frozen`] in a VM prepared ahead (see [`edgevm_kvm::VmShell`]; made
    /// with dirty logging).
    pub fn from_frozen_in(f: &Frozen, shell: Option<VmShell>) -> Result<ForkedVm, RunError> {
        let shell = match shell {
            Some(s) => s,
            None => VmShell::new(true)?,
        };
        let mut machine = KvmMachine::fork_into(shell, &f.image, f.layout.shared_start as usize)?;
        if f.opts.huge_pages.request > 0 {
            machine.mem.advise_huge_pages(f.opts.huge_pages.request)?;
        }
        machine.mem.set_track_host_writes(true);
        if machine.cpu.set_up_sregs().is_none() {
            setup_cpu(&mut machine)?;
        }
        if f.fs_base != 0 {
            machine.cpu.set_fs_base(f.fs_base)?;
        }
        if f.gs_base != 0 {
            machine.cpu.set_gs_base(f.gs_base)?;
        }
        *machine.cpu.regs_mut() = f.regs;
        let linux = f.linux.clone();
        let mut vm = Vm::assemble(machine, linux, f.elf.clone(), f.layout, f.opts.clone());
        vm.handlers = f.handlers;
        vm.regex = f.regex.clone();
        vm.ephemeral_override = f.ephemeral_override;
        vm.paused = f.paused;
        vm.smp_stacks = f.smp_stacks;
        vm.initialized = true;
        Ok(vm)
    }
}

impl<C: Vcpu, M: MemoryView> Vm<C, M> {
    /// A VM around `machine` (its memory loaded, its vCPU set up) with this process state.
    pub(crate) fn assemble(
        mut machine: KvmMachine<C, M>,
        linux: LinuxState,
        elf: LoadedElf,
        layout: Layout,
        opts: VmOptions,
    ) -> Vm<C, M> {
        let _timer_guard = timer::Guard::new(machine.cpu.immediate_exit_ptr());
        Vm {
            smp: None,
            _timer_guard,
            machine,
            linux,
            regex: Regexes::default(),
            elf,
            layout,
            printer: Printer::new(&opts.name, opts.raw_output, opts.output_to_stdout),
            handlers: Handlers::default(),
            opts,
            ephemeral_override: None,
            storage_allowed: Vec::new(),
            initialized: false,
            paused: None,
            registered: false,
            conn_fds: false,
            stale: false,
            deadline: None,
            slice_end: None,
            thread_slice: None,
            pending_syscall: false,
            pending_call: None,
            fetch_depth: 0,
            smp_stacks: 0,
            timer_exits: 0,
            debug: None,
            remote: None,
        }
    }

    /// End the time slice at hypercall `call`: the caller returns [`Event::Preempted`] and the
    /// next [`Vm::run_until_event`] (on the thread the VM moves to) hands the call back.
    pub(crate) fn defer_call(&mut self, call: Call) {
        self.slice_end = None;
        self.pending_call = Some(call);
    }

    /// Forget a system call or hypercall kept for when the VM resumes (a request that failed
    /// while one waited leaves it behind; the next request must not make it).
    pub(crate) fn forget_pending(&mut self) {
        self.pending_call = None;
        self.pending_syscall = false;
    }

    /// Run the guest, handling system calls and the generic hypercalls, until something the
    /// caller must decide on.
    pub fn run_until_event(&mut self) -> Result<Event, RunError> {
        if self.debug.is_some() {
            return crate::debug::run_until_event(self);
        }
        if let Some(call) = self.pending_call.take() {
            return Ok(Event::Hypercall(call));
        }
        if std::mem::take(&mut self.pending_syscall) {
            if let Some(ev) = self.syscall()? {
                return Ok(ev);
            }
        }
        loop {
            if self.thread_slice.is_none() && self.linux.needs_slice() {
                // Green threads: the running one gets a time slice (no timer otherwise).
                self.thread_slice = Some(Instant::now() + THREAD_SLICE);
                self.arm_timer()?;
            }
            if self.linux.page_tables_pending() {
                if self.smp.as_ref().is_some_and(|s| s.active()) {
                    // The workers' vCPUs would keep the old entries (docs/DESIGN.md, "SMP").
                    return Err(RunError::Emulation(
                        "page protections changed (mprotect, munmap, mmap over such a range) \
                         while multiprocess workers run: not allowed before multiprocess_wait()"
                            .into(),
                    ));
                }
                // Changed page protections: the vCPU re-reads them first (edgevm_abi::paging).
                // An `out` it stopped at (a system call on hardware KVM, where the stub's
                // `sysretq` comes next; a hypercall) completes first, so the routine returns
                // after it rather than making the call again.
                self.machine.cpu.settle();
                let rip = self.machine.cpu.regs().rip;
                if let Some(to) = self.linux.page_table_redirect(&mut self.machine.mem, rip) {
                    self.machine.cpu.regs_mut().rip = to;
                }
            }
            let exit = self.machine.cpu.run()?;
            match exit {
                Exit::IoOut { port, .. } if port == layout::SYSCALL_PORT => {
                    if self.slice_end.is_some()
                        && self
                            .linux
                            .may_sleep(self.machine.cpu.regs(), &self.machine.mem)
                    {
                        // A sleeping system call would hold this thread (an HTTP worker):
                        // end the slice here and make the call wherever the VM resumes.
                        self.slice_end = None;
                        self.pending_syscall = true;
                        return Ok(Event::Preempted);
                    }
                    if let Some(ev) = self.syscall()? {
                        return Ok(ev);
                    }
                    if self.linux.take_timers_changed() {
                        self.arm_timer()?;
                    }
                }
                Exit::IoOut { port, value, .. } if port == layout::API_PORT => {
                    match api::decode(value, self.machine.cpu.regs()) {
                        Ok(Call::Returned) => return Ok(Event::Returned),
                        Ok(call @ Call::Fetch { .. }) if self.slice_end.is_some() => {
                            // A fetch would hold this thread (an HTTP worker) for seconds:
                            // end the slice here and serve it wherever the VM resumes.
                            self.slice_end = None;
                            self.pending_call = Some(call);
                            return Ok(Event::Preempted);
                        }
                        Ok(call) => {
                            if !self.generic_hypercall(call)? {
                                return Ok(Event::Hypercall(call));
                            }
                        }
                        // No context knows the number: -ENOSYS.
                        Err(bad) => self.unknown_call(bad.num),
                    }
                    if self.debug.is_some() {
                        // sys_breakpoint() asked for a GDB session.
                        return crate::debug::run_until_event(self);
                    }
                }
                Exit::IoOut { port, .. } if port == layout::EXCEPTION_PORT => {
                    if self.remote.is_some() {
                        if let Some(call) = self.remote_call_at_fault()? {
                            return Ok(Event::RemoteCall(call));
                        }
                    }
                    if !self.fault_handled()? {
                        return self.crashed();
                    }
                }
                Exit::Interrupted => {
                    if let Some(ev) = self.timer_exit()? {
                        return Ok(ev);
                    }
                }
                Exit::Shutdown => {
                    return Err(RunError::TripleFault {
                        rip: self.machine.cpu.regs().rip,
                    })
                }
                exit => return Err(self.unexpected_exit(exit)),
            }
        }
    }

    /// The run timer stopped the guest: a timeout, a green thread's slice, the end of this
    /// run's slice (the event to return), or an early fire (re-armed, run on).
    fn timer_exit(&mut self) -> Result<Option<Event>, RunError> {
        self.machine.cpu.clear_immediate_exit();
        let now = Instant::now();
        if let Some((d, _, _)) = self.deadline {
            if now >= d {
                return Err(self.timeout_error());
            }
        }
        self.timer_exits += 1;
        if self.thread_slice.is_some_and(|s| now >= s)
            && edgevm_abi::paging::in_routine(self.machine.cpu.regs().rip)
        {
            // Inside the page-table routine (edgevm_abi::paging): let it finish first.
            self.thread_slice = Some(now + PT_ROUTINE_GRACE);
        } else if self.thread_slice.is_some_and(|s| now >= s) {
            self.thread_slice = None;
            if let Err(end) = self
                .linux
                .preempt(&mut self.machine.cpu, &mut self.machine.mem)?
            {
                return match self.outcome(end)? {
                    Some(ev) => Ok(Some(ev)),
                    None => Err(RunError::Emulation("thread switch".into())),
                };
            }
            if self.linux.needs_slice() {
                self.thread_slice = Some(now + THREAD_SLICE);
            }
        }
        if let Err(end) = self
            .linux
            .timer_tick(&mut self.machine.cpu, &mut self.machine.mem)?
        {
            return match self.outcome(end)? {
                Some(ev) => Ok(Some(ev)),
                None => Err(RunError::Emulation("timer signal".into())),
            };
        }
        if self.slice_end.is_some_and(|s| now >= s) {
            self.slice_end = None;
            return Ok(Some(Event::Preempted));
        }
        // Stopped early: the thread's timer was still armed for an earlier run
        // (timer.rs arms lazily), or another signal came. Aim it at this run.
        self.arm_timer()?;
        Ok(None)
    }

    /// The guest took a CPU exception: true when the program handles its signal (the vCPU
    /// now runs the handler), false when the run ends with the crash report.
    #[cold]
    fn fault_handled(&mut self) -> Result<bool, RunError> {
        match self
            .linux
            .deliver_fault(&mut self.machine.cpu, &mut self.machine.mem)?
        {
            FaultDelivery::Delivered(_) => Ok(true),
            FaultDelivery::NotHandled => Ok(false),
            FaultDelivery::Looping(sig, n) => {
                self.printer.log(&format!(
                    "the {} handler let the same fault happen {n} times in a row: the program is ended",
                    signal_name(sig as i32)
                ));
                Ok(false)
            }
        }
    }

    /// The guest took an exception: its crash report, or a GDB session at the crash when
    /// `remote_debug_on_exception` asks for one.
    #[cold]
    fn crashed(&mut self) -> Result<Event, RunError> {
        let report = decode_exception(
            &mut self.machine.cpu,
            &self.machine.mem,
            &self.elf.symbols,
            &self.layout,
        )?;
        if self.opts.gdb.as_ref().is_some_and(|g| g.on_exception) {
            return crate::debug::on_crash(self, report);
        }
        Err(RunError::Crash(report))
    }

    /// A VM exit the engine never causes, with the symbol it happened in.
    #[cold]
    fn unexpected_exit(&self, exit: Exit) -> RunError {
        let rip = self.machine.cpu.regs().rip;
        let symbol = self
            .elf
            .symbols
            .lookup(rip)
            .map(|(n, o)| format!(" in {n}+{o:#x}"))
            .unwrap_or_default();
        RunError::UnexpectedExit { exit, rip, symbol }
    }

    /// Emulate the system call the guest stopped at; Some(event) if the caller must see it.
    pub(crate) fn syscall(&mut self) -> Result<Option<Event>, RunError> {
        if self.conn_fds {
            let r = self.machine.cpu.regs();
            let on_conn = matches!(
                r.rax as i64,
                libc::SYS_write | libc::SYS_writev | libc::SYS_sendto | libc::SYS_close
            ) && r.rdi as i32 >= CONN_FD_BASE;
            if on_conn {
                return Ok(Some(Event::ConnCall {
                    nr: r.rax,
                    args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9],
                }));
            }
        }
        let o = self.linux.handle(
            &mut self.machine.cpu,
            &mut self.machine.mem,
            &mut self.printer,
        )?;
        self.outcome(o)
    }

    /// What a system call's outcome means for the run.
    fn outcome(&self, o: SyscallOutcome) -> Result<Option<Event>, RunError> {
        match o {
            SyscallOutcome::Continue => Ok(None),
            SyscallOutcome::Exit(c) => Ok(Some(Event::Exited(c))),
            SyscallOutcome::Killed(s) => Err(RunError::Killed(s)),
            SyscallOutcome::DeadlineExceeded => Err(self.timeout_error()),
            SyscallOutcome::Fatal(m) => Err(RunError::Emulation(m)),
        }
    }

    /// Hypercalls with the same meaning everywhere. Returns false if the caller must handle it.
    pub(crate) fn generic_hypercall(&mut self, call: Call) -> Result<bool, RunError> {
        let ret: u64 = match call {
            Call::RegisterFunc { index: idx, func } => {
                let f = func.0;
                if self.initialized {
                    // The handler table is part of the frozen state: a request must not be
                    // able to change what the next request runs.
                    self.printer
                        .log("register_func() is only allowed before wait_for_requests()");
                    u64::MAX
                } else if f != 0 && !self.layout.is_user(f) {
                    u64::MAX
                } else {
                    let slot = match idx {
                        1 => Some(&mut self.handlers.get),
                        2 => Some(&mut self.handlers.post),
                        3 => Some(&mut self.handlers.request),
                        4 => Some(&mut self.handlers.stream_post),
                        5 => Some(&mut self.handlers.on_error),
                        6 => Some(&mut self.handlers.on_live_update),
                        7 => Some(&mut self.handlers.on_live_restore),
                        12 => Some(&mut self.handlers.socket_pause),
                        _ => None,
                    };
                    match slot {
                        Some(s) => {
                            *s = f;
                            self.registered = true;
                            0
                        }
                        // Index 0 is accepted as by the reference (whose VCL-side entry it
                        // is); nothing in edgevm calls it.
                        None if idx == 0 => {
                            self.registered = true;
                            0
                        }
                        None => u64::MAX,
                    }
                }
            }
            Call::Log { buf } => {
                let len = buf.len.min(1 << 20) as usize;
                match self.machine.mem.read_vec(buf.addr(), len) {
                    Ok(mut b) => {
                        // Same printer and output budget as the program's stderr.
                        if b.last() != Some(&b'\n') {
                            b.push(b'\n');
                        }
                        self.printer.write(2, &b);
                        0
                    }
                    Err(_) => u64::MAX,
                }
            }
            Call::RegexCompile { .. }
            | Call::RegexFree { .. }
            | Call::RegexMatch { .. }
            | Call::RegexSubst { .. } => self.regex_call(call),
            Call::Request { .. } => {
                self.unknown_call(call.num());
                return Ok(true);
            }
            Call::IsDebug => u64::from(self.opts.debug),
            Call::IsStorage => u64::from(self.opts.storage),
            Call::Breakpoint => crate::debug::breakpoint_call(self),
            Call::SharedMemoryArea => {
                let regs = self.machine.cpu.regs_mut();
                regs.rdx = self.layout.mem_size;
                self.layout.shared_start
            }
            Call::GetMeminfo { info } => {
                // In a request, the request's allocation limit and use; else the program's.
                let (limit, used) = self
                    .linux
                    .request_usage()
                    .map(|(used, limit)| (limit, used))
                    .unwrap_or((0, 0));
                let m = MemInfo {
                    max_memory: self.opts.max_memory,
                    max_reqmem: limit,
                    reqmem_upper: used,
                    reqmem_current: used,
                };
                match write_struct(&mut self.machine.mem, info.addr(), &m) {
                    Ok(()) => 0,
                    Err(_) => u64::MAX,
                }
            }
            _ => return Ok(false),
        };
        self.machine.cpu.regs_mut().rax = ret;
        Ok(true)
    }
}
