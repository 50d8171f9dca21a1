#!/usr/bin/env bash
# scripts/bench.sh [--quick] [--perf] -- the one benchmark command (docs/BENCHMARKS.md).
#
# In one run on 127.0.0.1: builds release, starts `edgevm serve` with the benchmark programs
# (bench/programs.json: hello, scounter with shared memory, counter with a storage VM, and
# bench_touch dirtying 256 pages per request), beside them the native baselines
# (target/release/edgevm-hello: byte-identical answers without a VM) and the peers (Varnish's
# synth response; `wasmtime serve`), drives every target with the same wrk settings in
# interleaved rounds, reads the exits per request from /_edgevm/stats, then runs the
# microbenchmarks (crates/edgevm-runtime/benches/request.rs), and prints one table plus the
# issue's targets with PASS/MISS.
#
#   --quick   the regression guard, under a minute once built: edgevm and native only, one
#             1 s round per target, and a check of the exits per request against
#             bench/expected-exits.json (exit status 1 if a program needs more).
#   --perf    also record `perf` on the edgevm server during one hello run and print the top
#             of the report.
#
# Environment: ROUNDS (5), DURATION (3: seconds per wrk run), THREADS (2) and CONNS (8): wrk
# -t/-c, PORT (19100: uses PORT..PORT+3), OUT (result directory, target/bench/<time>),
# PEERS ("varnish wasmtime": which peers to try), BENCH_TOOLS (where `cargo install` puts the
# wasm tools; ~/.cache/edgevm-bench-tools), CYCLES (request-cycle samples per row, 2000).
# Every run is bounded by timeout(1); the processes this script starts are stopped by their
# PID and checked gone at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
QUICK=0
PERF=0
for a in "$@"; do
	case "$a" in
	--quick) QUICK=1 ;;
	--perf) PERF=1 ;;
	*) echo "usage: $0 [--quick] [--perf]" >&2; exit 2 ;;
	esac
done
if [ "$QUICK" = 1 ]; then
	ROUNDS="${ROUNDS:-1}"
	DURATION="${DURATION:-1}"
	PEERS="${PEERS:-}"
else
	ROUNDS="${ROUNDS:-5}"
	DURATION="${DURATION:-3}"
	PEERS="${PEERS-varnish wasmtime}"
fi
THREADS="${THREADS:-2}"
CONNS="${CONNS:-8}"
PORT="${PORT:-19100}"
CYCLES="${CYCLES:-2000}"
BENCH_TOOLS="${BENCH_TOOLS:-$HOME/.cache/edgevm-bench-tools}"
OUT="${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
log() { echo "bench: $*" >&2; }

# --- what it needs ------------------------------------------------------------------------
scripts/deps.sh
SKIPPED=()
for p in $PEERS; do
	case "$p" in
	varnish)
		if ! command -v varnishd >/dev/null 2>&1; then
			log "installing varnish (Debian package)"
			SUDO=""
			[ "$(id -u)" -eq 0 ] || SUDO="sudo"
			# policy-rc.d keeps the package's service from starting where there is none.
			if ! DEBIAN_FRONTEND=noninteractive timeout 600 $SUDO apt-get install -y -qq varnish \
				>"$OUT/varnish-install.log" 2>&1; then
				# Stale package lists on a fresh machine: update once and retry.
				timeout 600 $SUDO apt-get update -qq >>"$OUT/varnish-install.log" 2>&1 || true
				DEBIAN_FRONTEND=noninteractive timeout 600 $SUDO apt-get install -y -qq varnish \
					>>"$OUT/varnish-install.log" 2>&1 ||
					SKIPPED+=("varnish: apt-get install varnish failed (see $OUT/varnish-install.log)")
			fi
		fi
		;;
	wasmtime)
		if ! scripts/bench-wasm.sh "$BENCH_TOOLS" "$OUT/wasm" >"$OUT/wasm-build.log" 2>&1; then
			SKIPPED+=("wasmtime serve: $(tail -1 "$OUT/wasm-build.log")")
		fi
		;;
	*) SKIPPED+=("$p: unknown peer") ;;
	esac
done

log "building (release)"
timeout 1800 cargo build --release --quiet --bin edgevm --bin edgevm-hello --bin edgevm-load
export EDGEVM_GUESTS="${EDGEVM_GUESTS:-$ROOT/target/guests}"
timeout 600 guest/build.sh "$EDGEVM_GUESTS" >/dev/null
sed "s#@GUESTS@#$EDGEVM_GUESTS#g" bench/programs.json >"$OUT/programs.json"

# --- servers ------------------------------------------------------------------------------
PIDS=()
VARNISH_DIR=""
# A process of ours that has not exited (zombies count as gone).
alive() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 100); do alive "$p" || break; sleep 0.1; done
		if alive "$p"; then
			log "PID $p ignores SIGTERM: SIGKILL"
			kill -KILL "$p" 2>/dev/null || true
		fi
		wait "$p" 2>/dev/null || true
	done
	[ -z "$VARNISH_DIR" ] || rm -rf "$VARNISH_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Servers live at most this long (timeout(1) passes its TERM on to them).
LIFE=$((ROUNDS * 12 * (DURATION + 2) + 600))
EDGE="127.0.0.1:$PORT"
NATIVE="127.0.0.1:$((PORT + 1))"
VARNISH="127.0.0.1:$((PORT + 2))"
WASM="127.0.0.1:$((PORT + 3))"
EDGEVM_LOG=warn NO_COLOR=1 timeout "$LIFE" target/release/edgevm serve --config "$OUT/programs.json" \
	--listen "$EDGE" >"$OUT/edgevm.log" 2>&1 &
PIDS+=("$!")
EDGE_PID="$!"
timeout "$LIFE" target/release/edgevm-hello "$NATIVE" >"$OUT/native.log" 2>&1 &
PIDS+=("$!")
NATIVE_PID="$!"
# The timeout(1) wrapper of each target's server: its descendants' CPU time is the server's.
declare -A WRAPPER=([native-hello]="$NATIVE_PID" [native-scounter]="$NATIVE_PID"
	[native-counter]="$NATIVE_PID" [hello]="$EDGE_PID" [scounter]="$EDGE_PID"
	[counter]="$EDGE_PID" [touch256]="$EDGE_PID")
TARGETS=(
	"native-hello http://$NATIVE/hello/"
	"native-scounter http://$NATIVE/scounter/"
	"native-counter http://$NATIVE/counter/"
	"hello http://$EDGE/hello/"
	"scounter http://$EDGE/scounter/"
	"counter http://$EDGE/counter/"
	"touch256 http://$EDGE/touch/?n=256"
)
if [[ " $PEERS " == *" varnish "* ]] && command -v varnishd >/dev/null 2>&1; then
	VARNISH_DIR="$(mktemp -d /tmp/edgevm-bench-varnish.XXXXXX)"
	chmod 755 "$VARNISH_DIR"
	cp bench/varnish-hello.vcl "$VARNISH_DIR/hello.vcl"
	timeout "$LIFE" varnishd -F -a "$VARNISH" -f "$VARNISH_DIR/hello.vcl" -n "$VARNISH_DIR/work" \
		-s malloc,32m -T none >"$OUT/varnish.log" 2>&1 &
	PIDS+=("$!")
	WRAPPER[varnish-synth]="$!"
	TARGETS+=("varnish-synth http://$VARNISH/")
fi
if [[ " $PEERS " == *" wasmtime "* ]] && [ -f "$OUT/wasm/hello.wasm" ]; then
	timeout "$LIFE" "$BENCH_TOOLS/bin/wasmtime" serve --addr "$WASM" "$OUT/wasm/hello.wasm" \
		>"$OUT/wasmtime.log" 2>&1 &
	PIDS+=("$!")
	WRAPPER[wasmtime-serve]="$!"
	TARGETS+=("wasmtime-serve http://$WASM/")
fi

# Wait for every target to answer 200 (at most 60 s each; failing peers are skipped).
READY=()
for t in "${TARGETS[@]}"; do
	name="${t%% *}" url="${t#* }"
	ok=0
	for _ in $(seq 600); do
		if curl -fs -o /dev/null --max-time 2 "$url"; then ok=1; break; fi
		sleep 0.1
	done
	if [ "$ok" = 1 ]; then
		READY+=("$t")
	elif [[ "$name" == varnish* || "$name" == wasmtime* ]]; then
		SKIPPED+=("$name: did not answer ($(tail -1 "$OUT/${name%%-*}.log" 2>/dev/null))")
	else
		log "$url does not answer"; cat "$OUT/edgevm.log" >&2; exit 1
	fi
done

# The native baseline answers byte for byte like edgevm (the Date header aside; the counters
# have served the same number of requests by now: one each). The integration test
# bench::native_baseline_answers_like_the_examples checks the same in CI.
for p in hello scounter counter; do
	a="$(curl -si "http://$EDGE/$p/" | grep -vi '^date:')"
	b="$(curl -si "http://$NATIVE/$p/" | grep -vi '^date:')"
	if [ "$a" != "$b" ]; then
		log "WARNING: native /$p/ differs from edgevm's:"; diff <(echo "$a") <(echo "$b") >&2 || true
	fi
done

# --- wrk rounds, interleaved over the targets ----------------------------------------------
WRK=(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency --timeout 5s)
log "wrk: ${#READY[@]} targets × $ROUNDS rounds of ${WRK[*]}"
for t in "${READY[@]}"; do # warm-up, discarded
	timeout 30 wrk -t"$THREADS" -c"$CONNS" -d1s "${t#* }" >/dev/null 2>&1 || true
done
# CPU time (user + system, clock ticks) of all descendants of PID.
cpu_ticks() {
	local total=0 p c
	for c in $(pgrep -P "$1"); do
		if [ -r "/proc/$c/stat" ]; then
			# Fields after the command name: utime and stime are the 12th and 13th.
			p=$(sed 's/^.*) //' "/proc/$c/stat" | awk '{ print $12 + $13 }')
			total=$((total + p))
		fi
		total=$((total + $(cpu_ticks "$c")))
	done
	echo "$total"
}
for r in $(seq "$ROUNDS"); do
	for t in "${READY[@]}"; do
		name="${t%% *}" url="${t#* }"
		c0=$(cpu_ticks "${WRAPPER[$name]}")
		timeout $((DURATION + 30)) "${WRK[@]}" "$url" >"$OUT/$name.$r.wrk" 2>&1 || true
		echo "$(($(cpu_ticks "${WRAPPER[$name]}") - c0)) $(getconf CLK_TCK)" >"$OUT/$name.$r.cpu"
	done
done
if [ "$PERF" = 1 ]; then
	if command -v perf >/dev/null 2>&1; then
		# $EDGE_PID is timeout(1); the server is its child.
		SERVER_PID="$(pgrep -P "$EDGE_PID" | head -1)"
		log "perf: recording edgevm (PID $SERVER_PID) during a hello run"
		timeout 60 perf record -e cpu-clock -F 999 -g -p "$SERVER_PID" -o "$OUT/perf.data" -- sleep "$DURATION" \
			>"$OUT/perf-record.log" 2>&1 &
		PERF_PID=$!
		timeout $((DURATION + 30)) "${WRK[@]}" "http://$EDGE/hello/" >"$OUT/hello.perf.wrk" 2>&1 || true
		wait "$PERF_PID" || true
		{
			echo "### by thread"
			timeout 300 perf report -i "$OUT/perf.data" --no-children --sort comm -g none --stdio 2>/dev/null |
				grep -v '^#' | grep -v '^$' | head -15
			echo "### by symbol (>= 0.7%)"
			timeout 300 perf report -i "$OUT/perf.data" --no-children --sort dso,sym -g none \
				--percent-limit 0.7 --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -50
		} >"$OUT/perf-report.txt" || true
	else
		SKIPPED+=("perf: not installed (apt-get install linux-perf)")
	fi
fi
# Every program of the exits guard gets 20 requests of its own (echo and headers are not
# driven by wrk), with the method and body bench/expected-exits.json gives.
timeout 60 python3 - "$EDGE" <<'PY'
import json, sys, urllib.request
expected = json.load(open("bench/expected-exits.json"))
for name, e in expected.items():
    if name.startswith("_"):
        continue
    body = e.get("body", "").encode() or None
    for _ in range(20):
        req = urllib.request.Request(f"http://{sys.argv[1]}{e['url']}", data=body,
                                     method=e.get("method", "GET"))
        urllib.request.urlopen(req, timeout=10).read()
PY
curl -fs "http://$EDGE/_edgevm/stats" >"$OUT/stats.json"

# Program load to ready with concurrency 8 as the server reports it, each in a server of its
# own so that nothing else boots at the same time: `ready_ms` (the first request VM; the
# program serves from then on) and the debug line "N more request VMs forked in X ms".
if [ "$QUICK" = 0 ]; then
	cat >"$OUT/ready8.json" <<JSON
{ "hello8": { "filename": "$EDGEVM_GUESTS/example_hello", "concurrency": 8, "start": true } }
JSON
	for i in 1 2 3 4 5; do
		EDGEVM_LOG=debug NO_COLOR=1 timeout 60 target/release/edgevm serve --config "$OUT/ready8.json" \
			--listen "127.0.0.1:$((PORT + 4))" >"$OUT/ready8.$i.log" 2>&1 &
		rp=$!
		PIDS+=("$rp")
		for _ in $(seq 200); do
			grep -q "more request VMs forked" "$OUT/ready8.$i.log" && break
			sleep 0.05
		done
		kill "$rp" 2>/dev/null || true
		wait "$rp" 2>/dev/null || true
	done
fi

cleanup
trap - EXIT
LEFT=""
for p in "${PIDS[@]}"; do alive "$p" && LEFT="$LEFT $p"; done
for port in $(seq "$PORT" $((PORT + 4))); do
	ss -ltn "sport = :$port" 2>/dev/null | grep -q LISTEN && LEFT="$LEFT port:$port"
done
if [ -n "$LEFT" ]; then
	log "ERROR: left behind:$LEFT"
	exit 1
fi
log "all servers stopped (${#PIDS[@]} processes, ports $PORT-$((PORT + 4)) free)"

# --- microbenchmarks ---------------------------------------------------------------------
if [ "$QUICK" = 0 ]; then
	log "microbenchmarks (cargo bench --bench request)"
	EDGEVM_BENCH_JSON="$OUT/micro.json" EDGEVM_BENCH_CYCLES="$CYCLES" timeout 1200 \
		cargo bench --quiet -p edgevm-runtime --bench request >"$OUT/micro.md" 2>"$OUT/micro.log" ||
		{ log "microbenchmarks failed:"; tail -20 "$OUT/micro.log" >&2; exit 1; }
	log "cold start microbenchmark (cargo bench --bench coldstart)"
	timeout 900 cargo bench --quiet -p edgevm-runtime --bench coldstart >"$OUT/coldstart.md" \
		2>"$OUT/coldstart.log" ||
		{ log "coldstart microbenchmark failed:"; tail -20 "$OUT/coldstart.log" >&2; }
fi

# --- many programs on one node, overload, snapshot start (issue 18) -------------------------
if [ "$QUICK" = 0 ]; then
	log "many programs (scripts/bench-many.sh)"
	PORT=$((PORT + 10)) timeout 1200 scripts/bench-many.sh "$OUT" >"$OUT/many.log" 2>&1 ||
		{ log "bench-many failed:"; tail -20 "$OUT/many.log" >&2; }
	log "overload (scripts/bench-overload.sh)"
	PORT=$((PORT + 20)) timeout 900 scripts/bench-overload.sh "$OUT" >"$OUT/overload.log" 2>&1 ||
		{ log "bench-overload failed:"; tail -20 "$OUT/overload.log" >&2; }
	log "snapshot start against a boot (scripts/bench-snapshot.sh)"
	PORT=$((PORT + 30)) timeout 900 scripts/bench-snapshot.sh "$OUT" >"$OUT/snapshot.log" 2>&1 ||
		{ log "bench-snapshot failed:"; tail -20 "$OUT/snapshot.log" >&2; }
fi

printf '%s\n' "${SKIPPED[@]}" >"$OUT/skipped.txt"
python3 scripts/bench_report.py "$OUT" "$QUICK" "${WRK[*]}" "$ROUNDS" "${READY[@]%% *}" | tee "$OUT/report.md"
for part in many overload snapshot coldstart; do
	if [ -f "$OUT/$part.md" ]; then
		echo
		cat "$OUT/$part.md"
	fi
done | tee -a "$OUT/report.md"
