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
//!
//! One acceptor thread per program takes new connections and hands each to the system with
//! the fewest open (round-robin among equals, a system restarting after a failure last), so
//! connections spread evenly. With `websocket_server` the host also does the WebSocket
//! handshake and framing (`websocket.rs`): a connection reaches the program once upgraded,
//! and each `SOCKET_READ` carries one whole message.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
use crate::websocket::{self as ws, Decoder, Handshake, Item};

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
    /// `websocket_server`: the host does the WebSocket handshake and framing; messages of
    /// at most this many bytes. None: plain TCP (`server`).
    pub websocket: Option<usize>,
}

/// A program's server counters (its statistics: `tcp_*` in `/_edgevm/stats`).
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Connections open now (handed to the program or in its handshake).
    pub open: AtomicU64,
    /// Connections accepted since the start.
    pub connections: AtomicU64,
    /// Connections the host closed before the program saw them: WebSocket handshakes
    /// refused or not finished in time.
    pub refused: AtomicU64,
    /// Socket events delivered to the program.
    pub events: AtomicU64,
    /// Bytes read from connections (WebSocket framing included).
    pub bytes_read: AtomicU64,
    /// Bytes written to connections (WebSocket framing included).
    pub bytes_written: AtomicU64,
    /// System VMs that failed (crash, exit, timeout, API misuse) and were started again.
    pub failures: AtomicU64,
}

/// `enum SocketEvent` of kvm_api.h.
const SOCKET_CONNECT: i32 = 0;
const SOCKET_READ: i32 = 1;
const SOCKET_WRITABLE: i32 = 2;
const SOCKET_DISCONNECT: i32 = 3;
/// `sizeof(struct kvm_socket_event)`.
const EVENT_SIZE: u64 = 40;
/// First connection number a program sees (as the reference: 0x1000 + n).
const FIRST_FD: i32 = crate::vm::CONN_FD_BASE;

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
/// Wait before a failed system VM is started again.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// How often a system looks at idle connections and at a full connection table.
const TICK: Duration = Duration::from_millis(250);
/// Most time a WebSocket client has to finish its handshake (or `idle_timeout` if shorter).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the host closes a WebSocket connection (close frame sent, its side shut down), how
/// long it waits for the client to close its side before closing the socket.
const LINGER: Duration = Duration::from_secs(2);
/// Guest memory for the strings of one batch beside a whole WebSocket message.
const AREA_SLACK: u64 = 64 << 10;

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

    /// No more bytes from us (the peer reads EOF after what was sent).
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
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

/// The WebSocket state of a connection (`websocket_server`).
struct WsConn {
    /// The handshake is done: frames follow.
    open: bool,
    /// A close frame was sent (or the handshake refused): what comes in is discarded.
    closed: bool,
    /// The handshake must be done by then.
    deadline: Instant,
    /// The peer's address, for the `SOCKET_CONNECT` sent once upgraded.
    peer: String,
    /// Bytes received and not decoded yet.
    input: Vec<u8>,
    decoder: Decoder,
    /// Whole messages (text?, payload) not delivered yet.
    ready: VecDeque<(bool, Vec<u8>)>,
    /// The last byte from the client; a ping went out since.
    heard: Instant,
    pinged: bool,
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
    /// The program was told of it (`SOCKET_CONNECT`): it hears of its end.
    announced: bool,
    /// `websocket_server` connections.
    ws: Option<Box<WsConn>>,
    /// Our side is shut down; the socket is closed at the client's EOF or then.
    linger: Option<Instant>,
}

/// One queued event.
enum Pending {
    Connect(i32, String, String),
    Writable(i32),
    Disconnect(i32),
}

/// A new connection on its way from the acceptor to a system.
type NewConn = (Stream, String);

/// What the acceptor knows of a system.
struct SystemSlot {
    /// Connections it holds (or that wait for it in `tx`).
    open: AtomicUsize,
    /// Its VM is serving (false while it starts again after a failure).
    up: AtomicBool,
    tx: crossbeam_channel::Sender<NewConn>,
    waker: Arc<Waker>,
}

/// A program's TCP server: its acceptor's and systems' threads. Dropping it (or
/// [`TcpServer::stop`]) closes every connection and the listener (unless a newer program
/// shares it).
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    /// Held while the acceptor accepts: once [`TcpServer::signal_stop`] returns, nothing is
    /// accepted again (a live update's new program gets every later connection).
    accepting: Arc<Mutex<()>>,
    wakers: Vec<Arc<Waker>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What the threads of a server share.
struct Shared {
    name: String,
    mode: ServerMode,
    listener: Arc<Listener>,
    stop: Arc<AtomicBool>,
    accepting: Arc<Mutex<()>>,
    /// Connections open, all systems (bounded by `max_connections`).
    open: AtomicUsize,
    systems: Vec<SystemSlot>,
    /// Wakes the acceptor when a connection closes (room under `max_connections`).
    acceptor: Arc<Waker>,
    counters: Arc<TcpCounters>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A connection of system `id` is gone.
    fn closed(&self, id: u32) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.systems[id as usize]
            .open
            .fetch_sub(1, Ordering::SeqCst);
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        let _ = self.acceptor.wake();
    }
}

/// What a system thread needs.
struct SystemCtx {
    id: u32,
    shared: Arc<Shared>,
    rx: crossbeam_channel::Receiver<NewConn>,
    frozen: Arc<Frozen>,
    request: RequestSettings,
    storage: Option<StorageHandle>,
}

impl TcpServer {
    /// Listen and start the program's systems (the frozen program must have registered
    /// `set_socket_prepare_for_pause`). `counters` are the program's (they outlive a live
    /// update).
    pub fn start(
        name: &str,
        mode: &ServerMode,
        frozen: Arc<Frozen>,
        request: RequestSettings,
        storage: Option<StorageHandle>,
        counters: Arc<TcpCounters>,
    ) -> Result<TcpServer, String> {
        if frozen.handlers.socket_pause == 0 {
            return Err(format!(
                "the program has a '{}' but registered no socket callback \
                 (set_socket_prepare_for_pause) before waiting for requests",
                if mode.websocket.is_some() {
                    "websocket_server"
                } else {
                    "server"
                }
            ));
        }
        let listener = listener_for(name, &mode.listen)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = Arc::new(Mutex::new(()));
        let mut polls = Vec::new();
        let mut slots = Vec::new();
        let mut rxs = Vec::new();
        let mut wakers = Vec::new();
        for _ in 0..mode.systems.max(1) {
            let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
            let waker = Arc::new(
                Waker::new(poll.registry(), WAKER).map_err(|e| format!("epoll waker: {e}"))?,
            );
            let (tx, rx) = crossbeam_channel::unbounded();
            slots.push(SystemSlot {
                open: AtomicUsize::new(0),
                up: AtomicBool::new(false),
                tx,
                waker: waker.clone(),
            });
            wakers.push(waker);
            polls.push(poll);
            rxs.push(rx);
        }
        let apoll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        let awaker =
            Arc::new(Waker::new(apoll.registry(), WAKER).map_err(|e| format!("epoll waker: {e}"))?);
        wakers.push(awaker.clone());
        let shared = Arc::new(Shared {
            name: name.to_string(),
            mode: mode.clone(),
            listener,
            stop: stop.clone(),
            accepting: accepting.clone(),
            open: AtomicUsize::new(0),
            systems: slots,
            acceptor: awaker,
            counters,
        });
        let mut threads = Vec::new();
        let fail = |e: io::Error, threads: &mut Vec<std::thread::JoinHandle<()>>| {
            stop.store(true, Ordering::SeqCst);
            for w in &wakers {
                let _ = w.wake();
            }
            for t in threads.drain(..) {
                let _ = t.join();
            }
            format!("cannot start a server thread: {e}")
        };
        for (id, (poll, rx)) in polls.into_iter().zip(rxs).enumerate() {
            let ctx = SystemCtx {
                id: id as u32,
                shared: shared.clone(),
                rx,
                frozen: frozen.clone(),
                request: request.clone(),
                storage: storage.clone(),
            };
            match std::thread::Builder::new()
                .name(format!("tcp{id}:{name}"))
                .spawn(move || System::new(ctx, poll).run())
            {
                Ok(t) => threads.push(t),
                Err(e) => return Err(fail(e, &mut threads)),
            }
        }
        let sh = shared.clone();
        match std::thread::Builder::new()
            .name(format!("tcpa:{name}"))
            .spawn(move || accept_loop(&sh, apoll))
        {
            Ok(t) => threads.push(t),
            Err(e) => return Err(fail(e, &mut threads)),
        }
        tracing::info!(
            "Program '{name}': {} server on {} (systems={}, max_connections={})",
            if mode.websocket.is_some() {
                "WebSocket"
            } else {
                "TCP"
            },
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

    /// Stop accepting, close every connection and wait for the threads to end.
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

/// The acceptor: takes connections while under `max_connections` and hands each to the
/// system holding the fewest (round-robin among equals; one starting again comes last).
fn accept_loop(sh: &Shared, mut poll: Poll) {
    let fd = sh.listener.fd();
    if let Err(e) = poll
        .registry()
        .register(&mut SourceFd(&fd), LISTENER, Interest::READABLE)
    {
        tracing::error!("Program '{}': TCP acceptor: epoll: {e}", sh.name);
        return;
    }
    let max = sh.mode.max_connections as usize;
    let n = sh.systems.len();
    let mut next = 0usize;
    let mut ready = true;
    let mut events = Events::with_capacity(16);
    while !sh.stopping() {
        if ready && sh.open.load(Ordering::SeqCst) < max {
            let held = sh.accepting.lock().unwrap_or_else(|e| e.into_inner());
            if sh.stopping() {
                return;
            }
            let accepted = sh.listener.accept();
            drop(held);
            match accepted {
                Ok(conn) => {
                    sh.open.fetch_add(1, Ordering::SeqCst);
                    sh.counters.open.fetch_add(1, Ordering::Relaxed);
                    sh.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let pick = (0..n)
                        .map(|k| (next + k) % n)
                        .min_by_key(|&i| {
                            let s = &sh.systems[i];
                            (!s.up.load(Ordering::SeqCst), s.open.load(Ordering::SeqCst))
                        })
                        .unwrap_or(0);
                    next = (pick + 1) % n;
                    let s = &sh.systems[pick];
                    s.open.fetch_add(1, Ordering::SeqCst);
                    if s.tx.send(conn).is_err() {
                        sh.closed(pick as u32);
                    }
                    let _ = s.waker.wake();
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready = false,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted =>
                {
                    continue
                }
                // EMFILE and the like: try again at the next tick.
                Err(e) => tracing::warn!("Program '{}': accept: {e}", sh.name),
            }
        }
        match poll.poll(&mut events, Some(TICK)) {
            Ok(()) => {
                if events.iter().any(|e| e.token() == LISTENER) {
                    ready = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::error!("Program '{}': TCP acceptor: epoll: {e}", sh.name);
                return;
            }
        }
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
    pending: VecDeque<Pending>,
    /// Bytes of the event area.
    area_size: u64,
}

impl System {
    fn new(ctx: SystemCtx, poll: Poll) -> System {
        let area_size = match ctx.shared.mode.websocket {
            Some(max) => EVENT_AREA.max(max as u64 + AREA_SLACK),
            None => EVENT_AREA,
        };
        System {
            ctx,
            poll,
            conns: HashMap::new(),
            next_fd: FIRST_FD,
            pending: VecDeque::new(),
            area_size,
        }
    }

    fn stopping(&self) -> bool {
        self.ctx.shared.stopping()
    }

    fn name(&self) -> &str {
        &self.ctx.shared.name
    }

    fn slot(&self) -> &SystemSlot {
        &self.ctx.shared.systems[self.ctx.id as usize]
    }

    /// Start the VM, serve until stopped; a VM that fails is started again (its connections
    /// are closed).
    fn run(mut self) {
        while !self.stopping() {
            match self.start_vm() {
                Ok((inv, at, area)) => {
                    self.slot().up.store(true, Ordering::SeqCst);
                    let why = self.serve(inv, at, area);
                    self.slot().up.store(false, Ordering::SeqCst);
                    if let Some(why) = why {
                        // Logged and counted before the clients see their connections end.
                        tracing::error!(
                            "Program '{}': TCP system {} failed: {why}; its connections are closed and it starts again",
                            self.name(),
                            self.ctx.id
                        );
                        self.ctx
                            .shared
                            .counters
                            .failures
                            .fetch_add(1, Ordering::Relaxed);
                        self.close_all(ws::CLOSE_INTERNAL);
                    } else {
                        break;
                    }
                }
                Err(why) => tracing::error!(
                    "Program '{}': TCP system {} cannot start: {why}",
                    self.name(),
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
        self.close_all(ws::CLOSE_GOING_AWAY);
        // Connections handed over and never taken.
        while let Ok((stream, _)) = self.ctx.rx.try_recv() {
            drop(stream);
            self.ctx.shared.closed(self.ctx.id);
        }
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
        // write()/writev()/sendto()/close() on a connection number come to conn_call.
        inv.vm.conn_fds = true;
        let mut mem_area = None;
        {
            let vm = &mut inv.vm;
            if let Some(a) = vm.linux.map_anonymous(self.area_size, &mut vm.machine.mem) {
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
                Event::ConnCall { nr, args } => {
                    let v = self.conn_call(inv, nr, args);
                    let vm = &mut inv.vm;
                    vm.linux.return_from_syscall(&mut vm.machine.cpu, v);
                }
            }
        }
    }

    /// `write`, `writev`, `sendto` (no address) and `close` on connection number `a[0]`, as
    /// on the reference's host descriptors: the bytes go out as a `SOCKET_WRITABLE` entry's
    /// would (never blocking: -EAGAIN when 1 MiB is kept; on a WebSocket connection one
    /// text message per call), `close` is a `SOCKET_DISCONNECT`. -EBADF for a number that
    /// is no open connection.
    fn conn_call(&mut self, inv: &mut Invoker, nr: u64, a: [u64; 6]) -> i64 {
        const EBADF: i64 = -(libc::EBADF as i64);
        let fd = a[0] as i32;
        let mem = &inv.vm.machine.mem;
        let Some(c) = self.conns.get_mut(&fd) else {
            return EBADF;
        };
        if nr as i64 == libc::SYS_close {
            if let Some(w) = &mut c.ws {
                if !w.closed {
                    c.out.extend(ws::close_frame(ws::CLOSE_NORMAL, ""));
                    w.closed = true;
                }
            }
            c.closing = true;
            self.flush(fd);
            return 0;
        }
        if c.closing || c.dead {
            return -(libc::EPIPE as i64);
        }
        let iov: Vec<(u64, u64)> = match nr as i64 {
            libc::SYS_sendto if a[4] != 0 => return -(libc::EISCONN as i64),
            libc::SYS_writev => {
                if a[2] > 1024 {
                    return -(libc::EINVAL as i64);
                }
                let Ok(raw) = mem.read_vec(a[1], a[2] as usize * 16) else {
                    return -(libc::EFAULT as i64);
                };
                raw.chunks(16)
                    .map(|e| {
                        let w = |o: usize| {
                            u64::from_le_bytes(e[o..o + 8].try_into().unwrap_or_default())
                        };
                        (w(0), w(8))
                    })
                    .collect()
            }
            _ => vec![(a[1], a[2])],
        };
        let total = iov
            .iter()
            .try_fold(0u64, |t, (_, l)| t.checked_add(*l))
            .unwrap_or(u64::MAX);
        let room = MAX_BUFFERED.saturating_sub(c.out.len()) as u64;
        let take = if c.ws.is_some() {
            if total > MAX_BUFFERED as u64 {
                return -(libc::EMSGSIZE as i64);
            }
            if !c.out.is_empty() && total + 10 > room {
                c.blocked = true;
                return -(libc::EAGAIN as i64);
            }
            total
        } else {
            if total > 0 && room == 0 {
                c.blocked = true;
                return -(libc::EAGAIN as i64);
            }
            total.min(room)
        };
        let mut bytes = Vec::with_capacity(take as usize);
        for (p, l) in iov {
            let n = l.min(take - bytes.len() as u64) as usize;
            if n == 0 {
                continue;
            }
            match mem.read_vec(p, n) {
                Ok(b) => bytes.extend_from_slice(&b),
                Err(_) => return -(libc::EFAULT as i64),
            }
        }
        if c.ws.is_some() {
            if std::str::from_utf8(&bytes).is_err() {
                return -(libc::EINVAL as i64);
            }
            c.out.extend(ws::frame(ws::OP_TEXT, &bytes));
        } else {
            c.out.extend(&bytes);
        }
        self.flush(fd);
        if let Some(c) = self.conns.get_mut(&fd) {
            c.blocked |= !c.out.is_empty();
        }
        bytes.len() as i64
    }

    /// Serve until stopped (None) or the VM fails (Some(why)).
    fn serve(&mut self, mut inv: Invoker, mut at: Waiting, area: u64) -> Option<String> {
        let mut events = Events::with_capacity(256);
        loop {
            if self.stopping() {
                return None;
            }
            self.take_new();
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
                    LISTENER | WAKER => {}
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
        !self.pending.is_empty()
            || self
                .conns
                .values()
                .any(|c| c.readable || c.dead || c.ws.as_ref().is_some_and(|w| !w.ready.is_empty()))
    }

    /// Take the connections the acceptor handed to this system.
    fn take_new(&mut self) {
        while let Ok((mut stream, peer)) = self.ctx.rx.try_recv() {
            let fd = self.new_fd();
            let reg = self.poll.registry().register(
                stream.source(),
                Token(fd as usize),
                Interest::READABLE | Interest::WRITABLE,
            );
            if reg.is_err() {
                self.ctx.shared.closed(self.ctx.id);
                continue;
            }
            let now = Instant::now();
            let ws = self.ctx.shared.mode.websocket.map(|max| {
                Box::new(WsConn {
                    open: false,
                    closed: false,
                    deadline: now + HANDSHAKE_TIMEOUT.min(self.ctx.shared.mode.idle_timeout),
                    peer: String::new(),
                    input: Vec::new(),
                    decoder: Decoder::new(max),
                    ready: VecDeque::new(),
                    heard: now,
                    pinged: false,
                })
            });
            let announced = ws.is_none();
            let mut conn = Conn {
                stream,
                out: VecDeque::new(),
                readable: true,
                blocked: false,
                closing: false,
                dead: false,
                last: now,
                announced,
                ws,
                linger: None,
            };
            if let Some(w) = &mut conn.ws {
                // Announced once upgraded.
                w.peer = peer;
            } else {
                self.pending
                    .push_back(Pending::Connect(fd, peer, String::new()));
                // As the reference's edge-triggered loop: a new connection is writable.
                self.pending.push_back(Pending::Writable(fd));
            }
            self.conns.insert(fd, conn);
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

    /// Close connections idle for `idle_timeout`, broken ones, WebSocket handshakes not
    /// done in time and lingering closes past their time; ping WebSocket clients silent
    /// for half of `idle_timeout`.
    fn expire_idle(&mut self) {
        let now = Instant::now();
        let idle = self.ctx.shared.mode.idle_timeout;
        let mut gone = Vec::new();
        let mut ping = Vec::new();
        for (fd, c) in &self.conns {
            let expired = match &c.ws {
                _ if c.linger.is_some_and(|t| now >= t) => true,
                // Messages received before the end are delivered first.
                Some(w) if c.dead => w.ready.is_empty(),
                Some(w) if !w.open => now >= w.deadline,
                Some(w) if c.linger.is_none() && !w.closed => {
                    let silent = now.duration_since(w.heard);
                    if silent >= idle / 2 && !w.pinged {
                        ping.push(*fd);
                    }
                    silent >= idle
                }
                Some(_) => false,
                None => c.dead || now.duration_since(c.last) >= idle,
            };
            if expired {
                gone.push(*fd);
            }
        }
        for fd in ping {
            if let Some(c) = self.conns.get_mut(&fd) {
                if let Some(w) = &mut c.ws {
                    w.pinged = true;
                }
                c.out.extend(ws::frame(ws::OP_PING, b""));
                self.flush(fd);
            }
        }
        for fd in gone {
            self.close(fd);
        }
    }

    /// Close connection `fd` and tell the program.
    fn close(&mut self, fd: i32) {
        if let Some(mut c) = self.conns.remove(&fd) {
            let _ = self.poll.registry().deregister(c.stream.source());
            self.ctx.shared.closed(self.ctx.id);
            self.pending.retain(
                |p| !matches!(p, Pending::Writable(f) | Pending::Connect(f, _, _) if *f == fd),
            );
            if c.announced {
                self.pending.push_back(Pending::Disconnect(fd));
            } else if c.ws.as_ref().is_some_and(|w| !w.open) {
                // A WebSocket handshake refused or not finished.
                self.ctx
                    .shared
                    .counters
                    .refused
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Close everything without telling the program (it is gone or stopping); WebSocket
    /// clients get a close frame with `code` when nothing else is on its way to them.
    fn close_all(&mut self, code: u16) {
        let fds: Vec<i32> = self.conns.keys().copied().collect();
        for fd in fds {
            let Some(mut c) = self.conns.remove(&fd) else {
                continue;
            };
            if c.out.is_empty() && c.ws.as_ref().is_some_and(|w| w.open && !w.closed) {
                let f = ws::close_frame(code, "");
                if let Ok(n) = c.stream.write(&f) {
                    self.ctx
                        .shared
                        .counters
                        .bytes_written
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            let _ = self.poll.registry().deregister(c.stream.source());
            self.ctx.shared.closed(self.ctx.id);
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
                    self.ctx
                        .shared
                        .counters
                        .bytes_written
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    break;
                }
            }
        }
        if c.closing && !c.dead && c.ws.is_some() {
            // All sent, the close frame last: our side ends, and the client's close
            // (or EOF) ends the connection, so the client reads everything before it.
            if c.linger.is_none() {
                c.stream.shutdown_write();
                c.linger = Some(Instant::now() + LINGER);
            }
            return;
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

    /// Read what WebSocket connection `fd` sent (once) and act on it: the handshake, pings,
    /// the close handshake, violations; whole messages wait in its `ready` queue. Returns
    /// false when the connection ended (closed already).
    fn ws_input(&mut self, fd: i32, buf: &mut [u8]) -> bool {
        let sh = self.ctx.shared.clone();
        let Some(c) = self.conns.get_mut(&fd) else {
            return false;
        };
        let Some(w) = c.ws.as_mut() else {
            return true;
        };
        if !c.readable || c.dead || !w.ready.is_empty() {
            return true;
        }
        let n = match c.stream.read(buf) {
            Ok(0) => {
                // EOF: after our close, the end of the close handshake; else the client
                // vanished. Messages received before are delivered first.
                c.dead = true;
                c.readable = false;
                return true;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.readable = false;
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => {
                c.dead = true;
                c.readable = false;
                return true;
            }
        };
        sh.counters
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        c.last = now;
        w.heard = now;
        w.pinged = false;
        if w.closed {
            // Closing: what comes now is dropped.
            return true;
        }
        w.input.extend_from_slice(&buf[..n]);
        if !w.open {
            match ws::handshake(&w.input) {
                Handshake::Incomplete => return true,
                Handshake::Refuse { response, .. } => {
                    w.closed = true;
                    w.input = Vec::new();
                    c.out.extend(response);
                    c.closing = true;
                    self.flush(fd);
                    return true;
                }
                Handshake::Accept {
                    consumed,
                    response,
                    target,
                } => {
                    w.open = true;
                    w.input.drain(..consumed);
                    c.out.extend(response);
                    c.announced = true;
                    let peer = std::mem::take(&mut w.peer);
                    self.pending.push_back(Pending::Connect(fd, peer, target));
                    self.pending.push_back(Pending::Writable(fd));
                }
            }
        }
        let Some(c) = self.conns.get_mut(&fd) else {
            return false;
        };
        let Some(w) = c.ws.as_mut() else {
            return true;
        };
        let mut items = Vec::new();
        let r = w.decoder.decode(&mut w.input, &mut items);
        for item in items {
            match item {
                Item::Message { text, payload } => w.ready.push_back((text, payload)),
                Item::Ping(p) => c.out.extend(ws::frame(ws::OP_PONG, &p)),
                Item::Pong => {}
                Item::Close(code) => {
                    // Answer with the same code, then end the connection.
                    let f = match code {
                        Some(code) => ws::close_frame(code, ""),
                        None => ws::frame(ws::OP_CLOSE, b""),
                    };
                    c.out.extend(f);
                    w.closed = true;
                    c.closing = true;
                    break;
                }
            }
        }
        if let Err(f) = r {
            if !w.closed {
                c.out.extend(ws::close_frame(f.code, f.why));
                w.closed = true;
                c.closing = true;
            }
        }
        if w.closed {
            w.input = Vec::new();
        }
        // What the program's messages may use of the output: the pongs and closes are ours.
        if c.out.len() > 2 * MAX_BUFFERED {
            // A client that sends pings and never reads.
            c.dead = true;
        }
        self.flush(fd);
        true
    }

    /// Write up to one batch of events for the waiting program and run it to its next wait.
    fn deliver(&mut self, inv: &mut Invoker, at: Waiting, area: u64) -> Result<Waiting, String> {
        let mut out: Vec<[u8; EVENT_SIZE as usize]> = Vec::new();
        let mut used = 0u64;
        let area_size = self.area_size;
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
        // WebSocket connections first: what they read may queue a CONNECT.
        let mut buf = vec![0u8; READ_CHUNK];
        if self.ctx.shared.mode.websocket.is_some() {
            let fds: Vec<i32> = self
                .conns
                .iter()
                .filter(|(_, c)| c.readable && !c.dead)
                .map(|(fd, _)| *fd)
                .collect();
            for fd in fds {
                self.ws_input(fd, &mut buf);
            }
        }
        let mem = &mut inv.vm.machine.mem;
        // Queued events first, in order.
        while out.len() < at.max {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            match p {
                Pending::Connect(fd, peer, target) => {
                    let need = peer.len() as u64 + target.len() as u64 + 2;
                    if used + need > area_size {
                        self.pending.push_front(Pending::Connect(fd, peer, target));
                        break;
                    }
                    let mut text = peer.into_bytes();
                    text.push(0);
                    let remote = area + used;
                    mem.write(remote, &text).map_err(|e| e.to_string())?;
                    used += text.len() as u64;
                    // The program's arg: none in TCP mode (an empty string); the request
                    // target of the handshake for a WebSocket.
                    let mut arg_text = target.into_bytes();
                    arg_text.push(0);
                    let arg = area + used;
                    mem.write(arg, &arg_text).map_err(|e| e.to_string())?;
                    used += arg_text.len() as u64;
                    out.push(ev(fd, SOCKET_CONNECT, remote, arg, 0, 0));
                }
                Pending::Writable(fd) => out.push(ev(fd, SOCKET_WRITABLE, 0, 0, 0, 0)),
                Pending::Disconnect(fd) => out.push(ev(fd, SOCKET_DISCONNECT, 0, 0, 0, 0)),
            }
        }
        // Then what the connections have to read (room for READ + WRITABLE each).
        let fds: Vec<i32> = self
            .conns
            .iter()
            .filter(|(_, c)| match &c.ws {
                Some(w) => c.announced && !w.ready.is_empty(),
                None => c.readable && !c.dead,
            })
            .map(|(fd, _)| *fd)
            .collect();
        let mut closed = Vec::new();
        for fd in fds {
            if out.len() + 2 > at.max || used >= area_size {
                break;
            }
            let Some(c) = self.conns.get_mut(&fd) else {
                continue;
            };
            if let Some(w) = &mut c.ws {
                // One whole message per READ; its type in `arg`.
                while out.len() + 2 <= at.max {
                    let Some((text, payload)) = w.ready.front() else {
                        break;
                    };
                    let kind: &[u8] = if *text { b"text\0" } else { b"binary\0" };
                    let need = payload.len() as u64 + kind.len() as u64;
                    if used + need > area_size {
                        break;
                    }
                    let arg = area + used;
                    mem.write(arg, kind).map_err(|e| e.to_string())?;
                    used += kind.len() as u64;
                    let data = area + used;
                    mem.write(data, payload).map_err(|e| e.to_string())?;
                    used += payload.len() as u64;
                    out.push(ev(fd, SOCKET_READ, 0, arg, data, payload.len() as u64));
                    out.push(ev(fd, SOCKET_WRITABLE, 0, 0, 0, 0));
                    w.ready.pop_front();
                }
                continue;
            }
            let room = (area_size - used).min(READ_CHUNK as u64) as usize;
            match c.stream.read(&mut buf[..room]) {
                Ok(0) => closed.push(fd),
                Ok(n) => {
                    let data = area + used;
                    mem.write(data, &buf[..n]).map_err(|e| e.to_string())?;
                    used += n as u64;
                    c.last = Instant::now();
                    self.ctx
                        .shared
                        .counters
                        .bytes_read
                        .fetch_add(n as u64, Ordering::Relaxed);
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
        self.ctx
            .shared
            .counters
            .events
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        inv.vm.machine.cpu.regs_mut().rax = out.len() as u64;
        self.run_vm(inv, "socket events (max_request_time)")
    }

    /// `sys_sockets_write(events, n)`: each entry with `SOCKET_WRITABLE` sends its data (the
    /// result, bytes taken or -errno, is written back into its `fd`); `SOCKET_DISCONNECT`
    /// closes the connection once what is kept for it is sent. On a WebSocket connection an
    /// entry is one message: a text frame (the data must be UTF-8: -EINVAL), or a binary
    /// one when `arg` is "binary"; taken whole or not at all (-EAGAIN, -EMSGSIZE over
    /// 1 MiB); a disconnect sends a close frame (1000). Returns the entries handled, or
    /// -EFAULT for an unreadable array.
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
            let (arg, data, len) = (word(16), word(24), word(32));
            let result: i64 = match (kind, self.conns.get_mut(&fd)) {
                (SOCKET_WRITABLE | SOCKET_DISCONNECT, None) => -(libc::EBADF as i64),
                (SOCKET_WRITABLE, Some(c)) if c.closing || c.dead => -(libc::EPIPE as i64),
                (SOCKET_WRITABLE, Some(c)) if c.ws.is_some() => {
                    match ws_message(mem, c, arg, data, len) {
                        Ok(taken) => {
                            touched.push(fd);
                            taken
                        }
                        Err(errno) => -(errno as i64),
                    }
                }
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
                    if let Some(w) = &mut c.ws {
                        if !w.closed {
                            c.out.extend(ws::close_frame(ws::CLOSE_NORMAL, ""));
                            w.closed = true;
                        }
                    }
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

/// One message from the program to WebSocket connection `c`: its frame queued whole, or an
/// errno.
fn ws_message(
    mem: &edgevm_kvm::GuestMemory,
    c: &mut Conn,
    arg: u64,
    data: u64,
    len: u64,
) -> Result<i64, i32> {
    let binary = match arg {
        0 => false,
        a => {
            // "text" or "binary", NUL-terminated.
            match &mem.read_cstr(a, 8).map_err(|_| libc::EFAULT)?[..] {
                b"binary" => true,
                b"text" => false,
                _ => return Err(libc::EINVAL),
            }
        }
    };
    if len > MAX_BUFFERED as u64 {
        return Err(libc::EMSGSIZE);
    }
    let len = len as usize;
    // A message goes out whole: alone it may fill the output, else it waits for room.
    if !c.out.is_empty() && len + 10 > MAX_BUFFERED.saturating_sub(c.out.len()) {
        c.blocked = true;
        return Err(libc::EAGAIN);
    }
    let bytes = match len {
        0 => Vec::new(),
        _ => mem.read_vec(data, len).map_err(|_| libc::EFAULT)?,
    };
    if !binary && std::str::from_utf8(&bytes).is_err() {
        return Err(libc::EINVAL);
    }
    let op = if binary { ws::OP_BINARY } else { ws::OP_TEXT };
    c.out.extend(ws::frame(op, &bytes));
    Ok(len as i64)
}
