//! An event-loop program with the Rust guest crate (tests/all/event_loop.rs): a static binary
//! whose main() waits with `wait_for_requests_paused()` and answers each request in turn.

fn main() {
    let mut served = 0u32;
    loop {
        let req = edgevm_guest::wait_for_requests_paused();
        served += 1;
        let url = req.url();
        let body = format!("Rust loop url={url} method={} served={served}", req.method());
        edgevm_guest::backend_response(200, "text/plain", body.as_bytes());
    }
}
