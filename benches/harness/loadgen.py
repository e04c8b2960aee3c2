"""Load generators (wrk, h2load, oha, idle connections) and what their output says.

Every runner returns a dict with at least `requests` (completed with a 2xx), `rps`, `latency_us`
(keys p50/p99/p999/mean where the tool reports them) and `errors` (non-2xx, socket errors).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

from procs import HarnessError, children_cpu, run_measured
from targets import BODIES, GRPC_PATH, LOAD_CPU

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Workload:
    key: str
    title: str
    tool: str  # wrk | h2load | oha | idle
    conns: int = 16
    body: str = "small"
    rate: int | None = None
    churn: bool = False
    streams: int = 1
    grpc: bool = False  # h2load: gRPC unary calls (POST, framed message, trailers) to the gRPC port
    tags: list[str] = field(default_factory=list)

    def path(self) -> str:
        return GRPC_PATH if self.grpc else BODIES[self.body][0]


def all_workloads(rates: list[int], idle_conns: int) -> list[Workload]:
    w = [
        # First, while the proxies are fresh: later load leaves memory in their allocators that
        # the connections would reuse, hiding their cost. Run once (not repeated).
        Workload(f"idle-{idle_conns}", f"{idle_conns} idle keep-alive connections, opened before any load (memory)",
                 "idle", idle_conns),
        Workload("h1-c16", "HTTP/1.1 keep-alive, 16 connections, closed loop (wrk)", "wrk", 16),
        Workload("h1-c64", "HTTP/1.1 keep-alive, 64 connections, closed loop (wrk)", "wrk", 64),
        Workload("h1-c16-1k", "HTTP/1.1, 16 connections, 1 KiB body (wrk)", "wrk", 16, body="1k"),
        Workload("h1-c16-64k", "HTTP/1.1, 16 connections, 64 KiB body (wrk)", "wrk", 16, body="64k"),
        Workload("churn-c16", "connection churn: a new connection per request, 16 at a time (wrk, Connection: close)",
                 "wrk", 16, churn=True),
        Workload("h2-16x10", "HTTP/2 (h2c prior knowledge), 16 clients x 10 streams (h2load)", "h2load", 16, streams=10),
        Workload("grpc-unary", "gRPC unary over h2c, 16 clients x 10 streams, 15-byte request, 35-byte reply and "
                 "trailers (h2load)", "h2load", 16, streams=10, grpc=True),
    ]
    for r in rates:
        w.append(Workload(f"rate-{r}", f"fixed rate {r} req/s, 16 connections, latency-corrected (oha)", "oha", 16,
                          rate=r, tags=["rate"]))
    return w


# ------------------------------------------------------------------ wrk


def run_wrk(wrk: str, port: int, w: Workload, duration: int, host: str = "127.0.0.1",
            wrap: tuple[str, ...] = ()) -> dict:
    """`wrap` goes before wrk's own command line (`ip netns exec NS` for the transparent bench)."""
    argv = [*wrap, wrk, "-t1", f"-c{w.conns}", f"-d{duration}s", "--timeout", "5s", "-s",
            os.path.join(HERE, "wrk_report.lua")]
    if w.churn:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{host}:{port}{w.path()}")
    status, out, err, cpu, wall = run_measured(argv, LOAD_CPU, duration + 30)
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if status != 0 or not m:
        raise HarnessError(f"wrk failed (status {status}): {(err or out).strip()[-400:]}")
    j = json.loads(m.group(1))
    secs = j["duration_us"] / 1e6
    ok = j["requests"] - j["errors"]["status"]
    return {
        "requests": ok,
        "responses": j["requests"],
        "rps": ok / secs if secs else 0.0,
        "latency_us": {k: float(v) for k, v in j["latency_us"].items() if k in ("p50", "p90", "p99", "p999", "mean", "max")},
        "errors": j["errors"],
        "loadgen_cpu_s": cpu.total,
        "loadgen_wall_s": wall,
    }


# ------------------------------------------------------------------ h2load

_UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _dur_us(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", s)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def run_h2load(h2load: str, port: int, w: Workload, duration: int, grpc_request: str | None = None) -> dict:
    argv = [h2load, "-t1", f"-c{w.conns}", f"-m{w.streams}", "-D", str(duration)]
    if w.grpc:
        argv += ["-d", grpc_request, "-H", "content-type: application/grpc", "-H", "te: trailers"]
    argv.append(f"http://127.0.0.1:{port}{w.path()}")
    status, out, err, cpu, wall = run_measured(argv, LOAD_CPU, duration + 30)
    fin = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    tfr = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not fin or not req:
        raise HarnessError(f"h2load gave no summary (status {status}): {(err or out).strip()[-400:]}")
    secs = float(fin.group(1))
    ok = int(codes.group(1)) if codes else int(req.group(4))
    # With -D, "done" leaves out responses that arrived after the duration ended while the
    # status counts include them, so non-2xx comes from the status counts themselves.
    non2xx = sum(int(codes.group(i)) for i in (2, 3, 4)) if codes else max(0, int(req.group(3)) - ok)
    lat = {"mean": _dur_us(tfr.group(3)), "max": _dur_us(tfr.group(2))} if tfr else {}
    return {
        "requests": ok,
        "responses": ok + non2xx,
        "rps": ok / secs if secs else 0.0,
        "latency_us": lat,
        "errors": {"failed": int(req.group(5)), "errored": int(req.group(6)), "timeout": int(req.group(7)),
                   "non2xx": non2xx},
        "loadgen_cpu_s": cpu.total,
        "loadgen_wall_s": wall,
    }


# ------------------------------------------------------------------ oha


def oha_flags(oha: str) -> dict:
    """Which spelling this oha uses for JSON output (`--output-format json` since 1.5, `-j` before)."""
    help_text = subprocess.run([oha, "--help"], capture_output=True, text=True).stdout
    return {"json": ["--output-format", "json"] if "--output-format" in help_text else ["-j"],
            "no_tui": ["--no-tui"] if "--no-tui" in help_text else []}


def run_oha(oha: str, flags: dict, port: int, w: Workload, duration: int) -> dict:
    argv = [oha, *flags["no_tui"], *flags["json"], "-z", f"{duration}s", "-c", str(w.conns), "-q", str(w.rate),
            "--latency-correction", f"http://127.0.0.1:{port}{w.path()}"]
    status, out, err, cpu, wall = run_measured(argv, LOAD_CPU, duration + 60)
    try:
        j = json.loads(out[out.index("{"):])
    except (ValueError, json.JSONDecodeError):
        raise HarnessError(f"oha gave no JSON (status {status}): {(err or out).strip()[-400:]}") from None
    codes = {str(k): int(v) for k, v in (j.get("statusCodeDistribution") or {}).items()}
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values())
    p = j.get("latencyPercentiles") or {}
    summ = j.get("summary") or {}
    secs = float(summ.get("total") or duration)
    lat = {"p50": p.get("p50"), "p90": p.get("p90"), "p99": p.get("p99"), "p999": p.get("p99.9"),
           "mean": summ.get("average"), "max": summ.get("slowest")}
    lat = {k: (float(v) * 1e6 if v is not None else None) for k, v in lat.items()}
    errs = {k: int(v) for k, v in (j.get("errorDistribution") or {}).items()}
    return {
        "requests": ok,
        "responses": total,
        "rps": ok / secs,
        "latency_us": lat,
        "errors": {"non2xx": total - ok, "socket": sum(errs.values()), "detail": errs},
        "loadgen_cpu_s": cpu.total,
        "loadgen_wall_s": wall,
    }


# ------------------------------------------------------------------ idle connections


class IdleConns:
    """Runs idle_conns.py pinned to the load core; `open()` returns once all connections are up."""

    def __init__(self, port: int, w: Workload):
        self.port, self.w = port, w
        self.proc: subprocess.Popen | None = None

    def open(self, timeout: float = 120) -> tuple[int, int]:
        self.c0 = children_cpu()
        self.proc = subprocess.Popen(["taskset", "-c", str(LOAD_CPU), sys.executable, os.path.join(HERE, "idle_conns.py"),
                                      str(self.port), self.w.path(), str(self.w.conns), "300"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY") or time.monotonic() > deadline:
            self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace")
            raise HarnessError(f"idle connections failed: {line.strip()} {err.strip()[-400:]}")
        _, n, bad = line.split()
        return int(n), int(bad)

    def close(self) -> int:
        """Returns how many connections the server had closed by then."""
        assert self.proc is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read().decode()
        self.proc.wait(timeout=30)
        m = re.search(r"closed_by_server=(\d+)", out)
        return int(m.group(1)) if m else -1
