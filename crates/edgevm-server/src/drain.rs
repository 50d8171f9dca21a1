//! Draining: after SIGTERM the server tells load balancers to go away (the health endpoint
//! answers 503, responses close their connections) while it keeps serving for the configured
//! drain period; then it stops accepting and finishes what is in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether the server is draining; shared by the HTTP front end and the health endpoint.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<AtomicBool>);

impl Drain {
    /// Not draining.
    pub fn new() -> Self {
        Drain::default()
    }

    /// Start draining (for good).
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
