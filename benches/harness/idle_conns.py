"""Open N keep-alive HTTP/1.1 connections to 127.0.0.1:PORT and hold them idle.

Each connection sends one GET and reads its whole response first (so the proxy has a real,
established HTTP connection, not just an accepted socket), then stays open. Prints `READY <n>`
once all are open, then waits until stdin closes (or HOLD seconds pass) and closes them.

usage: idle_conns.py PORT PATH N [HOLD_SECONDS]
"""

import resource
import select
import socket
import sys
import time


def read_response(s: socket.socket) -> int:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return status


def main() -> int:
    port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    hold = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    socks, bad = [], 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        if read_response(s) != 200:
            bad += 1
        socks.append(s)
    print(f"READY {len(socks)} {bad}", flush=True)
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        r, _, _ = select.select([sys.stdin], [], [], 0.5)
        if r and not sys.stdin.read(1):
            break
    # A connection the server closed in the meantime reads EOF: count those.
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    print(f"DONE closed_by_server={closed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
