#!/usr/bin/env bash
# scripts/bench.sh -- HTTP throughput of `edgevm serve` beside the native hyper baseline
# (target/release/edgevm-hello), same wrk parameters, 127.0.0.1 only (docs/BENCHMARKS.md,
# "Throughput").
#
# Environment: RUNS (3), DURATION (5s), CONNS (4: the throughput runs; latency runs use 1),
# PORT (base port, 18400; uses PORT and PORT+1), OUT (result directory, a temp dir).
# Prints, per target, the median over RUNS of requests/s (-c$CONNS) and of the median
# latency (-c1), the ratio to native, and exits per request from /_edgevm/stats.
# The servers this script starts are stopped by their PID.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
DURATION="${DURATION:-5s}"
CONNS="${CONNS:-4}"
PORT="${PORT:-18400}"
OUT="${OUT:-$(mktemp -d)}"
command -v wrk >/dev/null || { echo "bench.sh: wrk missing (scripts/deps.sh installs it)" >&2; exit 1; }
cargo build --release --quiet
export EDGEVM_GUESTS="${EDGEVM_GUESTS:-$PWD/target/guests}"
guest/build.sh "$EDGEVM_GUESTS" >/dev/null
G="$EDGEVM_GUESTS"

cat >"$OUT/bench.json" <<JSON
{
	"bench": { "max_memory": 64, "max_request_memory": 32, "start": true },
	"hello1": { "group": "bench", "filename": "$G/example_hello", "concurrency": 1 },
	"hello2": { "group": "bench", "filename": "$G/example_hello", "concurrency": 2 },
	"hello2keep": { "group": "bench", "filename": "$G/example_hello", "concurrency": 2,
		"ephemeral_keep_working_memory": true },
	"scounter": { "group": "bench", "filename": "$G/example_scounter", "concurrency": 2,
		"shared_memory": 2 },
	"counter": { "group": "bench", "filename": "$G/example_counter", "concurrency": 2,
		"storage": true }
}
JSON

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
EDGE="127.0.0.1:$PORT"
NATIVE="127.0.0.1:$((PORT + 1))"
target/release/edgevm serve --config "$OUT/bench.json" --listen "$EDGE" >"$OUT/serve.log" 2>&1 &
PIDS+=("$!")
target/release/edgevm-hello "$NATIVE" >"$OUT/native.log" 2>&1 &
PIDS+=("$!")
for u in "http://$EDGE/hello1/" "http://$EDGE/hello2/" "http://$EDGE/hello2keep/" \
	"http://$EDGE/scounter/" "http://$EDGE/counter/" "http://$NATIVE/"; do
	for _ in $(seq 100); do curl -fs -o /dev/null "$u" && break; sleep 0.1; done
	curl -fs -o /dev/null "$u" || { echo "bench.sh: $u does not answer" >&2; cat "$OUT/serve.log" >&2; exit 1; }
done

TARGETS="native:http://$NATIVE/ hello1:http://$EDGE/hello1/ hello2:http://$EDGE/hello2/ \
hello2keep:http://$EDGE/hello2keep/ scounter:http://$EDGE/scounter/ counter:http://$EDGE/counter/"
# Runs interleaved over the targets, so that noise from other work spreads evenly.
for run in $(seq "$RUNS"); do
	for t in $TARGETS; do
		name="${t%%:*}" url="${t#*:}"
		wrk -t1 -c"$CONNS" -d"$DURATION" "$url" >"$OUT/$name.tput.$run" 2>&1
		wrk -t1 -c1 -d"$DURATION" --latency "$url" >"$OUT/$name.lat.$run" 2>&1
	done
done
curl -fs "http://$EDGE/_edgevm/stats" >"$OUT/stats.json"

python3 - "$OUT" "$RUNS" "$CONNS" $TARGETS <<'PY'
import json, re, statistics, sys
out, runs, conns, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def us(v, unit):
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
def rps(f):
    return float(re.search(r"Requests/sec:\s+([\d.]+)", open(f).read()).group(1))
def p50(f):
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", open(f).read())
    return us(*m.groups())
def errors(f):
    t = open(f).read()
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    s = re.search(r"Socket errors: (.*)", t)
    return (int(m.group(1)) if m else 0), (s.group(1) if s else "")
stats = json.load(open(f"{out}/stats.json"))
def find(name):
    if isinstance(stats, dict):
        progs = stats.get("programs", stats)
        if isinstance(progs, dict) and name in progs:
            return progs[name]
        if isinstance(progs, list):
            for p in progs:
                if p.get("name") == name:
                    return p
    return {}
rows, native = [], None
for t in targets:
    name = t.split(":", 1)[0]
    r = [rps(f"{out}/{name}.tput.{i}") for i in range(1, runs + 1)]
    l = [p50(f"{out}/{name}.lat.{i}") for i in range(1, runs + 1)]
    bad = [errors(f"{out}/{name}.{k}.{i}") for k in ("tput", "lat") for i in range(1, runs + 1)]
    mr, ml = statistics.median(r), statistics.median(l)
    if name == "native":
        native = (mr, ml)
    p = find(name)
    rows.append((name, mr, r, ml, l, p.get("exits_per_request", ""), sum(b[0] for b in bad), [b[1] for b in bad if b[1]]))
print(f"| target | req/s -c{conns} (median; runs) | ratio to native | p50 latency -c1 µs (median; runs) | ratio | exits/request | non-2xx |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, mr, r, ml, l, ex, bad, serr in rows:
    ex = f"{ex:.3f}" if isinstance(ex, float) else str(ex)
    print(f"| {name} | {mr:.0f} ({', '.join(f'{x:.0f}' for x in r)}) | {mr / native[0]:.3f} | "
          f"{ml:.0f} ({', '.join(f'{x:.0f}' for x in l)}) | {ml / native[1]:.1f} | {ex} | {bad}{' ' + str(serr) if serr else ''} |")
print(f"\nraw results: {out}")
PY
