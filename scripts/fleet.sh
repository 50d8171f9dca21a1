#!/usr/bin/env bash
# scripts/fleet.sh [REQUESTS]: the fleet scenario at length. Three `edgevm serve` nodes behind
# varnishd with the shipped VCL (deploy/varnish/edgevm.vcl), loopback only, each phase under
# REQUESTS (default 2000) keep-alive GETs through Varnish, every one of which must answer 200:
#   1. kill -9 of node2 (its probe goes sick; restarted, it is taken back);
#   2. a rolling live update of the program, node by node (every node then answers with the
#      new version; node1 restarted runs it too: the update persisted to its filename);
#   3. node3 restarted with a program that cannot boot (503 from it; Varnish routes around).
# Prints Varnish's counters after each phase. The scenario is
# crates/edgevm/tests/varnish/fleet.vtc; CI runs it with 100 requests per phase
# (tests/all/varnish.rs). Results: docs/DEPLOY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=${1:-2000}
scripts/deps.sh
export EDGEVM_GUESTS="$PWD/target/guests"
guest/build.sh "$EDGEVM_GUESTS" >/dev/null
cargo build --release -q -p edgevm
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || shuf -i 20000-60000 -n 1; }
counts=$(mktemp)
trap 'rm -f "$counts"' EXIT
export PATH="$PATH:/usr/sbin"
start=$(date +%s)
varnishtest -b 256M -t 1200 \
	-D edgevm="$PWD/target/release/edgevm" -D guests="$EDGEVM_GUESTS" \
	-D vcldir="$PWD/deploy/varnish" -D port1="$(port)" -D port2="$(port)" -D port3="$(port)" \
	-D reqs="$reqs" -D counts="$counts" crates/edgevm/tests/varnish/fleet.vtc
echo "fleet: $((3 * reqs + 6)) GETs through Varnish in 4 load phases, 0 failed (varnishtest stops at the first non-200), $(( $(date +%s) - start )) s"
cat "$counts"
awk '/^after/ { phase = $0 } /MAIN.client_req/ { c = $2 } /MAIN.backend_req/ { b = $2 } /MAIN.fetch_failed/ { f = $2 }
     END { printf "backend requests %d for %d client requests; failed fetches retried on another node: %d\n", b, c, f }' "$counts"
