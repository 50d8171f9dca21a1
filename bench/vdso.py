#!/usr/bin/env python3
"""bench/vdso.py EDGEVM GUESTS [ROUNDS] -- the vDSO's effect, measured in one run.

Starts two `edgevm serve` of the same binary on 127.0.0.1, one with the vDSO (default) and one
with EDGEVM_VDSO=0 (every clock read a system call, as before the vDSO), each serving Go's
example (guest/examples/go) and the clock test guest (guest/tests/vdso.c). In interleaved rounds
it sends the same sequential requests to both and reports per request: client latency (median
of the rounds' means), VM exits and server CPU (from /_edgevm/stats and /proc), and the ratio
off/on. docs/BENCHMARKS.md, "vDSO".
"""
import http.client, json, os, socket, statistics, subprocess, sys, tempfile, time

edgevm, guests = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
CASES = [  # (label, program, url, requests per round)
    ("Go fan-out, 50 goroutines sleeping 1 ms", "goserve", "/goserve/fanout?n=50", 20),
    ("Go time.Sleep(20 ms)", "goserve", "/goserve/sleep?n=20", 10),
    ("C, 3,000 clock reads (clock_gettime, gettimeofday, time x 1,000)", "clocks", "/clocks/loop?n=1000", 50),
    ("C, no clock read (baseline)", "clocks", "/clocks/loop?n=0", 50),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(vdso, tmp):
    cfg = {
        "goserve": {"filename": f"{guests}/example_goserve", "max_memory": 256,
                    "address_space": 1024, "concurrency": 2},
        "clocks": {"filename": f"{guests}/vdso", "concurrency": 2},
    }
    path = os.path.join(tmp, f"cfg-{vdso}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    port = free_port()
    env = dict(os.environ, EDGEVM_LOG="warn", EDGEVM_VDSO=vdso)
    log = open(os.path.join(tmp, f"log-{vdso}.txt"), "w")
    p = subprocess.Popen([edgevm, "serve", "--config", path, "--listen", f"127.0.0.1:{port}",
                          "--no-request-log"], env=env, stdout=log, stderr=log)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.02)
    return p, port


def get(port, url):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", url)
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"{url}: {r.status} {body[:200]!r}")
    return body


def exits(port, prog):
    return json.loads(get(port, "/_edgevm/stats"))["programs"][prog]["exits"]


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main():
    tmp = tempfile.mkdtemp(prefix="edgevm-vdso-bench-")
    servers = {v: start(v, tmp) for v in ("1", "0")}
    try:
        for v, (p, port) in servers.items():
            for _, prog, url, _ in CASES:
                for _ in range(3):
                    get(port, url)  # boot and warm
        res = {(v, c[0]): {"lat": [], "exits": [], "cpu": []} for v in servers for c in CASES}
        for _ in range(rounds):
            for label, prog, url, n in CASES:
                for v, (p, port) in servers.items():
                    e0, c0, t0 = exits(port, prog), cpu(p.pid), time.perf_counter()
                    for _ in range(n):
                        get(port, url)
                    t1, c1, e1 = time.perf_counter(), cpu(p.pid), exits(port, prog)
                    r = res[(v, label)]
                    r["lat"].append((t1 - t0) / n * 1e3)
                    r["exits"].append((e1 - e0) / n)
                    r["cpu"].append((c1 - c0) / n * 1e3)
        print(f"| request | exits off | exits on | latency off (ms) | latency on (ms) | off/on | "
              f"server CPU off (ms) | on (ms) | off/on |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, *_ in CASES:
            off, on = res[("0", label)], res[("1", label)]
            lo, ln = statistics.median(off["lat"]), statistics.median(on["lat"])
            co, cn = statistics.median(off["cpu"]), statistics.median(on["cpu"])
            print(f"| {label} | {statistics.median(off['exits']):.1f} | "
                  f"{statistics.median(on['exits']):.1f} | {lo:.2f} | {ln:.2f} | {lo / ln:.2f}x | "
                  f"{co:.2f} | {cn:.2f} | {co / max(cn, 1e-9):.2f}x |")
    finally:
        for p, _ in servers.values():
            p.terminate()
            p.wait(10)


main()
