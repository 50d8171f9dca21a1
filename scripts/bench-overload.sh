#!/usr/bin/env bash
# scripts/bench-overload.sh [OUT] -- twice the load a program serves (docs/BENCHMARKS.md,
# "Overload"); part of scripts/bench.sh, runnable alone once target/release is built.
#
# One `edgevm serve` with the same program twice: guest/tests/bench_touch answering
# `GET /?k=30` (30 VM exits, about a millisecond here), concurrency 2 — `bounded` with
# "max_queue": 16, `unbounded` with "max_queue": 8192 (the most; the reference's queue has no
# bound, only its 60 s timeout). First the capacity: wrk -c8 for DURATION s on `bounded`
# (req/s = R). Then target/release/edgevm-load, open loop (each request has a due time and its
# latency counts from then), offers 2R requests a second for DURATION s over CONNS (256)
# connections to each in turn. Reported per run: answers by status with p50/p99/max latency,
# and the server's memory (Rss) before and after.
#
# Writes OUT/overload.md and OUT/overload-*.json. Environment: PORT (19120), DURATION (10),
# CONNS (256), EDGEVM / LOAD (the binaries under target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${1:-$ROOT/target/bench/overload-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PORT="${PORT:-19120}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-256}"
EDGEVM="${EDGEVM:-$ROOT/target/release/edgevm}"
LOAD="${LOAD:-$ROOT/target/release/edgevm-load}"
export EDGEVM_GUESTS="${EDGEVM_GUESTS:-$ROOT/target/guests}"
log() { echo "bench-overload: $*" >&2; }
for b in "$EDGEVM" "$LOAD"; do
	[ -x "$b" ] || { log "no $b: cargo build --release first"; exit 1; }
done
cat >"$OUT/overload.json" <<JSON
{
  "g": { "concurrency": 2, "max_memory": 64, "max_request_memory": 32, "start": true },
  "bounded": { "group": "g", "filename": "$EDGEVM_GUESTS/bench_touch", "max_queue": 16 },
  "unbounded": { "group": "g", "filename": "$EDGEVM_GUESTS/bench_touch", "max_queue": 8192 }
}
JSON
SERVER=""
cleanup() {
	if [ -n "$SERVER" ]; then
		kill "$SERVER" 2>/dev/null || true
		for _ in $(seq 100); do [ -e "/proc/$SERVER" ] || break; sleep 0.1; done
		kill -KILL "$SERVER" 2>/dev/null || true
		wait "$SERVER" 2>/dev/null || true
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
EDGEVM_LOG=warn NO_COLOR=1 timeout 600 "$EDGEVM" serve --config "$OUT/overload.json" \
	--listen "127.0.0.1:$PORT" >"$OUT/overload-server.log" 2>&1 &
WRAP=$!
for p in bounded unbounded; do
	ok=0
	for _ in $(seq 300); do
		if curl -fs -o /dev/null "http://127.0.0.1:$PORT/$p/?k=30"; then ok=1; break; fi
		sleep 0.1
	done
	[ "$ok" = 1 ] || { log "/$p/ does not answer 200"; tail -5 "$OUT/overload-server.log" >&2; exit 1; }
done
SERVER="$(pgrep -P "$WRAP" | head -1)"
[ -n "$SERVER" ] || { log "server did not start"; cat "$OUT/overload-server.log" >&2; exit 1; }
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$SERVER/status"; }

timeout $((DURATION + 60)) wrk -t2 -c8 -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/bounded/?k=30" \
	>"$OUT/overload-capacity.wrk" 2>&1 || true
R="$(awk '/Requests\/sec/ { printf "%d", $2 }' "$OUT/overload-capacity.wrk")"
[ -n "$R" ] && [ "$R" -gt 0 ] || { log "no capacity measured"; cat "$OUT/overload-capacity.wrk" >&2; exit 1; }
OFFER=$((2 * R))
log "capacity $R req/s; offering $OFFER req/s for $DURATION s over $CONNS connections"
echo "$(rss)" >"$OUT/overload-rss-0"
for p in bounded unbounded; do
	timeout $((DURATION + 120)) "$LOAD" "http://127.0.0.1:$PORT/$p/?k=30" "$OFFER" "$DURATION" "$CONNS" \
		>"$OUT/overload-$p.json" 2>"$OUT/overload-$p.log" || true
	echo "$(rss)" >"$OUT/overload-rss-$p"
	sleep 1
done
curl -fs "http://127.0.0.1:$PORT/_edgevm/stats" >"$OUT/overload-stats.json"
cleanup
SERVER=""
trap - EXIT

python3 - "$OUT" "$R" "$OFFER" "$DURATION" "$CONNS" <<'PY'
import json, re, sys
out, cap, offer, dur, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cw = open(f"{out}/overload-capacity.wrk").read()
def lat(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\b", cw, re.M)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else 0
stats = json.load(open(f"{out}/overload-stats.json"))["programs"]
rss0 = int(open(f"{out}/overload-rss-0").read())
lines = [f"### Overload (scripts/bench-overload.sh: 2× the load one program serves)\n",
         f"bench_touch `GET /?k=30` (30 VM exits per request), concurrency 2. Capacity (wrk -t2 -c8 -d{dur}s): "
         f"**{cap} req/s**, p50 {lat(50):.0f} µs, p99 {lat(99):.0f} µs. Then `edgevm-load` (open loop, latency from each "
         f"request's due time) offers {offer} req/s for {dur} s over {conns} connections to each program in turn. "
         f"Server Rss before: {rss0/1024:.1f} MiB.\n",
         "| program | max_queue | answered/s 200 | 200: p50 ms | p99 ms | max ms | 503 answers | 503: p50 ms | p99 ms | no answer | server Rss after, MiB | queue_full | queue_timeouts |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
summary = {}
for p, mq in (("bounded", 16), ("unbounded", 8192)):
    try:
        r = json.load(open(f"{out}/overload-{p}.json"))
    except Exception:
        lines.append(f"| {p} | {mq} | load generator failed | | | | | | | | | | |")
        continue
    st = r["status"]
    ok, busy, none = st.get("200", {}), st.get("503", {}), st.get("0", {})
    ms = lambda d, k: f"{d.get(k, 0)/1000:.1f}" if d else "—"
    rss = int(open(f"{out}/overload-rss-{p}").read())
    s = stats.get(p, {})
    lines.append(f"| {p} | {mq} | {ok.get('count', 0)/r['seconds']:.0f} | {ms(ok,'p50_us')} | {ms(ok,'p99_us')} | {ms(ok,'max_us')} | "
                 f"{busy.get('count', 0)} | {ms(busy,'p50_us')} | {ms(busy,'p99_us')} | {none.get('count', 0)} | {rss/1024:.1f} | "
                 f"{s.get('queue_full', 0)} | {s.get('queue_timeouts', 0)} |")
    summary[p] = r
text = "\n".join(lines) + "\n"
open(f"{out}/overload.md", "w").write(text)
print(text)
PY
