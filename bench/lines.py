#!/usr/bin/env python3
"""Line requests against a line-protocol server (guest/examples/lineserver.c), for
docs/BENCHMARKS.md: `lines.py PORT [ROUNDS]` prints, per round, the microseconds of one
request on one connection (send a line, wait for its answer) and the lines per second of
8 connections each keeping 64 lines in flight. The same client measures edgevm's TCP server
mode and the same program run natively, in the same run."""
import selectors
import socket
import sys
import time


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def ping_pong(port, n=3000):
    s = connect(port)
    f = s.makefile("rb")
    t = time.perf_counter()
    for _ in range(n):
        s.sendall(b"INCR\n")
        f.readline()
    dt = time.perf_counter() - t
    s.close()
    return dt / n * 1e6


def pipelined(port, conns=8, depth=64, total=80000):
    sel = selectors.DefaultSelector()
    per = total // conns
    state = {}
    for _ in range(conns):
        s = connect(port)
        s.setblocking(False)
        state[s] = [per, 0, b""]  # lines left to send, answers owed, partial input
        sel.register(s, selectors.EVENT_READ)
    t = time.perf_counter()
    for s, st in state.items():
        k = min(depth, st[0])
        s.sendall(b"INCR\n" * k)
        st[0] -= k
        st[1] += k
    done = 0
    while done < per * conns:
        for key, _ in sel.select():
            s = key.fileobj
            st = state[s]
            data = s.recv(65536)
            lines = data.count(b"\n")
            done += lines
            st[1] -= lines
            k = min(lines, st[0])
            if k:
                s.sendall(b"INCR\n" * k)
                st[0] -= k
                st[1] += k
    dt = time.perf_counter() - t
    for s in state:
        s.close()
    return per * conns / dt


if __name__ == "__main__":
    port = int(sys.argv[1])
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
        print(f"{ping_pong(port):.1f} us/request, {pipelined(port):.0f} lines/s", flush=True)
