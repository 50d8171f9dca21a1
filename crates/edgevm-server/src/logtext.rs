//! Client-controlled text in log lines, and rate-limited warnings about clients.
//!
//! Anything a client chooses (a program name from the URL, a method, a header value) goes into
//! a log line only through [`client_text`]: at most [`LOG_TEXT_MAX`] bytes of it, with control
//! characters, non-ASCII characters (bidirectional overrides such as U+202E, line separators
//! such as U+2028), backslashes and quotes escaped, so one line of log stays one line that says
//! what the client sent without acting on the terminal or the log reader.
//!
//! Warnings that clients cause (an unknown program, a bad request, a limit) go through
//! [`client_warn!`](crate::client_warn): at most [`CLIENT_WARNINGS_PER_SECOND`] of them per
//! second are written; the next one written after some were dropped carries `suppressed=N`, the
//! number dropped since the last one. A flood of bad requests therefore grows the log by a
//! bounded amount per second whatever the clients send.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most bytes of one piece of client text shown in a log line.
pub const LOG_TEXT_MAX: usize = 200;

/// Most client-caused warnings written per second (see [`client_warn!`](crate::client_warn)).
pub const CLIENT_WARNINGS_PER_SECOND: u32 = 10;

/// Client text for a log line: truncated to [`LOG_TEXT_MAX`] bytes and escaped (see the
/// module documentation). Displays as the escaped text, then `...(N bytes)` when truncated.
#[derive(Clone, Copy)]
pub struct ClientText<'a>(&'a [u8]);

/// Wrap client-controlled text (a `&str`, or bytes that may not be UTF-8) for a log line.
pub fn client_text<T: AsRef<[u8]> + ?Sized>(text: &T) -> ClientText<'_> {
    ClientText(text.as_ref())
}

impl fmt::Display for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = self.0;
        let shown = &all[..all.len().min(LOG_TEXT_MAX)];
        for chunk in shown.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    ' '..='~' => fmt::Write::write_char(f, c)?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    _ => write!(f, "\\u{{{:x}}}", c as u32)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if all.len() > shown.len() {
            write!(f, "...({} bytes)", all.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A limit of `per_window` events per `window`, counting the events it turned down.
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    state: Mutex<Window>,
    suppressed_total: AtomicU64,
}

struct Window {
    start: Option<Instant>,
    used: u32,
    /// Turned down since the last event let through.
    suppressed: u64,
}

impl RateLimit {
    /// At most `per_window` events per `window`.
    pub const fn new(per_window: u32, window: Duration) -> RateLimit {
        RateLimit {
            per_window,
            window,
            state: Mutex::new(Window {
                start: None,
                used: 0,
                suppressed: 0,
            }),
            suppressed_total: AtomicU64::new(0),
        }
    }

    /// Whether one more event may happen now: `Some(n)` with the number turned down since the
    /// last one let through, or `None` (counted as suppressed).
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.start.is_none_or(|s| now.duration_since(s) >= self.window) {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used < self.per_window {
            w.used += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            self.suppressed_total.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Events turned down since the start.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }
}

/// The limit on warnings caused by clients (see [`client_warn!`](crate::client_warn)).
pub static CLIENT_WARNINGS: RateLimit =
    RateLimit::new(CLIENT_WARNINGS_PER_SECOND, Duration::from_secs(1));

/// `tracing::warn!` for a warning a client caused, rate-limited by [`CLIENT_WARNINGS`]: the
/// first written after some were dropped carries `suppressed = N`. Put client text in it only
/// through [`client_text`].
#[macro_export]
macro_rules! client_warn {
    ($($arg:tt)+) => {
        if let Some(suppressed) = $crate::logtext::CLIENT_WARNINGS.allow() {
            if suppressed > 0 {
                ::tracing::warn!(suppressed, $($arg)+);
            } else {
                ::tracing::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_escaped_and_truncated() {
        assert_eq!(client_text("hello").to_string(), "hello");
        assert_eq!(
            client_text("a\u{202e}b\u{2028}c\nd\x1b[31m\"\\").to_string(),
            "a\\u{202e}b\\u{2028}c\\nd\\u{1b}[31m\\\"\\\\"
        );
        assert_eq!(client_text(b"x\xff\xfey").to_string(), "x\\xff\\xfey");
        let long = "n".repeat(60_000);
        let shown = client_text(&long).to_string();
        assert_eq!(shown, format!("{}...(60000 bytes)", "n".repeat(200)));
        // A multi-byte character cut at the limit shows as escaped bytes, never more.
        let cut = format!("{}é", "a".repeat(199));
        assert_eq!(
            client_text(&cut).to_string(),
            format!("{}\\xc3...(201 bytes)", "a".repeat(199))
        );
        assert_eq!(format!("{:?}", client_text("q")), "\"q\"");
    }

    #[test]
    fn the_rate_limit_counts_what_it_turned_down() {
        let r = RateLimit::new(3, Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(r.allow(), None);
        }
        assert_eq!(r.suppressed_total(), 5);
        let r = RateLimit::new(1, Duration::from_millis(20));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        std::thread::sleep(Duration::from_millis(30));
        // The next window: let through, with the count of those turned down.
        assert_eq!(r.allow(), Some(2));
        assert_eq!(r.suppressed_total(), 2);
    }
}
