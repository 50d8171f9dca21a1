//! [`VmOptions`]: everything needed to boot one program, and the environment it gets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgevm_abi::layout;

/// Everything needed to boot one program. Built from the configuration by the server, or
/// from the command line by `edgevm run`.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Program name (KVM_NAME, log prefix).
    pub name: String,
    /// Group name (KVM_GROUP).
    pub group: String,
    /// Where the program came from (readlink("/proc/self/exe")).
    pub program_path: PathBuf,
    /// The ELF file.
    pub binary: Arc<Vec<u8>>,
    /// GDB remote debugging (allow_debug, remote_debug_on_exception, `edgevm run --gdb`);
    /// None: never (the run loop then has no debugging code on its path).
    pub gdb: Option<crate::debug::DebugSettings>,
    /// main_arguments (`argv[1..]`; `argv[0]` is the program name).
    pub arguments: Vec<String>,
    /// environment ("K=V"), appended after the defaults.
    pub environment: Vec<String>,
    /// max_memory, bytes.
    pub max_memory: u64,
    /// address_space, bytes (raised to fit max_memory and shared memory).
    pub address_space: u64,
    /// shared_memory, bytes.
    pub shared_memory: u64,
    /// max_boot_time.
    pub max_boot_time: Duration,
    /// verbose: loading details.
    pub verbose: bool,
    /// verbose_syscalls: log every system call of the main VM.
    pub verbose_syscalls: bool,
    /// Print guest output without the `>>> [name] ` prefix.
    pub raw_output: bool,
    /// This VM is the storage VM (KVM_TYPE=storage).
    pub storage: bool,
    /// KVM_DEBUG=1 and sys_is_debug() true.
    pub debug: bool,
    /// control_ephemeral: the program may call sys_make_ephemeral() during init.
    pub control_ephemeral: bool,
    /// Host file behind the guest's `state` file (KVM_STATE): `<filename>.state`. None: the
    /// program has no state file (opening it fails with ENOENT).
    pub state_file: Option<PathBuf>,
    /// allowed_paths: the host files the program may reach, under their virtual names.
    pub allowed_paths: Vec<edgevm_abi::sandbox::PathRule>,
    /// current_working_directory (a guest path; "/" by default).
    pub cwd: String,
    /// `executable_heap`: brk and mmap memory executable, W+X allowed.
    pub executable_heap: bool,
    /// `verbose_pagetables`: log the page protections after initialization.
    pub verbose_pagetables: bool,
    /// Outgoing network access (`sys_fetch`): policy and fetcher (crate::net).
    pub net: crate::net::NetAccess,
    /// `smp`: extra vCPUs a request may run `multiprocess*` workers on (0..=16).
    pub smp: u32,
    /// `blackout_area`: page-aligned ranges [start, end) the program can never map or touch.
    pub blackout_area: Vec<(u64, u64)>,
    /// `remapping` / `executable_remapping`: (guest-virtual start, length, executable):
    /// memory at those addresses, 2 MiB aligned, above the address space.
    pub remappings: Vec<(u64, u64, bool)>,
    /// `mmap_backed_files`: read-only file mappings share one sealed copy of the file
    /// between all VMs instead of a private copy each.
    pub mmap_backed_files: bool,
    /// `relocate_fixed_mmap` (default true): a MAP_FIXED mapping outside the program's mmap
    /// area gets memory elsewhere; false: mmap hints are honoured and such mappings fail.
    pub relocate_fixed_mmap: bool,
    /// Where guest output goes: true (`stdout`, and always under `edgevm run`) prints what the
    /// program writes to fd 1 on the host's stdout and fd 2 on stderr; false prints both on
    /// stderr, the server's log.
    pub output_to_stdout: bool,
    /// Huge pages asked for guest memory (`hugepages`, `hugepage_arena_size`,
    /// `request_hugepage_arena_size`, `transparent_hugepages`).
    pub huge_pages: HugePages,
}

/// How much guest memory, from guest-physical 0, the host is asked to back with transparent
/// huge pages (`madvise(MADV_HUGEPAGE)`), in bytes; 0 = none, `u64::MAX` = all of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HugePages {
    /// The main (and storage) VM's memory: the program's image.
    pub main: u64,
    /// Each request VM's view: its working memory.
    pub request: u64,
}

impl VmOptions {
    /// Defaults for a program file (the glossary's defaults).
    pub fn new(name: &str, program_path: PathBuf, binary: Vec<u8>) -> Self {
        VmOptions {
            name: name.to_string(),
            group: "default".into(),
            program_path,
            binary: Arc::new(binary),
            gdb: None,
            arguments: Vec::new(),
            environment: Vec::new(),
            max_memory: 256 << 20,
            address_space: 256 << 20,
            shared_memory: 0,
            max_boot_time: Duration::from_secs(16),
            verbose: false,
            verbose_syscalls: false,
            raw_output: false,
            storage: false,
            debug: false,
            control_ephemeral: false,
            state_file: None,
            allowed_paths: Vec::new(),
            cwd: "/".into(),
            executable_heap: false,
            verbose_pagetables: false,
            net: crate::net::NetAccess::default(),
            smp: 0,
            blackout_area: Vec::new(),
            remappings: Vec::new(),
            mmap_backed_files: false,
            relocate_fixed_mmap: true,
            output_to_stdout: true,
            huge_pages: HugePages::default(),
        }
    }

    /// `<filename>.state`: where the state file of a program kept at `filename` lives.
    pub fn state_path_for(filename: &std::path::Path) -> PathBuf {
        let mut s = filename.as_os_str().to_owned();
        s.push(".state");
        PathBuf::from(s)
    }

    /// The effective guest memory size: address_space, raised to hold max_memory plus the
    /// supervisor area and shared memory, rounded up to 2 MiB.
    pub fn memory_size(&self) -> u64 {
        const MB2: u64 = 2 << 20;
        let need = self
            .max_memory
            .saturating_add(self.shared_memory)
            .saturating_add(layout::USER_BASE + layout::INPUT_AREA_SIZE + layout::TABLES_SIZE);
        // Oversized values saturate here and are refused by Layout::new with a clear error.
        self.address_space
            .max(need)
            .div_ceil(MB2)
            .saturating_mul(MB2)
    }
}

/// Environment every program gets, then the configured `environment`.
pub fn program_environment(o: &VmOptions) -> Vec<String> {
    let mut env = vec![
        "LC_TYPE=C".to_string(),
        "LC_ALL=C".to_string(),
        "USER=root".to_string(),
        format!("KVM_NAME={}", o.name),
        format!("KVM_GROUP={}", o.group),
        format!("KVM_TYPE={}", if o.storage { "storage" } else { "request" }),
        // The state file is `/state`; relative `state` names it while the working directory
        // is `/`.
        if o.cwd == "/" || o.cwd.is_empty() {
            "KVM_STATE=state".to_string()
        } else {
            "KVM_STATE=/state".to_string()
        },
        format!("KVM_DEBUG={}", u8::from(o.debug)),
        // Tells edgevm's kvm_api.h that the I/O area is there (in-guest header calls).
        "EDGEVM_IO=1".to_string(),
    ];
    env.extend(o.environment.iter().cloned());
    env
}
