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
    /// True for warmup requests sent before the main VM is frozen.
    pub warmup: bool,
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
    /// Response body.
    pub body: Vec<u8>,
}
