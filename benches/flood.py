#!/usr/bin/env python3
"""Unauthenticated floods against `aibridge serve`, for `benches/run.sh flood`.

Holds SILENT sockets that never send a byte and SLOW sockets that send a 400 KB request
head a little at a time, reconnecting whatever the server closes, for SECONDS; meanwhile a
real client sends one request every 50 ms. Prints one line of JSON: how the real requests
fared, and how many connections the server closed. Loopback only: ADDRESS is 127.0.0.1:PORT.
"""
import json
import selectors
import socket
import sys
import time

address, silent_count, slow_count, seconds = sys.argv[1], *map(int, sys.argv[2:5])
host, port = address.rsplit(":", 1)
target = (host, int(port))
assert host.startswith("127."), "loopback only"

HEAD_SIZE = 400 * 1024
CHUNK = 2048
PAUSE = 0.05
selector = selectors.DefaultSelector()
closed = {"silent": 0, "slow": 0}
sent = {}


def connect(kind):
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(target)
    selector.register(sock, selectors.EVENT_READ, kind)
    if kind == "slow":
        sent[sock] = 0
        sock_send(sock, b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n")
    return sock


def sock_send(sock, data):
    try:
        sock.send(data)
    except OSError:
        pass


def real_request():
    started = time.monotonic()
    try:
        with socket.create_connection(target, timeout=5) as sock:
            sock.sendall(
                b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b"content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
            )
            answer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer.startswith(b"HTTP/1.1 200"), time.monotonic() - started
    except OSError:
        return False, time.monotonic() - started


for _ in range(silent_count):
    connect("silent")
for _ in range(slow_count):
    connect("slow")

deadline = time.monotonic() + seconds
next_drip = next_real = time.monotonic()
answered = failed = 0
latencies = []
while time.monotonic() < deadline:
    for key, _ in selector.select(timeout=0.01):
        sock, kind = key.fileobj, key.data
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            selector.unregister(sock)
            sent.pop(sock, None)
            sock.close()
            closed[kind] += 1
            connect(kind)
    now = time.monotonic()
    if now >= next_drip:
        next_drip = now + PAUSE
        filler = b"x-filler: " + b"f" * (CHUNK - 12) + b"\r\n"
        for sock in list(sent):
            if sent[sock] < HEAD_SIZE:
                sock_send(sock, filler)
                sent[sock] += len(filler)
    if now >= next_real:
        next_real = now + 0.05
        ok, took = real_request()
        answered += ok
        failed += not ok
        latencies.append(took)

latencies.sort()
print(json.dumps({
    "real_answered": answered,
    "real_failed": failed,
    "real_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
    "real_max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
    "silent_closed_by_server": closed["silent"],
    "slow_closed_by_server": closed["slow"],
}))
