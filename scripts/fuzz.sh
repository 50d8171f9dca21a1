#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [TARGET...] -- run edgevm's cargo-fuzz targets for a bounded time.
#
#   SECONDS   time per target (default 15)
#   TARGET    config elf syscalls api http websocket (default: all, one after the other)
#
# Installs cargo-fuzz if missing (`cargo install cargo-fuzz`, about a minute), builds fuzz/ on
# stable Rust without a sanitizer (`-s none`; set FUZZ_SANITIZER=address with a nightly
# toolchain or RUSTC_BOOTSTRAP=1 for ASan), and runs each target at the lowest CPU priority.
# New corpus entries go to fuzz/corpus/<target>/ (not committed), crashes to
# fuzz/artifacts/<target>/. A crash fails the script: fix it, then copy the input into
# fuzz/regressions/<target>/ so `cargo test -p edgevm-fuzz-targets` replays it from then on.
# See docs/SECURITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-15}"
[ $# -gt 0 ] && shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(config elf syscalls api http websocket)
SAN="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: installing cargo-fuzz" >&2
	cargo install --locked cargo-fuzz
fi
nice -n 19 cargo fuzz build -s "$SAN" >&2
for t in "${TARGETS[@]}"; do
	mkdir -p "fuzz/corpus/$t"
	echo "fuzz.sh: $t for ${SECS}s" >&2
	nice -n 19 cargo fuzz run -s "$SAN" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/regressions/$t" -- \
		-max_total_time="$SECS" -timeout=30 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
done
echo "fuzz.sh: no crashes (${SECS}s per target: ${TARGETS[*]})" >&2
