//! hello_http: answers every GET with "Hello from Rust!" and echoes POSTs.
//! Build: RUSTFLAGS="-C target-feature=+crt-static" \
//!        cargo build --release --target x86_64-unknown-linux-gnu
use edgevm_guest as kvm;

fn on_get(_url: &str, _arg: &str) {
    kvm::http_set(kvm::RESP, "X-Powered-By: edgevm (Rust)");
    kvm::backend_response_str(200, "text/plain", "Hello from Rust!\n");
}

fn on_post(_url: &str, _arg: &str, content_type: &str, body: &[u8]) {
    let ctype = if content_type.is_empty() { "application/octet-stream" } else { content_type };
    kvm::backend_response(200, ctype, body);
}

fn main() {
    if !kvm::is_sandboxed() {
        println!("hello_http: run me inside edgevm");
        return;
    }
    kvm::on_get(on_get);
    kvm::on_post(on_post);
    kvm::wait_for_requests();
}
