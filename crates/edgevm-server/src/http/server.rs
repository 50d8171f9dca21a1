//! Binding, running and shutting down the server: listeners, the accept loop, signals and drain.

use super::*;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgevm_runtime::ProgramHost;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::drain::Drain;
use crate::limits::{self, Activity, Admission, Timeouts, TrackedIo, TrackedService};
use crate::listen::{Listener, Peer};

/// A bound, not yet running, HTTP server. Use [`HttpServer::bind`] then [`HttpServer::run`];
/// [`serve`] does both.
pub struct HttpServer {
    listener: Listener,
    shared: Arc<Shared>,
    /// The separate admin listener, if configured.
    admin_listener: Option<Listener>,
}

impl HttpServer {
    /// Bind `opts.unix` if set, else `opts.listen`.
    pub async fn bind(
        opts: HttpOptions,
        host: Arc<dyn ProgramHost>,
        admin: Option<Arc<dyn AdminHandler>>,
    ) -> io::Result<HttpServer> {
        let listener = match &opts.unix {
            Some(u) => crate::listen::bind_unix(u)?,
            None => Listener::Tcp(TcpListener::bind(opts.listen).await?),
        };
        let admin_listener = match &opts.admin_listen {
            Some(AdminListen::Unix(u)) => Some(crate::listen::bind_unix(u)?),
            Some(AdminListen::Tcp(a)) => Some(Listener::Tcp(TcpListener::bind(a).await?)),
            None => None,
        };
        let role = if admin_listener.is_some() {
            Role::Programs
        } else {
            Role::All
        };
        Ok(HttpServer {
            listener,
            shared: Arc::new(Shared {
                opts,
                host,
                admin,
                role,
            }),
            admin_listener,
        })
    }

    /// Serve on an already bound listener (`opts.listen` is then ignored).
    pub fn from_listener(
        listener: TcpListener,
        opts: HttpOptions,
        host: Arc<dyn ProgramHost>,
        admin: Option<Arc<dyn AdminHandler>>,
    ) -> HttpServer {
        HttpServer {
            listener: Listener::Tcp(listener),
            shared: Arc::new(Shared {
                opts,
                host,
                admin,
                role: Role::All,
            }),
            admin_listener: None,
        }
    }

    /// The TCP address actually bound (useful with port 0); an error for a Unix socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Unix(..) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "listening on a Unix socket",
            )),
        }
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight requests finish
    /// (at most [`HttpOptions::shutdown_grace`]) and return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let HttpServer {
            listener,
            shared,
            admin_listener,
        } = self;
        let Some(admin_listener) = admin_listener else {
            return run_listener(listener, shared, shutdown).await;
        };
        // Two listeners, one shutdown.
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut admin_opts = shared.opts.clone();
        admin_opts.max_connections = admin_opts.max_connections.min(ADMIN_MAX_CONNECTIONS);
        let admin_shared = Arc::new(Shared {
            opts: admin_opts,
            host: shared.host.clone(),
            admin: shared.admin.clone(),
            role: Role::Admin,
        });
        let signal = async move {
            shutdown.await;
            let _ = tx.send(true);
        };
        let (_, public, admin) = tokio::join!(
            signal,
            run_listener(listener, shared, stopped(rx.clone())),
            run_listener(admin_listener, admin_shared, stopped(rx)),
        );
        public.and(admin)
    }
}

/// Serve one listener with `shared` until `shutdown` completes (see [`HttpServer::run`]).
pub(super) async fn run_listener(
    listener: Listener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // Logged only now that the address is bound (a failed bind is an error instead).
    let what = match shared.role {
        Role::All => "edgevm serving",
        Role::Programs => "edgevm serving programs",
        Role::Admin => "edgevm serving admin endpoints",
    };
    match listener.describe() {
        unix if unix.starts_with("unix:") => info!("{what} on {unix}"),
        tcp => info!("{what} on http://{tcp}/"),
    }
    if !matches!(shared.role, Role::Admin) {
        info!("{}", edgevm_runtime::vdso_status());
    }
    let opts = shared.opts.clone();
    accept_loop(
        listener,
        &opts,
        move |peer| {
            let shared = shared.clone();
            service_fn(move |mut req: Request<Incoming>| {
                // Who sent it: decides whether X-Edgevm-Arg is trusted.
                req.extensions_mut().insert(peer);
                handle(shared.clone(), req)
            })
        },
        shutdown,
    )
    .await
}

/// Bind `opts.listen` and serve program requests until `shutdown` completes; then shut down
/// gracefully (see [`HttpServer::run`]).
pub async fn serve(
    opts: HttpOptions,
    host: Arc<dyn ProgramHost>,
    admin: Option<Arc<dyn AdminHandler>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    HttpServer::bind(opts, host, admin)
        .await?
        .run(shutdown)
        .await
}

/// Blocking convenience: build a tokio runtime (one worker thread per CPU), serve until
/// SIGTERM or SIGINT, drain for [`HttpOptions::drain_period`] (a second signal ends the drain
/// early), shut down gracefully and return.
pub fn run_server(
    opts: HttpOptions,
    host: Arc<dyn ProgramHost>,
    admin: Option<Arc<dyn AdminHandler>>,
) -> io::Result<()> {
    let rt = http_runtime()?;
    crate::outgoing::attach_runtime(rt.handle().clone());
    crate::outgoing::attach_host(&host);
    crate::outgoing::attach_routes(opts.routes.clone());
    let result = rt.block_on(async {
        let stop = drain_then_stop(opts.drain.clone(), opts.drain_period)?;
        serve(opts, host, admin, stop).await
    });
    // Connections still open after the grace period are dropped here.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The multi-thread runtime the server runs on.
pub(super) fn http_runtime() -> io::Result<tokio::runtime::Runtime> {
    // Request VMs run on these threads (see edgevm-runtime's pool.rs): one per CPU.
    let workers = edgevm_runtime::env::http_threads();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("edgevm-http")
        .enable_all()
        .build()
}

/// Install SIGTERM and SIGINT handlers now; the returned future completes on either.
pub(super) fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = int.recv() => info!("SIGINT received, shutting down"),
        }
    })
}

/// Install SIGTERM and SIGINT handlers now; the returned future completes `period` after the
/// first of them (or at a second one), having set `drain` at the first.
pub(super) fn drain_then_stop(
    drain: Drain,
    period: Duration,
) -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = int.recv() => info!("SIGINT received, shutting down"),
        }
        drain.start();
        if period.is_zero() {
            return;
        }
        info!(
            seconds = period.as_secs_f64(),
            "draining: health answers 503, still serving"
        );
        tokio::select! {
            _ = tokio::time::sleep(period) => info!("drain period over"),
            _ = term.recv() => info!("second SIGTERM: drain ended early"),
            _ = int.recv() => info!("second SIGINT: drain ended early"),
        }
    })
}

/// Serve one connection over any byte stream (an in-memory one for the HTTP fuzz target) with
/// the same hyper settings, limits and routing as [`HttpServer::run`]; returns when the
/// connection ends or a timeout of [`crate::limits`] closes it.
pub async fn serve_io<I>(
    io: I,
    opts: HttpOptions,
    host: Arc<dyn ProgramHost>,
    admin: Option<Arc<dyn AdminHandler>>,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = opts.builder();
    let timeouts = Timeouts::new(opts.header_read_timeout, opts.idle_timeout);
    let shared = Arc::new(Shared {
        opts,
        host,
        admin,
        role: Role::All,
    });
    let act = Activity::new();
    let service = TrackedService::new(
        service_fn(move |req| handle(shared.clone(), req)),
        act.clone(),
    );
    let conn = builder.serve_connection(TokioIo::new(TrackedIo::new(io, act.clone())), service);
    limits::supervise(conn, act, timeouts).await
}

/// Accept connections and serve each with a fresh service from `make_service` until
/// `shutdown` completes; then drain gracefully.
pub(super) async fn accept_loop<F, S>(
    listener: Listener,
    opts: &HttpOptions,
    make_service: F,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    F: Fn(Peer) -> S,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<RespBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = opts.builder();
    let grace = opts.shutdown_grace;
    let timeouts = Timeouts::new(opts.header_read_timeout, opts.idle_timeout);
    let admission = Admission::new(opts.max_connections, opts.max_connections_per_address);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let act = Activity::new();
                    let Some((stream, slot)) = admission.admit(stream, peer, &act) else {
                        continue;
                    };
                    let io = TokioIo::new(TrackedIo::new(stream, act.clone()));
                    let service = TrackedService::new(make_service(peer), act.clone());
                    let conn = graceful.watch(builder.serve_connection(io, service));
                    tokio::spawn(async move {
                        if let Err(e) = limits::supervise(conn, act, timeouts).await {
                            debug!(%peer, "connection ended with error: {e}");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Per-connection errors (reset before accept) are harmless; running out
                    // of file descriptors is not, so back off a little.
                    warn!("accept failed: {e}");
                    if !is_connection_error(&e) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
        }
    }
    drop(listener);
    let open = graceful.count();
    info!(open, "stopped accepting; draining open connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("graceful shutdown: connections still open after {grace:?}; giving up on them");
    } else {
        info!("graceful shutdown complete");
    }
    Ok(())
}

pub(super) fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
