#!/usr/bin/env bash
# The whole test suite: dependencies, guest programs, formatting, lints, unit and integration
# tests (real KVM VMs running guests compiled from guest/). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export EDGEVM_GUESTS="$PWD/target/guests"
guest/build.sh "$EDGEVM_GUESTS" >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
