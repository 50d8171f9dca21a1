//! Native baseline for benchmarks: `edgevm-hello [ADDR]` answers "Hello World!" on every
//! path with the same hyper stack as the edgevm server (default 127.0.0.1:8081).
//! Stops on SIGTERM/SIGINT.

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let addr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    edgevm_server::http::run_static_hello(addr)
}
