//! The TCP server mode (`server` in a program's configuration; the reference's experimental
//! epoll server): the program serves connections itself with the socket-event API, while the
//! host owns the listening socket and every accepted connection.
//!
//! After the program is frozen, `systems` long-lived VMs are forked from its image. Each calls
//! the program's `set_socket_prepare_for_pause` callback with its index, which must reach
//! `wait_for_socket_events_paused(events, max)`; the VM then stays stopped in that call. Each
//! system has a host thread with its own epoll (mio) over the shared listener and the
//! connections it accepted: it accepts, reads and writes non-blocking, and resumes its VM
//! with a batch of events (`SOCKET_CONNECT`, `SOCKET_READ` with the bytes read,
//! `SOCKET_WRITABLE`, `SOCKET_DISCONNECT`) written to `events`, the count in RAX. What the
//! program sends with `sys_sockets_write` is written at once, the rest kept (bounded) until
//! the connection takes it. No HTTP worker is ever involved. See docs/DESIGN.md, "TCP server
//! mode".

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use edgevm_abi::api::Call;
use edgevm_abi::linux::Output;
use edgevm_kvm::Vcpu;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::invoker::Invoker;
use crate::request_vm::{RequestSettings, RequestVm};
use crate::storage::StorageHandle;
use crate::vm::{Event, Frozen};

/// Where a program's server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address and port.
    Tcp(SocketAddr),
    /// A Unix-domain stream socket at this path.
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The `server` setting.
#[derive(Debug, Clone)]
pub struct ServerMode {
    /// Where to listen.
    pub listen: Listen,
    /// VMs serving connections in parallel.
    pub systems: u32,
    /// Connections open at once (all systems).
    pub max_connections: u32,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

/// `enum SocketEvent` of kvm_api.h.
const SOCKET_CONNECT: i32 = 0;
const SOCKET_READ: i32 = 1;
const SOCKET_WRITABLE: i32 = 2;
const SOCKET_DISCONNECT: i32 = 3;
/// `sizeof(struct kvm_socket_event)`.
const EVENT_SIZE: u64 = 40;
/// First connection number a program sees (as the reference: 0x1000 + n).
const FIRST_FD: i32 = 0x1000;

/// Bytes read from one connection into one `SOCKET_READ` event.
pub const READ_CHUNK: usize = 64 << 10;
/// Guest memory each system VM maps for the data and strings of one batch of events.
pub const EVENT_AREA: u64 = 256 << 10;
/// Events in one batch, whatever `max` the program passes.
pub const MAX_BATCH: usize = 256;
/// Bytes the host keeps for a connection that does not take what the program sent.
pub const MAX_BUFFERED: usize = 1 << 20;
/// Entries one `sys_sockets_write` call handles.
pub const MAX_WRITES: u64 = 256;
/// Connections accepted by one system per loop turn.
const ACCEPTS_PER_TURN: usize = 64;
/// Wait before a failed system VM is started again.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// How often a system looks at idle connections and at a full connection table.
const TICK: Duration = Duration::from_millis(250);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// A bound listening socket, shared by the systems of a program (and by the next version of
/// the program during a live update: [`listener_for`]).
struct Listener {
    tcp: Option<std::net::TcpListener>,
    unix: Option<(std::os::unix::net::UnixListener, PathBuf, u64)>,
}

impl Listener {
    fn bind(at: &Listen) -> io::Result<Listener> {
        match at {
            Listen::Tcp(a) => {
                // std sets SO_REUSEADDR: a restarted server binds while old connections
                // linger in TIME_WAIT. No SO_REUSEPORT: nobody else may share the port.
                let l = std::net::TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Ok(Listener {
                    tcp: Some(l),
                    unix: None,
                })
            }
            Listen::Unix(p) => {
                // A socket file left by a previous run is replaced; anything else is not ours.
                if let Ok(m) = std::fs::symlink_metadata(p) {
                    if !m.file_type().is_socket() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "the path exists and is not a socket",
                        ));
                    }
                    std::fs::remove_file(p)?;
                }
                let l = std::os::unix::net::UnixListener::bind(p)?;
                l.set_nonblocking(true)?;
                let ino = std::fs::symlink_metadata(p).map(|m| m.ino()).unwrap_or(0);
                Ok(Listener {
                    tcp: None,
                    unix: Some((l, p.clone(), ino)),
                })
            }
        }
    }

    fn fd(&self) -> RawFd {
        match (&self.tcp, &self.unix) {
            (Some(t), _) => t.as_raw_fd(),
            (None, Some((u, _, _))) => u.as_raw_fd(),
            (None, None) => -1,
        }
    }

    /// A new connection and its peer's address, as text.
    fn accept(&self) -> io::Result<(Stream, String)> {
        if let Some(t) = &self.tcp {
            let (s, peer) = t.accept()?;
            s.set_nonblocking(true)?;
            let _ = s.set_nodelay(true);
            return Ok((
                Stream::Tcp(mio::net::TcpStream::from_std(s)),
                peer.to_string(),
            ));
        }
        if let Some((u, path, _)) = &self.unix {
            let (s, _) = u.accept()?;
            s.set_nonblocking(true)?;
            return Ok((
                Stream::Unix(mio::net::UnixStream::from_std(s)),
                format!("unix:{}", path.display()),
            ));
        }
        Err(io::ErrorKind::NotConnected.into())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket file if it is still the one this listener made.
        if let Some((_, p, ino)) = &self.unix {
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.ino() == *ino) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

type Registry = Vec<(Listen, String, Weak<Listener>)>;
static LISTENERS: Mutex<Registry> = Mutex::new(Vec::new());

/// The listener of program `name` at `at`: the one it already has (a live update's new
/// program takes over the old one's socket, so no connection attempt is refused during the
/// update), or a new one. Another program's listener at the same place is an error.
fn listener_for(name: &str, at: &Listen) -> Result<Arc<Listener>, String> {
    let mut reg = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|(_, _, w)| w.strong_count() > 0);
    if let Some((_, owner, w)) = reg.iter().find(|(l, _, _)| l == at) {
        if owner != name {
            return Err(format!("{at} is already served by program '{owner}'"));
        }
        if let Some(l) = w.upgrade() {
            return Ok(l);
        }
    }
    let l = Arc::new(Listener::bind(at).map_err(|e| format!("cannot listen on {at}: {e}"))?);
    reg.push((at.clone(), name.to_string(), Arc::downgrade(&l)));
    Ok(l)
}

enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Conn {
    stream: Stream,
    /// What the program sent and the connection did not take yet.
    out: VecDeque<u8>,
    /// The socket may have bytes (or EOF) to read.
    readable: bool,
    /// The program was told the connection is full (or it wrote while something was kept):
    /// a `SOCKET_WRITABLE` follows when all is sent.
    blocked: bool,
    /// The program asked to close it once everything is sent.
    closing: bool,
    /// Broken (a write failed): closed at the next turn.
    dead: bool,
    last: Instant,
}

/// One queued event.
enum Pending {
    Connect(i32, String),
    Writable(i32),
    Disconnect(i32),
}

/// A program's TCP server: its systems' threads. Dropping it (or [`TcpServer::stop`]) closes
/// every connection and the listener (unless a newer program shares it).
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    /// Held while a system accepts: once [`TcpServer::signal_stop`] returns, no system
    /// accepts again (a live update's new program gets every later connection).
    accepting: Arc<Mutex<()>>,
    wakers: Vec<Arc<Waker>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What a system thread needs.
struct SystemCtx {
    name: String,
    id: u32,
    mode: ServerMode,
    frozen: Arc<Frozen>,
    request: RequestSettings,
    storage: Option<StorageHandle>,
    listener: Arc<Listener>,
    stop: Arc<AtomicBool>,
    accepting: Arc<Mutex<()>>,
    open: Arc<AtomicUsize>,
}

impl TcpServer {
    /// Listen and start the program's systems (the frozen program must have registered
    /// `set_socket_prepare_for_pause`).
    pub fn start(
        name: &str,
        mode: &ServerMode,
        frozen: Arc<Frozen>,
        request: RequestSettings,
        storage: Option<StorageHandle>,
    ) -> Result<TcpServer, String> {
        if frozen.handlers.socket_pause == 0 {
            return Err(
                "the program has a 'server' but registered no socket callback \
                 (set_socket_prepare_for_pause) before waiting for requests"
                    .into(),
            );
        }
        let listener = listener_for(name, &mode.listen)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = Arc::new(Mutex::new(()));
        let open = Arc::new(AtomicUsize::new(0));
        let mut wakers = Vec::new();
        let mut threads = Vec::new();
        for id in 0..mode.systems.max(1) {
            let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
            let waker = Arc::new(
                Waker::new(poll.registry(), WAKER).map_err(|e| format!("epoll waker: {e}"))?,
            );
            let ctx = SystemCtx {
                name: name.to_string(),
                id,
                mode: mode.clone(),
                frozen: frozen.clone(),
                request: request.clone(),
                storage: storage.clone(),
                listener: listener.clone(),
                stop: stop.clone(),
                accepting: accepting.clone(),
                open: open.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("tcp{id}:{name}"))
                .spawn(move || System::new(ctx, poll).run())
                .map_err(|e| format!("cannot start a server thread: {e}"))?;
            wakers.push(waker);
            threads.push(t);
        }
        tracing::info!(
            "Program '{name}': TCP server on {} (systems={}, max_connections={})",
            mode.listen,
            mode.systems,
            mode.max_connections
        );
        Ok(TcpServer {
            stop,
            accepting,
            wakers,
            threads: Mutex::new(threads),
        })
    }

    /// Stop accepting now; the systems close their connections and end soon after.
    pub fn signal_stop(&self) {
        let _held = self.accepting.lock().unwrap_or_else(|e| e.into_inner());
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Stop accepting, close every connection and wait for the systems to end.
    pub fn stop(&self) {
        self.signal_stop();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the paused program waits: `events` and `max` of its `wait_for_socket_events_paused`.
#[derive(Clone, Copy)]
struct Waiting {
    events: u64,
    max: usize,
}

struct System {
    ctx: SystemCtx,
    poll: Poll,
    conns: HashMap<i32, Conn>,
    next_fd: i32,
    listener_ready: bool,
    pending: VecDeque<Pending>,
}

impl System {
    fn new(ctx: SystemCtx, poll: Poll) -> System {
        System {
            ctx,
            poll,
            conns: HashMap::new(),
            next_fd: FIRST_FD,
            listener_ready: true,
            pending: VecDeque::new(),
        }
    }

    fn stopping(&self) -> bool {
        self.ctx.stop.load(Ordering::SeqCst)
    }

    /// Start the VM, serve until stopped; a VM that fails is started again (its connections
    /// are closed).
    fn run(mut self) {
        let fd = self.ctx.listener.fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), LISTENER, Interest::READABLE)
        {
            tracing::error!("{}: TCP system {}: epoll: {e}", self.ctx.name, self.ctx.id);
            return;
        }
        while !self.stopping() {
            match self.start_vm() {
                Ok((inv, at, area)) => {
                    let why = self.serve(inv, at, area);
                    self.close_all();
                    if let Some(why) = why {
                        tracing::error!(
                            "Program '{}': TCP system {} failed: {why}; its connections are closed and it starts again",
                            self.ctx.name,
                            self.ctx.id
                        );
                    } else {
                        break;
                    }
                }
                Err(why) => tracing::error!(
                    "Program '{}': TCP system {} cannot start: {why}",
                    self.ctx.name,
                    self.ctx.id
                ),
            }
            // Back off before starting again (a program that fails at once must not spin).
            let mut events = Events::with_capacity(4);
            let until = Instant::now() + RESTART_BACKOFF;
            while !self.stopping() && Instant::now() < until {
                let _ = self.poll.poll(&mut events, Some(TICK));
            }
        }
        self.close_all();
    }

    /// Fork the VM and run the socket callback to its first wait.
    fn start_vm(&mut self) -> Result<(Invoker, Waiting, u64), String> {
        let vm = RequestVm::new(
            self.ctx.frozen.clone(),
            self.ctx.request.clone(),
            self.ctx.storage.clone(),
        )
        .map_err(|e| format!("cannot create the VM: {e}"))?;
        let mut inv = vm.inv;
        inv.index = self.ctx.id;
        let mut mem_area = None;
        {
            let vm = &mut inv.vm;
            if let Some(a) = vm.linux.map_anonymous(EVENT_AREA, &mut vm.machine.mem) {
                mem_area = Some(a);
            }
        }
        let area = mem_area.ok_or("no memory for the event area (max_memory)")?;
        let handler = inv.vm.handlers.socket_pause;
        let rsp = inv.entry.rsp.wrapping_sub(512);
        let entry = inv.entry.clone();
        inv.vm
            .enter_handler(&entry, handler, rsp, &[u64::from(self.ctx.id)])
            .map_err(|e| e.to_string())?;
        let at = self.run_vm(&mut inv, "socket callback (max_request_time)")?;
        Ok((inv, at, area))
    }

    /// Run the VM until it waits for events again, serving its calls.
    fn run_vm(&mut self, inv: &mut Invoker, what: &'static str) -> Result<Waiting, String> {
        inv.vm
            .printer
            .set_budget(Some(crate::request_vm::REQUEST_OUTPUT_BUDGET));
        inv.vm.set_slice(None);
        inv.vm
            .start_deadline(self.ctx.request.max_request_time, what)
            .map_err(|e| e.to_string())?;
        let r = self.run_vm_inner(inv);
        inv.vm.stop_deadline();
        inv.vm.printer.flush();
        r
    }

    fn run_vm_inner(&mut self, inv: &mut Invoker) -> Result<Waiting, String> {
        loop {
            let ev = inv
                .vm
                .run_until_event()
                .map_err(|e| crate::request_vm::run_error_failure(e).message)?;
            match ev {
                Event::Hypercall(Call::WaitForRequestsPaused { req }) => {
                    let max = inv.vm.machine.cpu.regs().rsi as i64;
                    if max < 1 {
                        return Err(format!(
                            "wait_for_socket_events_paused() with max {max} (at least 1)"
                        ));
                    }
                    return Ok(Waiting {
                        events: req.addr(),
                        max: (max as usize).min(MAX_BATCH),
                    });
                }
                Event::Hypercall(Call::SocketsWrite { events, n }) => {
                    let v = self.sockets_write(inv, events.addr(), n);
                    inv.vm.machine.cpu.regs_mut().rax = v as u64;
                }
                Event::Hypercall(Call::StorageCallv { .. }) => match inv.storage_hypercall() {
                    Ok(Some(v)) => inv.vm.machine.cpu.regs_mut().rax = v,
                    Ok(None) => return Err("internal error: storage call preempted".into()),
                    Err(f) => return Err(f.message),
                },
                Event::RemoteCall(c) => match inv.remote_call(c) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("internal error: remote storage call preempted".into()),
                    Err(f) => return Err(f.message),
                },
                Event::Hypercall(Call::BackendResponse { .. }) => {
                    inv.vm.printer.log(
                        "backend_response() has no HTTP request to answer in the socket event loop; returning -1",
                    );
                    inv.vm.machine.cpu.regs_mut().rax = u64::MAX;
                }
                Event::Hypercall(Call::BeginStreaming { .. }) => {
                    return Err("begin_streaming_response() in the socket event loop".into())
                }
                Event::Hypercall(call) => inv.api_call(call).map_err(|f| f.message)?,
                Event::Exited(code) => return Err(format!("the program exited (status {code})")),
                Event::Returned => {
                    return Err(
                        "the socket callback returned instead of waiting for socket events".into(),
                    )
                }
                Event::Preempted => return Err("internal error: preempted".into()),
            }
        }
    }

    /// Serve until stopped (None) or the VM fails (Some(why)).
    fn serve(&mut self, mut inv: Invoker, mut at: Waiting, area: u64) -> Option<String> {
        let mut events = Events::with_capacity(256);
        // The listener's edge may have gone by while the VM (re)started: look at it now.
        self.listener_ready = true;
        loop {
            if self.stopping() {
                return None;
            }
            self.accept();
            self.expire_idle();
            if self.has_work() {
                match self.deliver(&mut inv, at, area) {
                    Ok(next) => at = next,
                    Err(why) => return Some(why),
                }
                // More may be ready at once: look without waiting.
                let _ = self.poll.poll(&mut events, Some(Duration::ZERO));
            } else if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Some(format!("epoll: {e}"));
                }
                continue;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.listener_ready = true,
                    WAKER => {}
                    Token(t) => {
                        let fd = t as i32;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            if let Some(c) = self.conns.get_mut(&fd) {
                                c.readable = true;
                            }
                        }
                        if ev.is_writable() || ev.is_write_closed() {
                            self.flush(fd);
                        }
                    }
                }
            }
        }
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty() || self.conns.values().any(|c| c.readable || c.dead)
    }

    /// Take new connections while under `max_connections`.
    fn accept(&mut self) {
        let max = self.ctx.mode.max_connections as usize;
        for _ in 0..ACCEPTS_PER_TURN {
            if !self.listener_ready {
                return;
            }
            if self.ctx.open.fetch_add(1, Ordering::SeqCst) >= max {
                // Full: the connection waits in the kernel's backlog; looked at every tick.
                self.ctx.open.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let held = self.ctx.accepting.lock().unwrap_or_else(|e| e.into_inner());
            if self.stopping() {
                self.ctx.open.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let accepted = self.ctx.listener.accept();
            drop(held);
            match accepted {
                Ok((mut stream, peer)) => {
                    let fd = self.new_fd();
                    let reg = self.poll.registry().register(
                        stream.source(),
                        Token(fd as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if reg.is_err() {
                        self.ctx.open.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    self.conns.insert(
                        fd,
                        Conn {
                            stream,
                            out: VecDeque::new(),
                            readable: true,
                            blocked: false,
                            closing: false,
                            dead: false,
                            last: Instant::now(),
                        },
                    );
                    self.pending.push_back(Pending::Connect(fd, peer));
                    // As the reference's edge-triggered loop: a new connection is writable.
                    self.pending.push_back(Pending::Writable(fd));
                }
                Err(e) => {
                    self.ctx.open.fetch_sub(1, Ordering::SeqCst);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        self.listener_ready = false;
                    } else if e.kind() != io::ErrorKind::Interrupted
                        && e.kind() != io::ErrorKind::ConnectionAborted
                    {
                        // EMFILE and the like: try again at the next tick.
                        tracing::warn!("Program '{}': accept: {e}", self.ctx.name);
                        return;
                    }
                }
            }
        }
    }

    /// A connection number not in use.
    fn new_fd(&mut self) -> i32 {
        loop {
            let fd = self.next_fd;
            self.next_fd = if fd >= i32::MAX - 1 { FIRST_FD } else { fd + 1 };
            if !self.conns.contains_key(&fd) {
                return fd;
            }
        }
    }

    /// Close connections idle for `idle_timeout`, and broken ones.
    fn expire_idle(&mut self) {
        let now = Instant::now();
        let idle = self.ctx.mode.idle_timeout;
        let gone: Vec<i32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.dead || now.duration_since(c.last) >= idle)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in gone {
            self.close(fd);
        }
    }

    /// Close connection `fd` and tell the program.
    fn close(&mut self, fd: i32) {
        if let Some(mut c) = self.conns.remove(&fd) {
            let _ = self.poll.registry().deregister(c.stream.source());
            self.ctx.open.fetch_sub(1, Ordering::SeqCst);
            self.pending.retain(
                |p| !matches!(p, Pending::Writable(f) | Pending::Connect(f, _) if *f == fd),
            );
            self.pending.push_back(Pending::Disconnect(fd));
            // Another connection may be waiting in the backlog now.
            self.listener_ready = true;
        }
    }

    /// Close everything without telling the program (it is gone or stopping).
    fn close_all(&mut self) {
        for (_, mut c) in self.conns.drain() {
            let _ = self.poll.registry().deregister(c.stream.source());
            self.ctx.open.fetch_sub(1, Ordering::SeqCst);
        }
        self.pending.clear();
    }

    /// Send what is kept for `fd`; tell the program when all went out after it was blocked.
    fn flush(&mut self, fd: i32) {
        let Some(c) = self.conns.get_mut(&fd) else {
            return;
        };
        while !c.out.is_empty() {
            let (a, _) = c.out.as_slices();
            match c.stream.write(a) {
                Ok(0) => {
                    c.dead = true;
                    break;
                }
                Ok(n) => {
                    c.out.drain(..n);
                    c.last = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    break;
                }
            }
        }
        if c.closing || c.dead {
            c.dead = true;
            return;
        }
        if c.blocked {
            c.blocked = false;
            self.pending.push_back(Pending::Writable(fd));
        }
    }

    /// Write up to one batch of events for the waiting program and run it to its next wait.
    fn deliver(&mut self, inv: &mut Invoker, at: Waiting, area: u64) -> Result<Waiting, String> {
        let mut out: Vec<[u8; EVENT_SIZE as usize]> = Vec::new();
        let mut used = 0u64;
        let mem = &mut inv.vm.machine.mem;
        let ev = |fd: i32, kind: i32, a: u64, b: u64, data: u64, len: u64| {
            let mut e = [0u8; EVENT_SIZE as usize];
            e[0..4].copy_from_slice(&fd.to_le_bytes());
            e[4..8].copy_from_slice(&kind.to_le_bytes());
            e[8..16].copy_from_slice(&a.to_le_bytes());
            e[16..24].copy_from_slice(&b.to_le_bytes());
            e[24..32].copy_from_slice(&data.to_le_bytes());
            e[32..40].copy_from_slice(&len.to_le_bytes());
            e
        };
        // Queued events first, in order.
        while out.len() < at.max {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            match p {
                Pending::Connect(fd, peer) => {
                    let mut text = peer.into_bytes();
                    text.push(0);
                    if used + text.len() as u64 + 1 > EVENT_AREA {
                        self.pending.push_front(Pending::Connect(fd, {
                            text.pop();
                            String::from_utf8_lossy(&text).into_owned()
                        }));
                        break;
                    }
                    let remote = area + used;
                    mem.write(remote, &text).map_err(|e| e.to_string())?;
                    used += text.len() as u64;
                    // The program's arg: none in TCP mode (an empty string).
                    let arg = area + used;
                    mem.write(arg, &[0]).map_err(|e| e.to_string())?;
                    used += 1;
                    out.push(ev(fd, SOCKET_CONNECT, remote, arg, 0, 0));
                }
                Pending::Writable(fd) => out.push(ev(fd, SOCKET_WRITABLE, 0, 0, 0, 0)),
                Pending::Disconnect(fd) => out.push(ev(fd, SOCKET_DISCONNECT, 0, 0, 0, 0)),
            }
        }
        // Then what the connections have to read (room for READ + WRITABLE each).
        let mut buf = vec![0u8; READ_CHUNK];
        let fds: Vec<i32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.readable && !c.dead)
            .map(|(fd, _)| *fd)
            .collect();
        let mut closed = Vec::new();
        for fd in fds {
            if out.len() + 2 > at.max || used >= EVENT_AREA {
                break;
            }
            let Some(c) = self.conns.get_mut(&fd) else {
                continue;
            };
            let room = (EVENT_AREA - used).min(READ_CHUNK as u64) as usize;
            match c.stream.read(&mut buf[..room]) {
                Ok(0) => closed.push(fd),
                Ok(n) => {
                    let data = area + used;
                    mem.write(data, &buf[..n]).map_err(|e| e.to_string())?;
                    used += n as u64;
                    c.last = Instant::now();
                    out.push(ev(fd, SOCKET_READ, 0, 0, data, n as u64));
                    out.push(ev(fd, SOCKET_WRITABLE, 0, 0, 0, 0));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => closed.push(fd),
            }
        }
        for fd in closed {
            self.close(fd);
        }
        if out.is_empty() {
            return Ok(at);
        }
        let bytes: Vec<u8> = out.iter().flatten().copied().collect();
        mem.write(at.events, &bytes).map_err(|e| {
            format!("bad events pointer passed to wait_for_socket_events_paused: {e}")
        })?;
        inv.vm.machine.cpu.regs_mut().rax = out.len() as u64;
        self.run_vm(inv, "socket events (max_request_time)")
    }

    /// `sys_sockets_write(events, n)`: each entry with `SOCKET_WRITABLE` sends its data (the
    /// result, bytes taken or -errno, is written back into its `fd`); `SOCKET_DISCONNECT`
    /// closes the connection once what is kept for it is sent. Returns the entries handled,
    /// or -EFAULT for an unreadable array.
    fn sockets_write(&mut self, inv: &mut Invoker, events: u64, n: u64) -> i64 {
        let n = n.min(MAX_WRITES);
        let mut touched = Vec::new();
        for i in 0..n {
            let at = events.wrapping_add(i * EVENT_SIZE);
            let mem = &mut inv.vm.machine.mem;
            let Ok(e) = mem.read_vec(at, EVENT_SIZE as usize) else {
                return -(libc::EFAULT as i64);
            };
            let word = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap_or_default());
            let fd = i32::from_le_bytes(e[0..4].try_into().unwrap_or_default());
            let kind = i32::from_le_bytes(e[4..8].try_into().unwrap_or_default());
            let (data, len) = (word(24), word(32));
            let result: i64 = match (kind, self.conns.get_mut(&fd)) {
                (SOCKET_WRITABLE | SOCKET_DISCONNECT, None) => -(libc::EBADF as i64),
                (SOCKET_WRITABLE, Some(c)) if c.closing || c.dead => -(libc::EPIPE as i64),
                (SOCKET_WRITABLE, Some(c)) => {
                    let take = (len as usize).min(MAX_BUFFERED - c.out.len());
                    if len == 0 {
                        0
                    } else if take == 0 {
                        c.blocked = true;
                        -(libc::EAGAIN as i64)
                    } else {
                        match mem.read_vec(data, take) {
                            Err(_) => -(libc::EFAULT as i64),
                            Ok(bytes) => {
                                c.out.extend(bytes);
                                touched.push(fd);
                                take as i64
                            }
                        }
                    }
                }
                (SOCKET_DISCONNECT, Some(c)) => {
                    c.closing = true;
                    touched.push(fd);
                    0
                }
                _ => -(libc::EINVAL as i64),
            };
            let r = result.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            // As the reference: the result goes into the entry's fd.
            let _ = mem.write(at, &r.to_le_bytes());
        }
        for fd in touched {
            self.flush(fd);
            if let Some(c) = self.conns.get_mut(&fd) {
                // What could not go out now waits for writability; the program hears of it
                // when all is sent.
                c.blocked |= !c.out.is_empty();
            }
        }
        n as i64
    }
}
