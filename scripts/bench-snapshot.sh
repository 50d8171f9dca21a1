#!/usr/bin/env bash
# scripts/bench-snapshot.sh [OUT] -- start from a snapshot file against a boot
# (docs/BENCHMARKS.md, "Snapshot start"); part of scripts/bench.sh, runnable alone once
# target/release is built.
#
# For each program — hello (guest/examples/hello.c) and slow_init (guest/tests/slow_init.c,
# whose main() computes for 60 ms) — and each way to start — `boot` (no snapshot) and
# `snapshot` (a cold_start_file written by an earlier run) — REPS times, interleaved: start
# `edgevm serve` with the program not started ("start": false), wait until it accepts
# connections, wait SETTLE seconds (a cold program on a running server: the server's own
# start-up work, such as the spare KVM VMs it makes for snapshot starts, is done), and time
# one GET with curl: the program's start (boot, or snapshot load) and
# its first response, as a client sees them. Reported: the median of each, and
# boot / snapshot.
#
# Writes OUT/snapshot.md. Environment: PORT (19130), REPS (9), SETTLE (1), PRIO, EDGEVM
# (target/release/edgevm).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${1:-$ROOT/target/bench/snapshot-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PORT="${PORT:-19130}"
REPS="${REPS:-9}"
SETTLE="${SETTLE:-1}"
# On a machine shared with other work (builds at nice 0-10), the server and the client run at
# a higher priority when allowed (root): otherwise each of the start's thread wake-ups waits
# behind the other work's time slices, for both kinds of start alike. PRIO="" turns it off.
PRIO="${PRIO-$( [ "$(id -u)" = 0 ] && echo "nice -n -10")}"
EDGEVM="${EDGEVM:-$ROOT/target/release/edgevm}"
export EDGEVM_GUESTS="${EDGEVM_GUESTS:-$ROOT/target/guests}"
log() { echo "bench-snapshot: $*" >&2; }
[ -x "$EDGEVM" ] || { log "no $EDGEVM: cargo build --release first"; exit 1; }
WORK="$OUT/snapshot-work"
rm -rf "$WORK"
mkdir -p "$WORK/snap"
chmod 700 "$WORK/snap"
SERVER=""
cleanup() {
	if [ -n "$SERVER" ]; then
		kill "$SERVER" 2>/dev/null || true
		wait "$SERVER" 2>/dev/null || true
	fi
}
trap cleanup EXIT

config() { # NAME FILE MODE
	local snap=""
	[ "$3" = snapshot ] && snap=", \"cold_start_file\": \"$WORK/snap/$1.snapshot\""
	cat >"$WORK/$1-$3.json" <<JSON
{ "$1": { "filename": "$2", "concurrency": 1, "start": false$snap } }
JSON
}

# One start: prints the seconds from sending the first GET to its full answer.
one() { # NAME MODE
	local name="$1" mode="$2" t
	timeout 60 $PRIO "$EDGEVM" serve --config "$WORK/$name-$mode.json" --listen "127.0.0.1:$PORT" \
		--no-request-log >>"$WORK/server-$mode.log" 2>&1 &
	SERVER=$!
	for _ in $(seq 1 500); do
		curl -s -o /dev/null "http://127.0.0.1:$PORT/_edgevm/health" && break
		sleep 0.01
	done
	sleep "$SETTLE" # a running server: what its start does in the background is done
	t=$($PRIO curl -s -o "$WORK/answer" -w '%{time_total}' "http://127.0.0.1:$PORT/$name")
	grep -q . "$WORK/answer" || { log "$name ($mode): no answer"; cat "$WORK/server-$mode.log" >&2; exit 1; }
	if [ "$mode" = snapshot ] && [ ! -s "$WORK/snap/$name.snapshot" ]; then
		# The first snapshot run boots and writes the file: wait for it.
		for _ in $(seq 1 500); do
			[ -s "$WORK/snap/$name.snapshot" ] && break
			sleep 0.01
		done
		t=""
	fi
	kill "$SERVER"
	wait "$SERVER" 2>/dev/null || true
	SERVER=""
	echo "$t"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

{
	echo "### Snapshot start over HTTP (scripts/bench-snapshot.sh)"
	echo
	echo "Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg); server and client run with '${PRIO:-no priority change}'. Client: curl's time for the first GET;"
	echo "server: its own log (the snapshot load, and ready = the program's start to its first request VM)."
	echo
	echo "| program | boot: start to first response (median of $REPS) | snapshot start to first response | boot / snapshot | server: boot ready | snapshot load | snapshot ready |"
	echo "|---|---|---|---|---|---|---|"
} >"$OUT/snapshot.md"
for prog in hello:"$EDGEVM_GUESTS/example_hello" slow_init:"$EDGEVM_GUESTS/slow_init"; do
	name="${prog%%:*}"
	file="${prog#*:}"
	config "$name" "$file" boot
	config "$name" "$file" snapshot
	one "$name" snapshot >/dev/null # writes the snapshot
	: >"$WORK/$name-boot.t"
	: >"$WORK/$name-snapshot.t"
	for _ in $(seq 1 "$REPS"); do
		one "$name" boot >>"$WORK/$name-boot.t"
		one "$name" snapshot >>"$WORK/$name-snapshot.t"
	done
	if ! grep -q "Program '$name' started from its snapshot" "$WORK/server-snapshot.log"; then
		log "$name: never started from its snapshot"
		exit 1
	fi
	b=$(median <"$WORK/$name-boot.t")
	s=$(median <"$WORK/$name-snapshot.t")
	# The server's own figures of the last REPS starts of each kind.
	ready() { grep -o "Program '$name' is loaded.*ready=[0-9.]*" "$1" | sed 's/.*ready=//' | tail -n "$REPS" | median; }
	br=$(ready "$WORK/server-boot.log")
	sr=$(ready "$WORK/server-snapshot.log")
	sl=$(grep -o "Program '$name' started from its snapshot .* in [0-9.]* ms" "$WORK/server-snapshot.log" |
		sed 's/.* in //; s/ ms//' | tail -n "$REPS" | median)
	awk -v n="$name" -v b="$b" -v s="$s" -v br="$br" -v sl="$sl" -v sr="$sr" 'BEGIN {
		printf "| %s | %.2f ms | %.2f ms | %.1fx | %.2f ms | %.2f ms | %.2f ms |\n", n, b * 1e3, s * 1e3, b / s, br, sl, sr }' >>"$OUT/snapshot.md"
done
echo "" >>"$OUT/snapshot.md"
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)." >>"$OUT/snapshot.md"
cat "$OUT/snapshot.md"
