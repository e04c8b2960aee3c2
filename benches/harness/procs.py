"""Processes the harness starts, and what /proc says about them.

Every server is started in its own session (so its process group id equals its pid) and its pid
is appended to `<workdir>/pids`; `benches/run` kills whatever is listed there on exit, even when
Python itself died. Inside Python, `Registry.stop_all()` does the same on a normal exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class HarnessError(Exception):
    """The harness itself broke (a target did not start, a tool is missing, no requests)."""


# ------------------------------------------------------------------ ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"process exited with status {proc.returncode} before {host}:{port} opened")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise HarnessError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def http_get(port: int, path: str, timeout: float = 2.0, close: bool = True,
             host: str = "127.0.0.1") -> tuple[int, dict, bytes]:
    """A minimal HTTP/1.1 GET (standard library only; http.client is fine but this shows headers raw)."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"} if close else {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# ------------------------------------------------------------------ /proc


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(")") + 2 :].split()
        ppid = int(rest[1])
        out.setdefault(ppid, []).append(int(name))
    return out


def tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx master + workers, for example)."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


@dataclass
class CpuTimes:
    user: float  # seconds
    system: float

    def __sub__(self, other: "CpuTimes") -> "CpuTimes":
        return CpuTimes(self.user - other.user, self.system - other.system)

    def __add__(self, other: "CpuTimes") -> "CpuTimes":
        return CpuTimes(self.user + other.user, self.system + other.system)

    @property
    def total(self) -> float:
        return self.user + self.system


def cpu_of(pids: list[int]) -> CpuTimes:
    """utime + stime of the given processes (all their threads), from /proc/<pid>/stat."""
    u = s = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(")") + 2 :].split()
        # rest[0] is field 3 (state); utime is field 14, stime field 15.
        u += int(rest[11])
        s += int(rest[12])
    return CpuTimes(u / CLK_TCK, s / CLK_TCK)


def mem_of(pids: list[int]) -> dict[str, int]:
    """VmRSS and VmHWM summed over the given processes, in KiB."""
    out = {"rss_kib": 0, "hwm_kib": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out["rss_kib"] += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        out["hwm_kib"] += int(line.split()[1])
        except OSError:
            continue
    return out


def reset_hwm(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs). False if not allowed."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def machine_busy() -> float:
    """Seconds of busy CPU on the whole machine (all cores) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    vals = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is already in user.
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + (vals[7] if len(vals) > 7 else 0)
    return busy / CLK_TCK


def self_cpu() -> CpuTimes:
    t = os.times()
    return CpuTimes(t.user, t.system)


# ------------------------------------------------------------------ process registry


class Registry:
    """Servers started by the harness; each in its own process group, listed in the pids file."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.pidfile = os.path.join(workdir, "pids")
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def spawn(self, name: str, argv: list[str], log_path: str, cpu: int | None, env: dict | None = None) -> subprocess.Popen:
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        log.close()
        with open(self.pidfile, "a") as f:
            f.write(f"{proc.pid}\n")
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 3.0) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
        # Children that left the group (none of ours do) would be missed; kill the group anyway.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        self.procs.clear()


def run_measured(argv: list[str], cpu: int | None, timeout: float, env: dict | None = None,
                 stdin_data: bytes | None = None) -> tuple[int, str, str, CpuTimes, float]:
    """Run a load generator to completion; returns (status, stdout, stderr, its CPU, wall seconds)."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    c0 = children_cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(input=stdin_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise HarnessError(f"{argv[0] if cpu is None else argv[3]} did not finish in {timeout:.0f}s")
    except BaseException:
        # Ctrl-C or TERM while it runs: the harness is leaving, so the load generator goes too.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    wall = time.monotonic() - t0
    # Servers are never reaped during a run, so the RUSAGE_CHILDREN difference is this child's CPU.
    used = children_cpu() - c0
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), used, wall


def children_cpu() -> CpuTimes:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuTimes(r.ru_utime, r.ru_stime)
