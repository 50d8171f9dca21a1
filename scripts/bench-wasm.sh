#!/usr/bin/env bash
# scripts/bench-wasm.sh TOOLS OUTDIR -- the `wasmtime serve` peer of scripts/bench.sh.
#
# Installs what is missing: wasmtime-cli (48.0.8, the last release that builds with Rust
# 1.95), wasm-tools and wit-bindgen-cli with `cargo install --locked --root TOOLS` (the
# first time this compiles wasmtime: 20-45 minutes on 2 shared cores), and clang, lld and wasi-libc
# from Debian (the wasm32 Rust target is not installable here: C it is). Then builds
# bench/wasm/hello.c into the component OUTDIR/hello.wasm: bindings from wit-bindgen for the
# wasi:http/proxy world (the WIT shipped in the wasmtime-wasi-http crate of the same release),
# clang --target=wasm32-wasi, `wasm-tools component new`. On failure the last line printed
# says why.
set -euo pipefail
if [ $# -ne 2 ]; then
	echo "usage: $0 TOOLS OUTDIR" >&2
	exit 2
fi
cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="$1"
mkdir -p "$TOOLS" "$2"
OUT="$(cd "$2" && pwd)"
WASMTIME_VERSION=48.0.8
fail() { echo "$*"; exit 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in clang lld wasi-libc libclang-rt-dev-wasm32; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "bench-wasm: installing ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; then
		timeout 600 $SUDO apt-get update -qq >/dev/null || true
		DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null ||
			fail "apt-get install ${missing[*]} failed"
	fi
fi

install() { # install BINARY CRATE@VERSION
	[ -x "$TOOLS/bin/$1" ] && return 0
	echo "bench-wasm: cargo install $2 (once; slow)"
	timeout 3600 nice -n 10 cargo install --quiet --locked --root "$TOOLS" "$2" ||
		fail "cargo install $2 failed or took over an hour"
}
install wasmtime "wasmtime-cli@$WASMTIME_VERSION"
install wasm-tools "wasm-tools@1.263.0"
install wit-bindgen "wit-bindgen-cli@0.63.0"

# The wasi:http WIT of the same wasmtime release, from cargo's registry (fetched if needed).
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
find_wit() {
	find "$CARGO_HOME/registry/src" -maxdepth 2 -type d -name "wasmtime-wasi-http-$WASMTIME_VERSION" 2>/dev/null |
		head -1
}
CRATE="$(find_wit)"
if [ -z "$CRATE" ]; then
	tmp="$(mktemp -d)"
	mkdir -p "$tmp/src"
	cat >"$tmp/Cargo.toml" <<TOML
[package]
name = "fetch-wit"
version = "0.0.0"
edition = "2021"
[dependencies]
wasmtime-wasi-http = "=$WASMTIME_VERSION"
TOML
	touch "$tmp/src/lib.rs"
	(cd "$tmp" && timeout 600 cargo fetch --quiet) || fail "cargo fetch wasmtime-wasi-http failed"
	rm -rf "$tmp"
	CRATE="$(find_wit)"
fi
[ -n "$CRATE" ] && [ -d "$CRATE/wit" ] || fail "wasi:http WIT not found in the cargo registry"

GEN="$OUT/gen"
mkdir -p "$GEN"
(cd "$GEN" && "$TOOLS/bin/wit-bindgen" c --world "wasi:http/proxy" "$CRATE/wit" >/dev/null) ||
	fail "wit-bindgen c failed"
clang --target=wasm32-wasi -O2 -mexec-model=reactor -I"$GEN" "$ROOT/bench/wasm/hello.c" \
	"$GEN/proxy.c" "$GEN/proxy_component_type.o" -o "$OUT/hello.core.wasm" ||
	fail "clang --target=wasm32-wasi failed"
"$TOOLS/bin/wasm-tools" component new "$OUT/hello.core.wasm" -o "$OUT/hello.wasm" ||
	fail "wasm-tools component new failed"
echo "bench-wasm: built $OUT/hello.wasm with $("$TOOLS/bin/wasmtime" --version)"
