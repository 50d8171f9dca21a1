//! `edgevm new NAME [--lang c|cpp|rust]`: a ready-to-build program in a new directory NAME/,
//! with its build script and a configuration that serves it.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The guest header, written next to a new C or C++ program.
const KVM_API_H: &str = include_str!("../../../guest/kvm_api.h");

const C_PROGRAM: &str = r#"/* NAME: an edgevm program (edgevm new). Build it with ./build.sh. */
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

/* GET (and HEAD): url is the whole request target, e.g. "/NAME/x?y=1". */
static void on_get(const char *url, const char *arg)
{
	(void)arg;
	printf("GET %s\n", url); /* goes to the server's log */
	backend_response_str(200, "text/plain", "Hello from NAME!\n");
}

/* POST (and PUT, ...): answer the body back. */
static void on_post(const char *url, const char *arg, const char *ctype,
	const uint8_t *data, size_t len)
{
	(void)url;
	(void)arg;
	backend_response(200, ctype, strlen(ctype), data, len);
}

int main(void)
{
	/* Initialization happens once; the VM is frozen at wait_for_requests() and
	   every request runs in a fresh copy of it. */
	set_backend_get(on_get);
	set_backend_post(on_post);
	wait_for_requests();
	return 0;
}
"#;

const RUST_PROGRAM: &str = r#"//! NAME: an edgevm program (edgevm new). Build it with ./build.sh.
use edgevm_guest as kvm;

/// GET (and HEAD): `url` is the whole request target, e.g. "/NAME/x?y=1".
fn on_get(url: &str, _arg: &str) {
    println!("GET {url}"); // goes to the server's log
    kvm::backend_response_str(200, "text/plain", "Hello from NAME!\n");
}

fn main() {
    // Initialization happens once; the VM is frozen at wait_for_requests() and every
    // request runs in a fresh copy of it.
    kvm::on_get(on_get);
    kvm::wait_for_requests();
}
"#;

/// Write the program NAME in language `lang` into `./NAME/`.
pub fn new_program(name: &str, lang: &str) -> Result<()> {
    if let Some(why) = edgevm_config::unreachable_name(name) {
        bail!("{why}");
    }
    let dir = Path::new(name);
    if dir.exists() {
        bail!("'{name}' already exists");
    }
    std::fs::create_dir(dir).with_context(|| format!("cannot create '{name}'"))?;
    let abs = dir.canonicalize()?;
    let bin = abs.join(name);
    let fill = |t: &str| t.replace("NAME", name);
    let (build, what) = match lang {
        "c" | "cpp" => {
            let (file, cc) = if lang == "c" {
                (format!("{name}.c"), "gcc -std=gnu11")
            } else {
                (format!("{name}.cpp"), "g++ -std=gnu++17")
            };
            std::fs::write(dir.join(&file), fill(C_PROGRAM))?;
            std::fs::write(dir.join("kvm_api.h"), KVM_API_H)?;
            (
                format!("{cc} -static -O2 -Wall -Wextra -I. {file} -o {name}"),
                if lang == "c" { "C" } else { "C++" },
            )
        }
        "rust" => {
            let guest = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../guest/rust/edgevm-guest")
                .canonicalize()
                .context("the Rust guest crate (guest/rust/edgevm-guest of the edgevm sources)")?;
            std::fs::create_dir(dir.join("src"))?;
            std::fs::write(dir.join("src/main.rs"), fill(RUST_PROGRAM))?;
            std::fs::write(
                dir.join("Cargo.toml"),
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n[dependencies]\nedgevm-guest = {{ path = {:?} }}\n\n[profile.release]\npanic = \"abort\"\n",
                    guest.display().to_string()
                ),
            )?;
            (
                format!("RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target x86_64-unknown-linux-gnu\ncp \"${{CARGO_TARGET_DIR:-target}}/x86_64-unknown-linux-gnu/release/{name}\" {name}"),
                "Rust",
            )
        }
        other => bail!("--lang {other:?}: choose c, cpp or rust"),
    };
    let script = dir.join("build.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n# Build {name} as a static x86_64 program.\nset -e\ncd \"$(dirname \"$0\")\"\n{build}\n"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(
        dir.join("config.json"),
        format!(
            "{{\n  \"{name}\": {{ \"filename\": {:?}, \"concurrency\": 2 }}\n}}\n",
            bin.display().to_string()
        ),
    )?;
    println!("created {name}/ ({what}): build.sh, config.json and the program");
    println!("  build:  {name}/build.sh");
    println!("  try:    edgevm run {name}/{name} --request /");
    println!("  serve:  edgevm serve --config {name}/config.json");
    println!("          curl http://127.0.0.1:8080/{name}");
    Ok(())
}
