#!/usr/bin/env python3
"""Hostile-client probe of a running `edgevm serve` (docs/SECURITY.md, "Hostile clients").

Runs the cases of the probe that issue 20 came from against a server on 127.0.0.1:PORT whose
program PROGRAM answers GET and POST with 200 and the same body every time (e.g. the bundled
hello example):

  limits      413 for a body over the limit, 431 for a huge head, admin paths answered from
              the head (a 60 MiB POST to /metrics that never sends its body is answered at once)
  smuggling   CL+TE, duplicate lengths, obs-fold, NUL, bad chunks, foreign transfer codings,
              bare LF, pipelines: each followed by a GET on the same connection; no response is
              ever misaligned and a request hidden in a body never runs
  slowloris   N connections trickling request heads while normal clients are served
  flood       N requests for unknown programs with long names (with --log: the log grows by a
              bounded amount)
  idle        with --max-connections N: N idle keep-alive connections do not lock a new
              client out
  soak        S seconds of parallel keep-alive GETs and POSTs of 0-1 MiB, every answer the
              same (with --pid: resident memory afterwards within a bound)

--short runs every case small (CI: crates/edgevm/tests/all/admin.rs runs it in a few
seconds); the default sizes are the original probe's (1,500 slowloris connections, a
10-minute soak: --soak-seconds 600). Exit status 0 when every case held, 1 otherwise.
Standard library only; connects to 127.0.0.1 only.
"""

import argparse
import os
import random
import socket
import sys
import threading
import time

FAILURES = []


def fail(case, msg):
    FAILURES.append(f"{case}: {msg}")
    print(f"FAIL {case}: {msg}", flush=True)


def ok(case, msg):
    print(f"ok   {case}: {msg}", flush=True)


class Client:
    """A raw HTTP/1.1 connection with a response reader (Content-Length bodies)."""

    def __init__(self, port, timeout=20.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def response(self):
        """(status, headers dict, body); EOFError when the server closed first."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def responses_until_close(self):
        out = []
        try:
            while True:
                out.append(self.response())
        except (EOFError, OSError, ValueError, IndexError):
            pass
        return out

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def get(port, path, host="a"):
    c = Client(port)
    try:
        c.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return c.response()
    finally:
        c.close()


def case_limits(a):
    p = a.port
    c = Client(p)
    c.send(b"POST /%s/ HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (a.program.encode(), 17 << 20))
    st = c.response()[0]
    c.close()
    (ok if st == 413 else fail)("limits", f"announced 17 MiB body: {st}")
    c = Client(p)
    c.send(b"GET /%s/ HTTP/1.1\r\nHost: a\r\nX-Big: %s\r\n\r\n" % (a.program.encode(), b"x" * (300 << 10)))
    try:
        st = c.response()[0]
    except (EOFError, OSError):
        st = "closed"
    c.close()
    (ok if st in (431, "closed") else fail)("limits", f"300 KiB head: {st}")
    for method, path in (("POST", "/metrics"), ("POST", "/_edgevm/update/" + a.program)):
        c = Client(p, timeout=5.0)
        t0 = time.monotonic()
        c.send(f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {60 << 20}\r\n\r\n".encode())
        try:
            st = c.response()[0]
        except (EOFError, OSError) as e:
            st = f"no answer ({e})"
        c.close()
        good = isinstance(st, int) and 400 <= st < 500
        (ok if good else fail)(
            "limits", f"{method} {path}, 60 MiB announced, none sent: {st} in {time.monotonic() - t0:.2f} s"
        )


SMUGGLED = "GET /smuggled-probe/ HTTP/1.1\r\nHost: a\r\n\r\n"


def smuggling_cases(prog):
    """(name, request); the hidden request only ever sits where a body could be (requests
    without a body are followed by a legitimately pipelined GET instead)."""
    s = SMUGGLED
    n = len(s)
    return [
        ("CL+TE", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{s}"),
        ("TE+CL", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: {n + 5}\r\n\r\n0\r\n\r\n{s}"),
        ("two different CL", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{s}"),
        ("CL list", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0, {n}\r\n\r\n{s}"),
        ("obs-fold TE", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{s}"),
        ("NUL in header", f"GET /{prog}/ HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n"),
        ("bad chunk size", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{s}"),
        ("chunk size overflow", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\na\r\n0\r\n\r\n{s}"),
        ("gzip, chunked", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{s}"),
        ("xchunked", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nContent-Length: {n}\r\n\r\n{s}"),
        ("TE in HTTP/1.0", f"POST /{prog}/ HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: {n}\r\n\r\n{s}"),
        ("bare LF", f"GET /{prog}/ HTTP/1.1\nHost: a\n\n"),
        ("space before colon", f"POST /{prog}/ HTTP/1.1\r\nHost: a\r\nContent-Length : {n}\r\n\r\n{s}"),
        ("no Host", f"GET /{prog}/ HTTP/1.1\r\n\r\n"),
        ("two Hosts", f"GET /{prog}/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("dot segments", f"GET /x/../{prog}/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("pipeline", f"GET /{prog}/ HTTP/1.1\r\nHost: a\r\n\r\nPOST /{prog}/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /{prog}/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    ]


def case_smuggling(a, baseline):
    prog = a.program
    bad = 0
    cases = smuggling_cases(prog)
    for name, req in cases:
        c = Client(a.port, timeout=10.0)
        try:
            c.send(req.encode("latin-1"))
            c.send(f"GET /{prog}/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        except OSError:
            pass
        rs = c.responses_until_close()
        c.close()
        for st, _, body in rs:
            # The hidden request must never run (its 404 names the program it asked for), and
            # every 200 must be the program's own answer.
            if b"smuggled-probe" in body or (st == 200 and body != baseline):
                fail("smuggling", f"{name}: misaligned or smuggled response {st} {body[:80]!r}")
                bad += 1
                break
    if not bad:
        ok("smuggling", f"{len(cases)} cases: no misaligned response, nothing smuggled ran")


def case_slowloris(a, baseline):
    conns = []
    for _ in range(a.slowloris):
        try:
            c = socket.create_connection(("127.0.0.1", a.port), timeout=5)
            c.sendall(b"GET /" + a.program.encode() + b"/ HTTP/1.1\r\nHo")
            conns.append(c)
        except OSError:
            break
    served = 0
    t_end = time.monotonic() + a.slowloris_seconds
    while time.monotonic() < t_end:
        for c in conns[: len(conns) // 4]:
            try:
                c.sendall(b"o")
            except OSError:
                pass
        try:
            st, _, body = get(a.port, f"/{a.program}/")
            if st == 200 and body == baseline:
                served += 1
            else:
                fail("slowloris", f"a normal client got {st}")
                break
        except (OSError, EOFError) as e:
            fail("slowloris", f"a normal client failed: {e}")
            break
        time.sleep(0.05)
    closed = 0
    if a.header_timeout:
        time.sleep(a.header_timeout + 2)
        for c in conns:
            c.settimeout(0.5)
            try:
                if c.recv(1) == b"":
                    closed += 1
            except OSError:
                closed += 1
        if closed < len(conns):
            fail("slowloris", f"{len(conns) - closed} of {len(conns)} slow heads still open after the header timeout")
    for c in conns:
        c.close()
    if served:
        ok("slowloris", f"{len(conns)} slow connections; {served} normal requests served meanwhile"
           + (f"; {closed} closed at the header timeout" if a.header_timeout else ""))


def case_flood(a):
    size0 = os.path.getsize(a.log) if a.log else 0
    name = "n" * a.flood_name + "%E2%80%AE"
    statuses = set()
    for _ in range(a.flood):
        try:
            statuses.add(get(a.port, f"/{name}/x")[0])
        except (OSError, EOFError) as e:
            statuses.add(str(e))
    if not statuses <= {404, 400, 414, 431}:
        fail("flood", f"unexpected answers {statuses}")
        return
    msg = f"{a.flood} requests for unknown programs with {a.flood_name}-byte names: {sorted(statuses)}"
    if a.log:
        grown = os.path.getsize(a.log) - size0
        limit = 200_000
        if grown > limit:
            fail("flood", f"{msg}; the log grew by {grown} bytes (more than {limit})")
            return
        msg += f"; the log grew by {grown} bytes"
    ok("flood", msg)


def case_idle(a, baseline):
    conns = []
    for _ in range(a.max_connections):
        c = Client(a.port)
        c.send(f"GET /{a.program}/ HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        try:
            c.response()
        except (EOFError, OSError):
            pass
        conns.append(c)
    try:
        st, _, body = get(a.port, f"/{a.program}/")
        (ok if st == 200 and body == baseline else fail)(
            "idle", f"{len(conns)} idle keep-alive connections held; a new client got {st}"
        )
    except (OSError, EOFError) as e:
        fail("idle", f"a new client failed: {e}")
    for c in conns:
        c.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def case_soak(a, baseline):
    before = rss_kib(a.pid) if a.pid else 0
    stop = time.monotonic() + a.soak_seconds
    counts = {"get": 0, "post": 0}
    errors = []
    lock = threading.Lock()

    def worker(seed):
        rng = random.Random(seed)
        c = None
        while time.monotonic() < stop and not errors:
            try:
                if c is None:
                    c = Client(a.port)
                if rng.random() < 0.7:
                    c.send(f"GET /{a.program}/?{rng.randrange(1 << 30)} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
                    kind = "get"
                else:
                    n = rng.choice([0, 1, 100, 4096, 65536, rng.randrange(1 << 20)])
                    c.send(f"POST /{a.program}/ HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n".encode() + os.urandom(n))
                    kind = "post"
                st, _, body = c.response()
                # A body to a program without a POST handler (hello) is answered 405.
                if kind == "post" and n > 0 and a.no_post_handler:
                    ok = st == 405
                else:
                    ok = st == 200 and body == baseline
                if not ok:
                    with lock:
                        errors.append(f"{kind}: {st} {body[:60]!r}")
                with lock:
                    counts[kind] += 1
            except (OSError, EOFError) as e:
                with lock:
                    errors.append(f"connection: {e}")
        if c:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.soak_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail("soak", f"{len(errors)} errors, first: {errors[0]}")
        return
    msg = f"{a.soak_seconds} s, {a.soak_clients} clients: {counts['get']} GETs, {counts['post']} POSTs of 0-1 MiB, all answered alike"
    if a.pid:
        time.sleep(1.5)
        after = rss_kib(a.pid)
        msg += f"; RSS {before} -> {after} KiB"
        if after > before + a.rss_margin_mib * 1024:
            fail("soak", msg + f" (more than {a.rss_margin_mib} MiB up)")
            return
    ok("soak", msg)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--program", default="hello", help="a program answering 200 with a fixed body")
    ap.add_argument("--short", action="store_true", help="every case small (CI)")
    ap.add_argument("--log", help="the server's log file (flood: bounded growth)")
    ap.add_argument("--pid", type=int, help="the server's PID (soak: resident memory)")
    ap.add_argument("--header-timeout", type=float, default=0, help="check slow heads are closed after it")
    ap.add_argument("--max-connections", type=int, default=0, help="the server's limit (idle case)")
    ap.add_argument("--slowloris", type=int, default=1500)
    ap.add_argument("--slowloris-seconds", type=float, default=15)
    ap.add_argument("--flood", type=int, default=300)
    ap.add_argument("--flood-name", type=int, default=60000)
    ap.add_argument("--soak-seconds", type=float, default=60)
    ap.add_argument("--soak-clients", type=int, default=8)
    ap.add_argument("--rss-margin-mib", type=int, default=64)
    ap.add_argument("--cases", default="limits,smuggling,slowloris,flood,idle,soak")
    ap.add_argument("--post-handler", dest="no_post_handler", action="store_false",
                    help="the program has a POST handler: bodies get the GET baseline too")
    a = ap.parse_args()
    if a.short:
        a.slowloris, a.slowloris_seconds = min(a.slowloris, 50), min(a.slowloris_seconds, 1)
        a.flood, a.flood_name = min(a.flood, 100), min(a.flood_name, 10000)
        a.soak_seconds, a.soak_clients = min(a.soak_seconds, 2), min(a.soak_clients, 4)
    st, _, baseline = get(a.port, f"/{a.program}/")
    if st != 200:
        print(f"GET /{a.program}/ answered {st}: give --program a program that answers 200", file=sys.stderr)
        return 2
    cases = a.cases.split(",")
    if "limits" in cases:
        case_limits(a)
    if "smuggling" in cases:
        case_smuggling(a, baseline)
    if "slowloris" in cases:
        case_slowloris(a, baseline)
    if "flood" in cases:
        case_flood(a)
    if "idle" in cases and a.max_connections:
        case_idle(a, baseline)
    if "soak" in cases:
        case_soak(a, baseline)
    st, _, body = get(a.port, f"/{a.program}/")
    if st != 200 or body != baseline:
        fail("after", f"the server answers {st} after the probe")
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
