//! Native baseline for benchmarks: `edgevm-hello [ADDR]` (default 127.0.0.1:8081) answers
//! like the bundled examples served by edgevm, byte for byte, without a VM: `/scounter...`
//! like scounter.c, `/counter...` like counter.c, every other path like hello.c (see
//! `edgevm_server::native`). Stops on SIGTERM/SIGINT.

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let addr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    edgevm_server::native::run_native(addr)
}
