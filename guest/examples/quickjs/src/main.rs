//! example_quickjs: a JavaScript handler (QuickJS, through the `rquickjs` crate) for edgevm.
//! `main()` reads the script named by its first argument (default `/app/handler.js`, a path
//! the configuration lists in `allowed_paths`) and the `greeting.txt` beside it, evaluates the
//! script once, and freezes with the engine initialized; every request calls the script's
//! global `handle(method, url, body)`, which returns the response body (a string).
//!
//! ```json
//! "js": { "filename": "example_quickjs", "main_arguments": ["/app/handler.js"],
//!         "allowed_paths": [{ "virtual": "/app", "real": "/path/to/guest/examples/quickjs/app" }] }
//! ```
use std::cell::RefCell;

use edgevm_guest as kvm;
use rquickjs::{CatchResultExt, Context, Function, Runtime};

thread_local! {
    /// The engine: made by main(), used by every request (each in a fresh copy of it).
    static JS: RefCell<Option<(Runtime, Context)>> = const { RefCell::new(None) };
}

/// Run the script's `handle(method, url, body)`: the body it returns, or the error text.
fn call_handle(method: &str, url: &str, body: &str) -> Result<String, String> {
    JS.with(|js| {
        let js = js.borrow();
        let (_, ctx) = js.as_ref().ok_or("the engine is not initialized")?;
        ctx.with(|ctx| {
            let f: Function = ctx
                .globals()
                .get("handle")
                .catch(&ctx)
                .map_err(|e| format!("no handle(): {e}"))?;
            f.call::<_, String>((method, url, body))
                .catch(&ctx)
                .map_err(|e| format!("handle() failed: {e}"))
        })
    })
}

fn answer(method: &str, url: &str, body: &str) {
    match call_handle(method, url, body) {
        Ok(text) => kvm::backend_response_str(200, "text/plain", &text),
        Err(e) => kvm::backend_response_str(500, "text/plain", &format!("{e}\n")),
    }
}

fn on_get(url: &str, _arg: &str) {
    answer("GET", url, "");
}

fn on_post(url: &str, _arg: &str, _content_type: &str, body: &[u8]) {
    answer("POST", url, &String::from_utf8_lossy(body));
}

fn init(script: &str) -> Result<(Runtime, Context), String> {
    let dir = script.rsplit_once('/').map_or(".", |(d, _)| d);
    let source =
        std::fs::read_to_string(script).map_err(|e| format!("cannot read {script}: {e}"))?;
    let greeting = std::fs::read_to_string(format!("{dir}/greeting.txt"))
        .map_err(|e| format!("cannot read {dir}/greeting.txt: {e}"))?;
    let rt = Runtime::new().map_err(|e| e.to_string())?;
    rt.set_memory_limit(64 << 20);
    let ctx = Context::full(&rt).map_err(|e| e.to_string())?;
    ctx.with(|ctx| {
        ctx.globals()
            .set("GREETING", greeting.trim_end().to_string())
            .catch(&ctx)
            .map_err(|e| e.to_string())?;
        ctx.eval::<(), _>(source)
            .catch(&ctx)
            .map_err(|e| format!("{script}: {e}"))
    })?;
    Ok((rt, ctx))
}

fn main() {
    let script = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/app/handler.js".to_string());
    let engine = match init(&script) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("quickjs: {e}");
            std::process::exit(1);
        }
    };
    JS.with(|js| *js.borrow_mut() = Some(engine));
    if !kvm::is_sandboxed() {
        // Natively: BENCH_CALLS=N times N calls of handle() (docs/BENCHMARKS.md).
        let n: u64 = std::env::var("BENCH_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let t = std::time::Instant::now();
        let mut out = String::new();
        for _ in 0..n {
            out = call_handle("GET", "/js/a/b?x=1", "").unwrap_or_else(|e| e);
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        print!("{out}");
        eprintln!("quickjs: {n} calls, {per:.2} us per call");
        return;
    }
    kvm::on_get(on_get);
    kvm::on_post(on_post);
    kvm::wait_for_requests();
}
