#!/usr/bin/env bash
# scripts/bench-many.sh [OUT] -- a thousand programs on one node (docs/BENCHMARKS.md, "Many
# programs"); part of scripts/bench.sh, runnable alone once target/release is built.
#
# One `edgevm serve` on 127.0.0.1 configured with PROGRAMS (1000) programs: copies of the
# examples hello, echo and headers in four sizes each (padding after the ELF: 0.8 to 1.1 MB),
# group "many" (concurrency 2, max_memory 16 MB), none started. Then, with the server's
# memory, open files and KVM VMs read from /proc after each phase:
#
#   1. cold first requests: 40 programs spread over the names, one request each (boots the
#      program) then a second one (warm): latency of each from a keep-alive client;
#   2. a skewed load: wrk for DURATION s over all programs, 90% of the requests to 10 hot
#      programs, 10% spread over all of them (most cold: their first request boots them), next
#      to the same wrk on one hot program alone as the baseline of the same run;
#   3. every program booted (one request each), then the node's figures with all of them
#      resident: memory per program and per request VM, open files, KVM VMs, mappings,
#      threads, and KVM's kernel memory where /proc/slabinfo shows it (vCPUs and shadow
#      page-table pages; the rest of KVM's allocations are not visible there);
#   4. idle: the group has "free_idle_vms_after": IDLE_AFTER (60 s); after that long without
#      requests the figures again (request VMs freed, images kept), then 40 programs asked
#      again: the first request forks a VM back (no boot), the second is warm.
#
# Writes OUT/many.md (the report section) and OUT/many-results.json (OUT/many.json is the
# configuration). Environment: PROGRAMS, PORT
# (19110), DURATION (5), IDLE_AFTER (60), EDGEVM (target/release/edgevm), THREADS/CONNS for
# wrk (2/8).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${1:-$ROOT/target/bench/many-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PROGRAMS="${PROGRAMS:-1000}"
PORT="${PORT:-19110}"
DURATION="${DURATION:-5}"
IDLE_AFTER="${IDLE_AFTER:-60}"
THREADS="${THREADS:-2}"
CONNS="${CONNS:-8}"
EDGEVM="${EDGEVM:-$ROOT/target/release/edgevm}"
export EDGEVM_GUESTS="${EDGEVM_GUESTS:-$ROOT/target/guests}"
log() { echo "bench-many: $*" >&2; }
[ -x "$EDGEVM" ] || { log "no $EDGEVM: cargo build --release first"; exit 1; }

# --- programs -----------------------------------------------------------------------------
mkdir -p "$OUT/programs"
python3 - "$OUT" "$PROGRAMS" "$EDGEVM_GUESTS" "$IDLE_AFTER" <<'PY'
import json, os, sys
out, n, guests, idle = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
files = []
for ex in ("hello", "echo", "headers"):
    elf = open(f"{guests}/example_{ex}", "rb").read()
    for size in range(4):
        path = f"{out}/programs/{ex}-{size}"
        with open(path, "wb") as f:
            f.write(elf + b"\x5a" * (size * 100_000 + 4096))
        files.append(path)
cfg = {"many": {"max_memory": 16, "max_request_memory": 8, "concurrency": 2,
                "free_idle_vms_after": idle}}
for i in range(n):
    cfg[f"p{i:04d}"] = {"group": "many", "filename": files[i % len(files)]}
json.dump(cfg, open(f"{out}/many.json", "w"), indent=0)
PY

# --- server -------------------------------------------------------------------------------
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
EDGEVM_LOG=warn,edgevm=info NO_COLOR=1 timeout 900 "$EDGEVM" serve --config "$OUT/many.json" \
	--listen "127.0.0.1:$PORT" >"$OUT/many-server.log" 2>&1 &
WRAP=$!
for _ in $(seq 300); do
	curl -s -o /dev/null "http://127.0.0.1:$PORT/_edgevm/stats" && break
	sleep 0.1
done
SERVER="$(pgrep -P "$WRAP" | head -1)"
[ -n "$SERVER" ] || { log "server did not start"; cat "$OUT/many-server.log" >&2; exit 1; }

# The server's figures now, as one JSON line appended to OUT/many-phases.jsonl.
snapshot() {
	python3 - "$SERVER" "$1" "http://127.0.0.1:$PORT/_edgevm/stats" >>"$OUT/many-phases.jsonl" <<'PY'
import json, os, sys, urllib.request
pid, phase, url = sys.argv[1], sys.argv[2], sys.argv[3]
roll = {}
for line in open(f"/proc/{pid}/smaps_rollup"):
    parts = line.split()
    if len(parts) >= 3 and parts[-1] == "kB":
        roll[parts[0].rstrip(":")] = int(parts[1])
fds = {"all": 0, "kvm_vm": 0, "kvm_vcpu": 0, "memfd": 0}
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        t = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    fds["all"] += 1
    if t == "anon_inode:kvm-vm":
        fds["kvm_vm"] += 1
    elif t.startswith("anon_inode:kvm-vcpu"):
        fds["kvm_vcpu"] += 1
    elif "edgevm-guest" in t:
        fds["memfd"] += 1
maps = sum(1 for _ in open(f"/proc/{pid}/maps"))
threads = len(os.listdir(f"/proc/{pid}/task"))
slab = {}
try:
    for line in open("/proc/slabinfo"):
        p = line.split()
        if p and p[0] in ("kvm_vcpu", "kvm_mmu_page_header"):
            slab[p[0]] = {"objects": int(p[1]), "size": int(p[3])}
except OSError:
    pass
stats = json.load(urllib.request.urlopen(url, timeout=30))["programs"]
ready = [p for p in stats.values() if p["status"] == "ready"]
print(json.dumps({
    "phase": phase, "rss_kib": roll.get("Rss"), "pss_kib": roll.get("Pss"),
    "pss_anon_kib": roll.get("Pss_Anon"), "pss_shmem_kib": roll.get("Pss_Shmem"),
    "pss_file_kib": roll.get("Pss_File"), "fds": fds, "maps": maps, "threads": threads,
    "slab": slab, "programs_ready": len(ready),
    "request_vms": sum(p.get("resident_vms", 0) for p in ready),
    "image_bytes": sum(p.get("memory_image_bytes", 0) for p in ready),
    "requests": sum(p.get("requests", 0) for p in stats.values()),
    "status_5xx": sum(p.get("status_5xx", 0) for p in stats.values()),
}))
PY
}
snapshot start

# --- 1. cold first requests -----------------------------------------------------------------
# First and second request to 40 programs spread over the names (as JSON).
first_second() {
	python3 - "$PORT" "$PROGRAMS" <<'PY'
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
def get(path):
    t = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    return r.status, (time.perf_counter() - t) * 1e6
first, second = [], []
for k in range(40):
    i = (k * n // 40 + k % 7) % n
    s1, t1 = get(f"/p{i:04d}/")
    s2, t2 = get(f"/p{i:04d}/")
    assert s1 == 200 and s2 == 200, (i, s1, s2)
    first.append(t1)
    second.append(t2)
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({"first_us": first, "second_us": second, "first_median_us": med(first),
                  "first_max_us": max(first), "second_median_us": med(second)}))
PY
}
first_second >"$OUT/many-cold.json"
snapshot cold40

# --- 2. skewed load -------------------------------------------------------------------------
cat >"$OUT/skewed.lua" <<LUA
-- 90% of the requests to 10 hot programs, 10% spread over all $PROGRAMS.
math.randomseed(18)
local n = $PROGRAMS
local statuses = {}
request = function()
  local i
  if math.random() < 0.9 then i = (math.random(10) - 1) * 97 % n else i = math.random(n) - 1 end
  return wrk.format("GET", string.format("/p%04d/", i))
end
LUA
WRK=(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency --timeout 10s)
timeout $((DURATION + 60)) "${WRK[@]}" "http://127.0.0.1:$PORT/p0000/" >"$OUT/many-one.wrk" 2>&1 || true
timeout $((DURATION + 60)) "${WRK[@]}" -s "$OUT/skewed.lua" "http://127.0.0.1:$PORT/" >"$OUT/many-skewed.wrk" 2>&1 || true
snapshot skewed

# --- 3. every program booted ----------------------------------------------------------------
python3 - "$PORT" "$PROGRAMS" >"$OUT/many-all.json" <<'PY'
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
bad = 0
t0 = time.perf_counter()
for i in range(n):
    c.request("GET", f"/p{i:04d}/")
    r = c.getresponse()
    r.read()
    bad += r.status != 200
print(json.dumps({"seconds": time.perf_counter() - t0, "non_200": bad}))
PY
sleep 1 # the last programs' other request VMs are forked after their first answer
snapshot all

# --- 4. idle ---------------------------------------------------------------------------------
log "waiting $((IDLE_AFTER + 3)) s for free_idle_vms_after"
sleep $((IDLE_AFTER + 3))
snapshot idle
first_second >"$OUT/many-refill.json"
ULIMIT_N="$(awk '/Max open files/ { print $4 " (hard " $5 ")" }' "/proc/$SERVER/limits")"
START_LINE="$(grep -o '[0-9]* program(s) need up to.*' "$OUT/many-server.log" | head -1 || true)"
cleanup
SERVER=""
trap - EXIT

python3 - "$OUT" "$PROGRAMS" "${WRK[*]}" "$ULIMIT_N" "$START_LINE" <<'PY'
import json, re, sys
out, n, wrk, ulimit_n, start_line = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ph = {}
for line in open(f"{out}/many-phases.jsonl"):
    d = json.loads(line)
    ph[d["phase"]] = d
cold = json.load(open(f"{out}/many-cold.json"))
refill = json.load(open(f"{out}/many-refill.json"))
allb = json.load(open(f"{out}/many-all.json"))
def wrk_result(path):
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\b", text, re.M)
        if not m:
            return None
        v, u = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1e3, "s": 1e6}[u]
    non2 = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs = re.search(r"Socket errors: (.*)", text)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50_us": lat(50), "p99_us": lat(99),
            "non_2xx": int(non2.group(1)) if non2 else 0, "socket_errors": errs.group(1) if errs else ""}
one, skew = wrk_result(f"{out}/many-one.wrk"), wrk_result(f"{out}/many-skewed.wrk")
s0, sa = ph["start"], ph["all"]
def kvm_kib(p):
    s = p.get("slab", {})
    v = s.get("kvm_vcpu", {})
    h = s.get("kvm_mmu_page_header", {})
    if not v:
        return None
    # vCPU objects, plus one 4 KiB shadow page (and its header) per page header.
    return (v["objects"] * v["size"] + h.get("objects", 0) * (h.get("size", 0) + 4096)) / 1024
lines = []
w = lines.append
w(f"### Many programs ({n} programs on one server; scripts/bench-many.sh)\n")
w(f"Copies of the examples hello, echo and headers in 4 sizes (0.8-1.1 MB files), group `many`: "
  f"concurrency 2, max_memory 16 MB, none started. Open-file limit of the server: {ulimit_n}. "
  f"Start-up line: \"{start_line}\".\n")
w("| phase | programs booted | request VMs | Rss MiB | Pss MiB | Pss anon MiB | Pss shmem MiB | open fds | KVM VM fds | vCPU fds | mappings | threads | KVM kernel MiB (vCPUs + shadow pages, system-wide) |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, label in (("start", "started, nothing booted"), ("cold40", "40 cold programs asked once"),
                    ("skewed", "after the skewed load"), ("all", f"all {n} booted"),
                    ("idle", "idle (free_idle_vms_after passed)")):
    p = ph.get(name)
    if not p:
        continue
    k = kvm_kib(p)
    w(f"| {label} | {p['programs_ready']} | {p['request_vms']} | {p['rss_kib']/1024:.1f} | {p['pss_kib']/1024:.1f} | "
      f"{p['pss_anon_kib']/1024:.1f} | {p['pss_shmem_kib']/1024:.1f} | {p['fds']['all']} | {p['fds']['kvm_vm']} | "
      f"{p['fds']['kvm_vcpu']} | {p['maps']} | {p['threads']} | {'' if k is None else f'{k/1024:.1f}'} |")
w("")
si = ph.get("idle", sa)
prog_kib = (si["pss_kib"] - s0["pss_kib"]) / max(si["programs_ready"], 1)
img_kib = si["image_bytes"] / 1024 / max(si["programs_ready"], 1)
dvms = sa["request_vms"] - si["request_vms"]
vm_kib = (sa["pss_kib"] - si["pss_kib"]) / max(dvms, 1)
w(f"* **Memory per booted program without request VMs** (the idle phase, Pss above the start ÷ {si['programs_ready']}): "
  f"{prog_kib:.0f} KiB, of which its frozen image {img_kib:.0f} KiB (memfd pages the program's main() touched: "
  f"the ELF of a 0.8 MB static binary) and {(si['pss_anon_kib'] - s0['pss_anon_kib']) / max(si['programs_ready'], 1):.0f} KiB "
  f"of anonymous heap. **Per idle request VM**: {vm_kib:.0f} KiB of Pss ((all booted − idle) ÷ {dvms} VMs). "
  f"A configured program that never ran holds no VM and no copy of its binary "
  f"(Pss at start: {s0['pss_kib']/1024:.1f} MiB for {n} programs).")
kv0, kva = kvm_kib(s0), kvm_kib(sa)
if kv0 is not None and kva is not None:
    kvi = kvm_kib(si) if kvm_kib(si) is not None else kv0
    w(f"* **KVM's kernel memory** (from /proc/slabinfo, system-wide, other VMs on the machine included): "
      f"{(kva-kv0)/1024:.1f} MiB more with all programs booted; (all booted − idle) ÷ {dvms} VMs = {(kva-kvi)/max(dvms,1):.0f} KiB per request VM "
      f"(a kvm_vcpu object is {sa['slab']['kvm_vcpu']['size']/1024:.0f} KiB); the VM structures themselves are not visible there.")
w(f"* **Open files and KVM VMs** with all booted: {sa['fds']['all']} fds, {sa['fds']['kvm_vm']} KVM VMs, "
  f"{sa['fds']['kvm_vcpu']} vCPUs, {sa['maps']} mappings, {sa['threads']} threads (KVM's kernel threads of the VMs, kvm-nx-lpage-recovery, count there too). "
  f"No limit was hit: {allb['non_200']} of {n} first requests failed; booting all {n} one after the other took {allb['seconds']:.1f} s.")
w(f"* **First request of a cold program** (boots it; keep-alive client, 40 programs): median "
  f"{cold['first_median_us']/1000:.2f} ms, max {cold['first_max_us']/1000:.2f} ms; the second request "
  f"{cold['second_median_us']/1000:.3f} ms = {cold['first_median_us']/max(cold['second_median_us'],1):.0f}× the warm request.")
w(f"* **Skewed load** (`{wrk}`, 90% of requests to 10 hot programs, 10% over all {n}; most of those cold "
  f"boot on their first request): {skew['rps']:.0f} req/s, p50 {skew['p50_us']} µs, p99 {skew['p99_us']} µs, "
  f"non-2xx {skew['non_2xx']}; {ph['skewed']['programs_ready'] - ph['cold40']['programs_ready']} programs booted during the run. "
  f"The same wrk on one hot program alone: {one['rps']:.0f} req/s, p99 {one['p99_us']} µs: "
  f"skewed ÷ one = {skew['rps']/max(one['rps'],1):.2f}×.")
si = ph.get("idle")
if si:
    w(f"* **Idle programs give their VMs back** (`free_idle_vms_after`): after the idle time Pss went from "
      f"{sa['pss_kib']/1024:.1f} to {si['pss_kib']/1024:.1f} MiB, KVM VM fds from {sa['fds']['kvm_vm']} to "
      f"{si['fds']['kvm_vm']}, request VMs from {sa['request_vms']} to {si['request_vms']} (frozen images kept). "
      f"The next request of such a program forks a VM back: median {refill['first_median_us']/1000:.2f} ms "
      f"(max {refill['first_max_us']/1000:.2f}) against {cold['first_median_us']/1000:.2f} ms for a boot = "
      f"{cold['first_median_us']/max(refill['first_median_us'],1):.1f}× faster; the request after it "
      f"{refill['second_median_us']/1000:.3f} ms.")
text = "\n".join(lines) + "\n"
open(f"{out}/many.md", "w").write(text)
json.dump({"phases": ph, "cold": cold, "all": allb, "wrk_one": one, "wrk_skewed": skew,
           "per_program_kib": prog_kib, "per_request_vm_kib": vm_kib}, open(f"{out}/many-results.json", "w"), indent=1)
print(text)
PY
