//! The request and response a program sees, independent of any transport.

/// One request handed to a program's handler (a Varnish `req` in the reference system).
#[derive(Debug, Clone, Default)]
pub struct GuestRequest {
    /// "GET", "POST", "HEAD", ...
    pub method: String,
    /// The full request URL as the client sent it: path and query (Varnish `req.url`).
    pub url: String,
    /// The handler's `arg` string (empty unless configured).
    pub arg: String,
    /// Request headers in client order, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Content-Type of the body, if any.
    pub content_type: String,
    /// Request body (POST).
    pub body: Vec<u8>,
    /// A request body the server streams instead of `body` (only to a program that
    /// [`ProgramHost::streams_body`]): its segments as they arrive, or why it stopped.
    pub body_in: Option<crate::stream::BodyStream>,
    /// True for warmup requests sent before the main VM is frozen.
    pub warmup: bool,
    /// How many self-requests (`sys_fetch` of a path) led to this one: 0 for a client's
    /// request. Bounded by the server (its self-request depth limit).
    pub self_depth: u32,
}

/// What a program answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestResponse {
    /// HTTP status, 200..=599 (anything else is a program error before it gets here).
    pub status: u16,
    /// Content-Type of the body.
    pub content_type: String,
    /// Extra response headers set by the program, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Response body (empty when streamed).
    pub body: Vec<u8>,
    /// A streamed body (`begin_streaming_response`): the chunks as the program produces
    /// them, instead of `body`.
    pub stream: Option<crate::stream::BodyStream>,
    /// VM exits the request took (storage calls included); `None` for answers that did not
    /// come from a request VM.
    pub exits: Option<u64>,
}

impl GuestResponse {
    /// The response with a streamed body collected into `body` (at most `limit` bytes), for
    /// callers that need the whole body (self-requests, chain steps, `edgevm run --request`).
    pub async fn collected(mut self, limit: u64) -> Result<GuestResponse, ServeError> {
        if let Some(s) = self.stream.take() {
            self.body = s.collect(limit).await.map_err(ServeError::ProgramError)?;
        }
        Ok(self)
    }
}

/// Why a request produced no program response. The HTTP layer derives the status from the
/// kind and logs the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// No program of that name is configured (HTTP 404).
    #[error("no such program: '{0}'")]
    ProgramNotFound(String),
    /// The program could not be started (boot failure, bad ELF, download failure) (HTTP 503).
    #[error("program unavailable: {0}")]
    ProgramUnavailable(String),
    /// Waited too long for a free request VM (HTTP 503).
    #[error("timed out waiting for a free VM")]
    QueueTimeout,
    /// Every request VM was busy and `max_queue` requests were waiting already (HTTP 503
    /// with `Retry-After`, at once).
    #[error("too many requests waiting for this program")]
    QueueFull,
    /// The program failed this request: crash, timeout, memory limit, exit, no response,
    /// invalid status... (HTTP 500). The text says which.
    #[error("program error: {0}")]
    ProgramError(String),
    /// The server is shutting down (HTTP 503).
    #[error("server is shutting down")]
    ShuttingDown,
}

/// The answer to [`ProgramHost::serve`].
pub type ServeFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<GuestResponse, ServeError>> + Send>>;

/// What the HTTP layer needs from the runtime: hand a request to a named program and get its
/// answer. The future runs short requests right where it is polled (see `pool.rs`): poll it on
/// a tokio runtime's worker thread.
pub trait ProgramHost: Send + Sync + 'static {
    /// Serve `req` with `program` (the first path segment of the URL).
    fn serve(&self, program: &str, req: GuestRequest) -> ServeFuture;

    /// Whether `program` takes its request bodies streamed (`set_backend_stream_post`, see
    /// `GuestRequest::body_in`); waits for the program to be ready. False by default.
    fn streams_body(&self, program: &str) -> BoolFuture {
        let _ = program;
        Box::pin(async { false })
    }

    /// `program`'s outgoing-request counters (fetches made for it outside `sys_fetch`, such
    /// as a route chain's `fetch` step, count there too). None by default.
    fn fetch_counters(&self, program: &str) -> Option<std::sync::Arc<crate::net::FetchCounters>> {
        let _ = program;
        None
    }
}

/// The answer to [`ProgramHost::streams_body`].
pub type BoolFuture = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
