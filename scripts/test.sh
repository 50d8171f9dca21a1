#!/usr/bin/env bash
# The whole test suite: dependencies, guest programs, formatting, lints, unit and integration
# tests (real KVM VMs running guests compiled from guest/). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export EDGEVM_GUESTS="$PWD/target/guests"
# Tests whose configured request times must leave room for legitimate work scale them by this
# (tests/all/common.rs time_scale): cargo runs them two at a time on a 2-core machine.
export EDGEVM_TEST_TIME_SCALE="${EDGEVM_TEST_TIME_SCALE:-2}"
guest/build.sh "$EDGEVM_GUESTS" >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The hardware-KVM paths (SYSCALL at CPL0, XCR0/CPUID, XSAVE images) on real KVM code under
# emulated SVM, on a CPU without and one with protection keys (docs/DESIGN.md, "Verified on
# hardware KVM"). EDGEVM_SKIP_HWKVM=1 leaves it out of a local run; CI always runs it.
if [ "${EDGEVM_SKIP_HWKVM:-0}" != 1 ] || [ "${CI:-}" = true ]; then
	scripts/hwkvm.sh 2>&1 | tee -a "$log"
	[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
set -e
# One closing line for the whole run (cargo prints one "test result" per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
