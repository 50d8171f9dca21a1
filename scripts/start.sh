#!/usr/bin/env bash
# Build edgevm and the example programs, show `edgevm run` on the hello programs, then serve the
# bundled default configuration on 127.0.0.1:8080 (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
export EDGEVM_GUESTS="$PWD/target/guests"
guest/build.sh "$EDGEVM_GUESTS" >/dev/null
for p in hello hello_musl hello_cpp hello_rust; do
	./target/release/edgevm run "$EDGEVM_GUESTS/$p"
done
if ./target/release/edgevm help serve >/dev/null 2>&1; then
	exec ./target/release/edgevm serve --config config/default.json --listen "${EDGEVM_LISTEN:-127.0.0.1:8080}"
fi
