//! [`RunError`]: why running a VM failed, with its sources. The server derives the HTTP status
//! and log line from the kind.

use std::time::Duration;

use edgevm_abi::crash::CrashReport;
use edgevm_abi::elf::ElfError;
use edgevm_kvm::{Exit, KvmError, MemError};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A CPU exception in the guest.
    #[error("{0}")]
    Crash(CrashReport),
    /// A deadline passed (boot, request, storage call, ...).
    #[error("{what} timed out after {limit:?}")]
    Timeout { what: &'static str, limit: Duration },
    /// The program killed itself with a signal.
    #[error("the program was killed by signal {}", signal_name(*.0))]
    Killed(i32),
    /// The program used more memory than it may.
    #[error("program exceeded its memory limit: {used} bytes in use, limit {limit} bytes")]
    MemoryLimit { used: u64, limit: u64 },
    /// A KVM ioctl or guest-memory operation failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The ELF could not be loaded.
    #[error("cannot load program: {0}")]
    Elf(#[from] ElfError),
    /// The configured sizes give no valid address space.
    #[error("invalid memory layout: {0}")]
    Layout(String),
    /// The file sandbox settings do not work (e.g. a working directory the program cannot
    /// reach).
    #[error("{0}")]
    Sandbox(String),
    /// The run timer could not be armed.
    #[error("cannot arm timer: {0}")]
    Timer(#[source] nix::Error),
    /// Triple fault.
    #[error("the VM shut down (triple fault) at RIP {rip:#x}")]
    TripleFault { rip: u64 },
    /// A VM exit no guest of ours makes.
    #[error("unexpected VM exit {exit:?} at RIP {rip:#x}{symbol}")]
    UnexpectedExit {
        exit: Exit,
        rip: u64,
        /// " in name+0x.." or empty.
        symbol: String,
    },
    /// System-call emulation cannot go on (the message says why).
    #[error("{0}")]
    Emulation(String),
    /// The program returned through the request trampoline while booting.
    #[error("the program returned through the request trampoline during initialization")]
    ReturnedDuringInit,
    /// wait_for_requests_paused() with a request pointer outside the program's memory.
    #[error("wait_for_requests_paused() was passed a bad request pointer {0:#x}")]
    BadPausedRequest(u64),
    /// The paused point of wait_for_requests_paused() could not be resumed.
    #[error("wait_for_requests_paused(): the VM cannot be paused there ({0})")]
    CannotPause(&'static str),
    /// GDB killed the program (`kill` in a debug session).
    #[error("killed by the debugger")]
    KilledByDebugger,
    /// A storage call failed (during boot).
    #[error(transparent)]
    StorageCall(Box<CallvError>),
    /// A remote storage call (crate::remote) whose stack holds no return address.
    #[error("remote storage call to {func:#x} with a bad stack (RSP {rsp:#x}): no return address")]
    RemoteBadStack { func: u64, rsp: u64 },
}

/// Why a `storage_callv` failed its caller.
#[derive(Debug, thiserror::Error)]
pub enum CallvError {
    /// Bad pointers or too much input in its arguments.
    #[error("bad arguments passed to storage_callv: {0}")]
    BadArguments(#[source] StorageArgsError),
    /// The call was refused or failed in the storage VM.
    #[error("storage call failed: {0}")]
    Failed(#[source] StorageError),
}

/// Bad `storage_callv` arguments.
#[derive(Debug, thiserror::Error)]
pub enum StorageArgsError {
    /// A pointer outside guest memory.
    #[error("{0}")]
    Memory(#[from] MemError),
    /// More than [`crate::storage::MAX_INPUT`] bytes.
    #[error("more than {} bytes of input", crate::storage::MAX_INPUT)]
    TooMuchInput,
    /// A result buffer outside guest memory.
    #[error("result buffer {dst:#x}+{len:#x} is outside guest memory")]
    ResultBuffer { dst: u64, len: u64 },
}

/// Why a storage call, task or live-update hand-over did not happen or failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The storage VM's thread ended.
    #[error("the storage VM is gone")]
    Gone,
    /// Waited `0` for the answer.
    #[error("storage call did not finish within {:.1}s (storage is busy or the call is slow)", .0.as_secs_f64())]
    NoAnswer(Duration),
    /// Waited `0` for the turn.
    #[error("storage call did not start within {:.1}s (storage is busy)", .0.as_secs_f64())]
    NotStarted(Duration),
    /// Not in STORAGE_ALLOW (`what` names the function).
    #[error("storage function {what} is not allowed (not in the program's STORAGE_ALLOW list)")]
    NotAllowed { what: String },
    /// A remote call to an address that is no function entry of the storage program.
    #[error("{what} is not the start of a function of the storage program")]
    NotAFunction { what: String },
    /// A task not in STORAGE_ALLOW.
    #[error("it is not allowed (not in the program's STORAGE_ALLOW list)")]
    TaskNotAllowed,
    /// Task data over [`crate::storage::MAX_INPUT`].
    #[error("task data of {0} bytes (at most {max})", max = crate::storage::MAX_INPUT)]
    TaskTooLarge(u64),
    /// [`crate::storage::MAX_TIMERS`] scheduled tasks already.
    #[error("{} scheduled tasks already", crate::storage::MAX_TIMERS)]
    TooManyTimers,
    /// sys_storage_task(NULL, ...).
    #[error("no task function")]
    NoTaskFunction,
    /// A bad task data pointer.
    #[error("bad task data pointer: {0}")]
    TaskData(#[source] MemError),
    /// The inputs could not be copied into the storage VM.
    #[error("cannot copy storage input: {0}")]
    Input(#[source] MemError),
    /// The chain mailbox could not be read or written.
    #[error("cannot {what} the chain mailbox: {source}")]
    Mailbox {
        what: &'static str,
        #[source]
        source: MemError,
    },
    /// The storage VM failed (crash, timeout, ...).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The storage program exited.
    #[error("the storage program exited (status {0}) during a storage call")]
    Exited(i32),
    /// storage_return twice in one call.
    #[error("storage_return called twice")]
    ReturnedTwice,
    /// storage_return(data, len) with bad data.
    #[error("bad pointer passed to storage_return: {0}")]
    BadReturn(#[source] MemError),
    /// on_live_restore's storage_return named a bad destination.
    #[error("bad destination passed to storage_return in on_live_restore: {0}")]
    BadRestoreDestination(#[source] MemError),
    /// The clean-up after storage_return ran out of time.
    #[error("storage call cleanup timed out ({:.1}s)", .0.as_secs_f64())]
    CleanupTimeout(Duration),
    /// A function's failure, with its name.
    #[error("storage function {what}: {source}")]
    Function {
        what: String,
        #[source]
        source: Box<StorageError>,
    },
    /// Waiting for a live-update hand-over failed.
    #[error("waiting for the storage VM: {0}")]
    Waiting(#[source] Box<StorageError>),
    /// A storage program linked high that remote calls cannot work with.
    #[error("remote storage calls: {0}")]
    Remote(String),
    /// The storage VM did not boot.
    #[error("storage VM: {0}")]
    Boot(#[source] RunError),
    /// The storage program exited during boot.
    #[error("storage VM: the program exited with status {0} before calling wait_for_requests()")]
    BootExited(i32),
    /// A thread could not be started.
    #[error("cannot start {what}: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The storage thread ended while booting.
    #[error("the storage VM thread ended during boot")]
    BootThreadEnded,
    /// A bug in the storage turn logic.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Why a program could not be started (HTTP 503 for its requests).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The configuration or the server refused it (the message says why).
    #[error("{0}")]
    Config(String),
    /// Its binary could not be obtained (the server's loader says why).
    #[error("{0}")]
    Load(String),
    /// The storage VM did not start.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The main VM failed while booting (or freezing).
    #[error(transparent)]
    Run(#[from] RunError),
    /// main() exited instead of waiting for requests.
    #[error("Program did not wait for requests (it exited with status {0} before calling wait_for_requests())")]
    Exited(i32),
    /// No handler registered.
    #[error("the program registered no request handler (set_backend_get/post/request) before wait_for_requests(), and does not wait with wait_for_requests_paused()")]
    NoHandler,
    /// A warmup request failed.
    #[error("warmup request {index} of {count} failed: {failure}")]
    Warmup {
        index: u32,
        count: u32,
        #[source]
        failure: crate::request_vm::RequestFailure,
    },
    /// The first request VM could not be made.
    #[error("cannot create a request VM: {0}")]
    Fork(#[source] RunError),
    /// A thread could not be started.
    #[error("cannot start boot thread: {0}")]
    Thread(#[source] std::io::Error),
    /// edgevm panicked while booting it.
    #[error("internal error in edgevm while booting the program")]
    Panicked,
}

impl From<KvmError> for BootError {
    fn from(e: KvmError) -> Self {
        BootError::Run(RunError::Kvm(e))
    }
}

impl From<CallvError> for RunError {
    fn from(e: CallvError) -> Self {
        RunError::StorageCall(Box::new(e))
    }
}

impl From<MemError> for RunError {
    fn from(e: MemError) -> Self {
        RunError::Kvm(KvmError::Memory(e))
    }
}

/// Name of a signal number.
pub fn signal_name(sig: i32) -> String {
    match sig {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        3 => "SIGQUIT".into(),
        4 => "SIGILL".into(),
        5 => "SIGTRAP".into(),
        6 => "SIGABRT (abort)".into(),
        7 => "SIGBUS".into(),
        8 => "SIGFPE".into(),
        9 => "SIGKILL".into(),
        11 => "SIGSEGV".into(),
        13 => "SIGPIPE".into(),
        14 => "SIGALRM".into(),
        15 => "SIGTERM".into(),
        n => format!("{n}"),
    }
}
