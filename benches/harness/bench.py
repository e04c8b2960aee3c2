"""Weft's load harness: direct vs nginx vs haproxy vs weft-proxy on loopback. Run via `benches/run`.

Method (benches/README.md has the long form): all targets are started once, pinned to core 0 with
the backend; the load generator runs on core 1. For each workload, one short warm-up run per
target is discarded, then the measured repetitions go round-robin across targets (the order
rotates every repetition). For every run the CPU time of the target's processes and of the backend
is read from /proc/<pid>/stat before and after, and divided by the requests completed. Runs during
which other processes on the machine used a noticeable share of a core are flagged and repeated
once. Medians over repetitions are reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.modules.setdefault("bench", sys.modules[__name__])  # transparent.py imports this module, not a second copy

from loadgen import IdleConns, Workload, all_workloads, oha_flags, run_h2load, run_oha, run_wrk  # noqa: E402
from procs import (HarnessError, Registry, children_cpu, cpu_of, machine_busy, mem_of, reset_hwm,  # noqa: E402
                   self_cpu, CpuTimes)
from targets import (LOAD_CPU, SERVER_CPU, Backend, Direct, Haproxy, HaproxyTls, NginxProxy, PairTarget,  # noqa: E402
                     Target, Weft, WeftMesh)
import report  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
ALL_TARGETS = ["direct", "nginx", "haproxy", "weft", "weft-mesh", "haproxy-tls"]
QUICK_TARGETS = ["direct", "haproxy", "weft"]
APT_PACKAGES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "h2load": "nghttp2-client", "nghttp": "nghttp2-client",
                "strace": "strace", "perf": "linux-perf"}
T0 = time.monotonic()


def log(msg: str) -> None:
    el = int(time.monotonic() - T0)
    print(f"[{el // 60:02d}:{el % 60:02d}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ tools and build


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def ensure_tools(needed: list[str], optional: list[str], install: bool) -> dict[str, str]:
    missing = [t for t in needed + optional if not which(t)]
    if missing and install:
        if os.geteuid() != 0:
            log(f"missing {', '.join(missing)} and not root: cannot apt-get install them")
        else:
            pkgs = sorted({APT_PACKAGES[t] for t in missing})
            log(f"installing Debian packages: {' '.join(pkgs)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                log("apt-get update failed: " + r.stderr.strip()[-300:])
            r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *pkgs], env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                log("apt-get install failed: " + r.stderr.strip()[-300:])
    tools = {t: which(t) for t in needed + optional}
    still = [t for t in needed if not tools[t]]
    if still:
        raise HarnessError(f"missing tools that could not be installed: {', '.join(still)} "
                           f"(Debian packages: {' '.join(APT_PACKAGES[t] for t in still)})")
    for t in optional:
        if not tools[t]:
            log(f"note: {t} is missing; what needs it is skipped")
    return {t: p for t, p in tools.items() if p}


def cache_dir() -> str:
    return os.environ.get("WEFT_BENCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "weft-bench"))


def ensure_oha(install: bool) -> tuple[str | None, str]:
    """Path to oha, building it with `cargo install` into the cache when missing."""
    root = os.path.join(cache_dir(), "cargo")
    for cand in (shutil.which("oha"), os.path.join(root, "bin", "oha")):
        if cand and os.access(cand, os.X_OK):
            return cand, ""
    if not install:
        return None, "oha is not installed (and --no-install)"
    log(f"building oha with `cargo install oha --locked --root {root}` (several minutes, once)")
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(cache_dir(), "oha-target"))
    os.makedirs(cache_dir(), exist_ok=True)  # a fresh machine has no cache folder yet
    with open(os.path.join(cache_dir(), "oha-install.log"), "w") as lf:
        r = subprocess.run(["cargo", "install", "oha", "--locked", "--root", root], env=env, stdout=lf,
                           stderr=subprocess.STDOUT)
    oha = os.path.join(root, "bin", "oha")
    shutil.rmtree(env["CARGO_TARGET_DIR"], ignore_errors=True)  # ~600 MiB of intermediate files
    if r.returncode != 0 or not os.access(oha, os.X_OK):
        return None, f"`cargo install oha` failed (log: {os.path.join(cache_dir(), 'oha-install.log')})"
    return oha, ""


def build(skip: bool) -> tuple[str, str | None]:
    """Release-build weft-proxy and weft; returns the target/release folder and an error, if any."""
    meta = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=REPO,
                          capture_output=True, text=True)
    if meta.returncode != 0:
        raise HarnessError("cargo metadata failed: " + meta.stderr.strip()[-300:])
    out = os.path.join(json.loads(meta.stdout)["target_directory"], "release")
    if skip:
        return out, None
    log("cargo build --release -p weft-proxy -p weft-control")
    r = subprocess.run(["cargo", "build", "--release", "-p", "weft-proxy", "-p", "weft-control"], cwd=REPO)
    if r.returncode != 0:
        log("cargo build --release failed: the weft targets cannot run (the others still do)")
        return out, "`cargo build --release -p weft-proxy -p weft-control` failed (see its output above)"
    return out, None


# ------------------------------------------------------------------ measuring one run


def port_for(t: Target, w: Workload) -> int | None:
    if w.grpc:
        return t.grpc_port
    return t.h2_port if w.tool == "h2load" else t.h1_port


class Runner:
    def __init__(self, args, tools: dict, backend: Backend, oha: str | None):
        self.args, self.tools, self.backend, self.oha = args, tools, backend, oha
        self.oha_flags = oha_flags(oha) if oha else None
        self.ksoftirqd = [int(p) for p in os.listdir("/proc") if p.isdigit() and _comm(p).startswith("ksoftirqd")]

    def load(self, t: Target, w: Workload, duration: int) -> dict:
        port = port_for(t, w)
        if port is None:
            raise HarnessError(f"{t.name} has no port for {w.key}")
        if w.tool == "wrk":
            return run_wrk(self.tools["wrk"], port, w, duration)
        if w.tool == "h2load":
            return run_h2load(self.tools["h2load"], port, w, duration, self.backend.grpc_request)
        if w.tool == "oha":
            return run_oha(self.oha, self.oha_flags, port, w, duration)
        raise AssertionError(w.tool)

    def measure(self, t: Target, w: Workload, duration: int) -> dict:
        """One run of workload w against target t, with CPU accounting around it."""
        if t.proc is not None and not t.alive():
            raise HarnessError(f"{t.name} is no longer running; its log ends:\n{t.log_tail()}")
        if w.tool == "idle":
            return self.measure_idle(t, w)
        tp, bp = t.pids(), self.backend.pids()
        hwm_reset = reset_hwm(tp)
        m0, s0 = machine_busy(), self_cpu()
        t0, b0, k0 = cpu_of(tp), cpu_of(bp), cpu_of(self.ksoftirqd)
        w0 = time.monotonic()
        res = self.load(t, w, duration)
        wall = time.monotonic() - w0
        t1, b1, k1 = cpu_of(tp), cpu_of(bp), cpu_of(self.ksoftirqd)
        m1, s1 = machine_busy(), self_cpu()
        dt_, db, dk, ds = t1 - t0, b1 - b0, k1 - k0, s1 - s0
        ours = dt_.total + db.total + dk.total + ds.total + res["loadgen_cpu_s"]
        other = max(0.0, (m1 - m0) - ours)
        n = res["requests"]
        per = lambda c: {"user": c.user / n * 1e6, "sys": c.system / n * 1e6, "total": c.total / n * 1e6} if n else None  # noqa: E731
        mem = mem_of(tp) if tp else mem_of(bp)
        res.update({
            "wall_s": wall,
            "cpu_s": {"user": dt_.user, "sys": dt_.system} if tp else None,
            "backend_cpu_s": {"user": db.user, "sys": db.system},
            "ksoftirqd_cpu_s": dk.total,
            "cpu_us_per_req": per(dt_) if tp else per(db),  # direct: the backend is the whole cost
            "backend_cpu_us_per_req": per(db),
            "both_cpu_us_per_req": per(dt_ + db),
            "other_cpu_cores": other / wall,
            "max_rss_kib": mem["hwm_kib"],
            "rss_kib": mem["rss_kib"],
            "hwm_reset": hwm_reset,
        })
        return res

    def measure_idle(self, t: Target, w: Workload) -> dict:
        tp = t.pids() or self.backend.pids()
        before = mem_of(tp)
        ic = IdleConns(t.h1_port, w)
        w0 = time.monotonic()
        n, bad = ic.open()
        time.sleep(1.0)
        during = mem_of(tp)
        closed = ic.close()
        wall = time.monotonic() - w0
        if bad:
            raise HarnessError(f"{bad} of {n} idle-connection requests did not get 200")
        return {
            "requests": n, "responses": n, "rps": None, "latency_us": {}, "errors": {"closed_by_server": closed},
            "rss_before_kib": before["rss_kib"], "rss_kib": during["rss_kib"], "max_rss_kib": during["hwm_kib"],
            "rss_per_conn_kib": (during["rss_kib"] - before["rss_kib"]) / n if n else None,
            "measured": "backend" if not t.pids() else "proxy",
            "wall_s": wall, "other_cpu_cores": 0.0,
            "cpu_us_per_req": None,
        }


def idle_machine_busy() -> float:
    """Machine noise before we start: the cores other processes use while the harness idles."""
    m0, c0 = machine_busy(), time.monotonic()
    time.sleep(1.0)
    busy = (machine_busy() - m0) / (time.monotonic() - c0)
    log(f"machine busy while the harness is idle: {busy:.3f} cores")
    return busy


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# ------------------------------------------------------------------ strace


def syscalls_per_request(runner: Runner, t: Target, strace: str, seconds: int) -> dict:
    """strace -c -f over the target (or, for direct, the backend) during a short wrk run."""
    pids = t.pids() or runner.backend.pids()
    # nginx's master only sleeps; attach to every process of the tree anyway (cheap).
    out = os.path.join(runner.args.workdir, f"strace-{t.name}.txt")
    argv = [strace, "-c", "-f", "-o", out]
    for p in pids:
        argv += ["-p", str(p)]
    st = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(1.0)
    try:
        w = Workload("strace", "strace", "wrk", 16)
        res = run_wrk(runner.tools["wrk"], t.h1_port, w, seconds)
    finally:
        st.send_signal(signal.SIGINT)
        try:
            st.wait(timeout=20)
        except subprocess.TimeoutExpired:
            st.kill()
            st.wait()
    calls = {}
    with open(out) as f:
        for line in f:
            # "% time  seconds  usecs/call  calls  errors  syscall"; errors may be blank.
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                try:
                    calls[parts[-1]] = int(parts[3])
                except ValueError:
                    continue
    total = sum(calls.values())
    n = res["requests"]
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
    return {"requests": n, "syscalls": total, "per_request": total / n if n else None,
            "top": [[k, v / n] for k, v in top] if n else [], "measured": "backend" if not t.pids() else "proxy"}


# ------------------------------------------------------------------ main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="benches/run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: direct/haproxy/weft, wrk 16 conns, 1 rep, 3 s")
    ap.add_argument("--transparent", action="store_true",
                    help="instead of the suite: a redirected (transparent) hop against an explicit one, in network "
                         "namespaces (harness/transparent.py); writes <date>-transparent.{json,md}")
    ap.add_argument("--targets", help=f"comma list from {','.join(ALL_TARGETS)} "
                                      "(--transparent: from direct,explicit,transparent)")
    ap.add_argument("--workloads", help="comma list of workload keys (see README); default all")
    ap.add_argument("--reps", type=int, help="measured repetitions per (target, workload); default 3 (quick: 1)")
    ap.add_argument("--duration", type=int, help="seconds per measured run; default 10 (quick: 3)")
    ap.add_argument("--warmup", type=int, help="seconds of the discarded warm-up run; default 3 (quick: 1)")
    ap.add_argument("--rates", default="1000,2000,5000,10000", help="fixed rates for oha, req/s")
    ap.add_argument("--idle-conns", type=int, default=1000)
    ap.add_argument("--mesh", choices=["auto", "on", "off"], default="auto",
                    help="weft mTLS mesh target: auto tries it and skips it with the reason if it cannot start")
    ap.add_argument("--noise", type=float, default=0.05,
                    help="flag a run when other processes used more than this many cores on average")
    ap.add_argument("--no-strace", action="store_true", help="skip the syscalls-per-request pass")
    ap.add_argument("--strace-seconds", type=int, default=3)
    ap.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install or cargo install")
    ap.add_argument("--no-oha", action="store_true", help="skip the oha (fixed-rate) workloads")
    ap.add_argument("--weft-bin", help="weft-proxy binary to use instead of the release build")
    ap.add_argument("--out", default=os.path.join(REPO, "benches", "results"), help="where reports go")
    ap.add_argument("--workdir", help="temp folder for configs and logs (benches/run makes one)")
    a = ap.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 3)
    a.duration = a.duration or (3 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
    return a


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if not a.workdir:
        import tempfile
        a.workdir = tempfile.mkdtemp(prefix="weft-bench.")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if (os.cpu_count() or 1) < 2:
        raise HarnessError("needs 2 cores: the servers run on core 0, the load generator on core 1")
    if a.transparent:
        import transparent
        return transparent.main(a)

    target_names = a.targets.split(",") if a.targets else (QUICK_TARGETS if a.quick else ALL_TARGETS)
    for n in target_names:
        if n not in ALL_TARGETS:
            raise HarnessError(f"unknown target {n}; known: {', '.join(ALL_TARGETS)}")
    rates = [int(r) for r in a.rates.split(",") if r]
    workloads = all_workloads(rates, a.idle_conns)
    if a.workloads:
        keys = a.workloads.split(",")
        unknown = [k for k in keys if k not in {w.key for w in workloads}]
        if unknown:
            raise HarnessError(f"unknown workloads {unknown}; known: {', '.join(w.key for w in workloads)}")
        workloads = [w for w in workloads if w.key in keys]
    elif a.quick:
        workloads = [w for w in workloads if w.key == "h1-c16"]
    notes: list[str] = []

    # tools
    needed = ["nginx"] + (["haproxy"] if {"haproxy", "haproxy-tls"} & set(target_names) else [])
    needed += ["wrk"] if any(w.tool == "wrk" for w in workloads) else []
    needed += ["h2load"] if any(w.tool == "h2load" for w in workloads) else []
    needed += ["nghttp"] if any(w.grpc for w in workloads) else []
    optional = [] if a.quick else ["strace", "perf"]
    tools = ensure_tools(needed, optional, not a.no_install)
    oha = None
    if any(w.tool == "oha" for w in workloads):
        if a.no_oha:
            why = "--no-oha"
        elif a.quick:
            why = "--quick does not build oha"
        else:
            oha, why = ensure_oha(not a.no_install)
        if oha is None:
            msg = f"oha workloads skipped: {why}"
            log(msg)
            notes.append(msg)
            workloads = [w for w in workloads if w.tool != "oha"]

    release, build_error = None, None
    if {"weft", "weft-mesh", "haproxy-tls"} & set(target_names):  # haproxy-tls: `weft ca` for its certificates
        release, build_error = build(a.no_build or bool(a.weft_bin))
    weft_bin = a.weft_bin or (os.path.join(release, "weft-proxy") if release else "")
    weft_cli = os.path.join(release, "weft") if release else ""

    reg = Registry(a.workdir)
    failures: list[str] = []
    try:
        backend = Backend(reg, a.workdir, tools["nginx"])
        backend.start()
        backend_idle = mem_of(backend.pids())["rss_kib"]
        targets: list[Target] = []
        for name in target_names:
            t = {"direct": lambda: Direct(backend),
                 "nginx": lambda: NginxProxy(reg, a.workdir, tools["nginx"], backend),
                 "haproxy": lambda: Haproxy(reg, a.workdir, tools["haproxy"], backend),
                 "weft": lambda: Weft(reg, a.workdir, weft_bin, backend),
                 "weft-mesh": lambda: WeftMesh(reg, a.workdir, weft_bin, weft_cli, backend, a.mesh),
                 "haproxy-tls": lambda: HaproxyTls(reg, a.workdir, tools["haproxy"], weft_cli, backend)}[name]()
            targets.append(t)
            if t.skip_reason:
                log(f"{name}: {t.skip_reason}")
                continue
            try:
                if build_error and isinstance(t, (Weft, WeftMesh, HaproxyTls)):
                    raise HarnessError(build_error)
                t.start()
                t.check()
                if t.grpc_port is not None and any(w.grpc for w in workloads):
                    t.check_grpc(tools["nghttp"])
                time.sleep(0.2)
                t.record_idle()
                log(f"{name}: up on 127.0.0.1:{t.h1_port}" + (f" (h2c {t.h2_port})" if t.h2_port else "")
                    + (f", idle RSS {t.idle_rss_kib / 1024:.1f} MiB" if t.idle_rss_kib else ""))
            except HarnessError as e:
                if isinstance(t, WeftMesh) and a.mesh == "auto":
                    t.skip_reason = f"skipped: {str(e).splitlines()[0]} (mTLS mesh path: issue 4)"
                    log(f"{name}: {t.skip_reason}")
                else:
                    t.error = str(e)
                    log(f"{name}: FAILED TO START: {e}")
                    failures.append(f"{name} failed to start: {str(e).splitlines()[0]}")
                if t.proc is not None:
                    reg.stop(t.proc)
                if isinstance(t, PairTarget) and t.server is not None:
                    reg.stop(t.server)
        live = [t for t in targets if not t.skip_reason and not t.error]
        if not live:
            raise HarnessError("no target started")

        idle_noise = idle_machine_busy()

        runner = Runner(a, tools, backend, oha)
        runs: list[dict] = []
        for w in workloads:
            if w.tool == "h2load":
                for t in live:
                    if port_for(t, w) is None:
                        runs.append({"target": t.name, "workload": w.key, "rep": 0, "ok": False, "skipped": True,
                                     "error": "no gRPC port" if w.grpc else "no h2c port"})
            run_workload(runner, [t for t in live if port_for(t, w) is not None], w, a, runs, failures)

        syscalls = {}
        if not a.quick and not a.no_strace and "strace" in tools:
            for t in live:
                if t.error:
                    continue
                try:
                    syscalls[t.name] = syscalls_per_request(runner, t, tools["strace"], a.strace_seconds)
                    log(f"strace {t.name}: {syscalls[t.name]['per_request']:.2f} syscalls per request")
                except (HarnessError, OSError) as e:
                    log(f"strace {t.name}: {e}")

        final_mem = {t.name: mem_of(t.pids()) for t in live if t.pids()}
    finally:
        reg.stop_all()

    data = {
        "meta": meta(a, tools, oha, weft_bin, idle_noise),
        "notes": notes,
        "targets": {t.name: {"title": t.title, "status": "skipped" if t.skip_reason else ("failed" if t.error else "ok"),
                             "reason": t.skip_reason or t.error, "idle_rss_kib": t.idle_rss_kib,
                             "final_mem_kib": final_mem.get(t.name), "h2_note": t.h2_note()} for t in targets},
        "backend": {"idle_rss_kib": backend_idle},
        "workloads": [vars(w) for w in workloads],
        "runs": runs,
        "syscalls": syscalls,
        "failures": failures,
    }
    data["summary"] = summarize(runs)
    data["design_targets"] = report.design_targets(data)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S") + ("-quick" if a.quick else "")
    os.makedirs(a.out, exist_ok=True)
    jpath = os.path.join(a.out, f"{stamp}.json")
    with open(jpath, "w") as f:
        json.dump(data, f, indent=1)
    mpath = report.write(data, a.out, stamp)
    log(f"wrote {jpath} and {mpath}")
    print(report.console(data))
    if failures:
        log("HARNESS FAILURES:\n  " + "\n  ".join(failures))
        return 1
    return 0


def run_workload(runner: Runner, cand: list[Target], w: Workload, a, runs: list[dict], failures: list[str]) -> None:
    """One workload over `cand`: a discarded warm-up run each, then the measured repetitions
    round-robin (the order rotated every repetition), a noisy run repeated once. Appends to
    `runs` and `failures`; a target that died is marked (`t.error`) and left out from then on."""
    if w.tool != "idle" and a.warmup > 0:
        for t in cand:
            if t.error:
                continue
            try:
                runner.measure(t, w, a.warmup)
            except HarnessError as e:
                log(f"{w.key} warm-up {t.name}: {e}")
    for rep in range(1 if w.tool == "idle" else a.reps):
        order = cand[rep % len(cand):] + cand[:rep % len(cand)] if cand else []
        for t in order:
            if t.error:
                continue
            rec = one_run(runner, t, w, a, rep)
            if rec.get("flagged") and w.tool != "idle" and not a.quick:
                log(f"  {t.name}: other processes used {rec['other_cpu_cores']:.2f} cores: repeating once")
                again = one_run(runner, t, w, a, rep)
                again["repeated"] = True
                rec = again
            runs.append(rec)
            if not rec["ok"]:
                failures.append(f"{w.key} {t.name} rep {rep + 1}: {rec['error'].splitlines()[0]}")
                if t.proc is not None and not t.alive():
                    t.error = f"{t.name} died during {w.key}: {rec['error']}"
                    failures.append(t.error.splitlines()[0])


def one_run(runner: Runner, t: Target, w: Workload, a, rep: int) -> dict:
    rec = {"target": t.name, "workload": w.key, "rep": rep + 1}
    try:
        res = runner.measure(t, w, a.duration)
    except HarnessError as e:
        rec.update(ok=False, error=str(e))
        log(f"{w.key} rep {rep + 1} {t.name}: ERROR {e}")
        return rec
    rec.update(res)
    if res["requests"] == 0:
        rec.update(ok=False, error=f"zero requests completed with a 2xx (errors: {res.get('errors')})")
    else:
        rec["ok"] = True
    rec["flagged"] = rec.get("other_cpu_cores", 0) > a.noise
    log(f"{w.key} rep {rep + 1} {t.name}: " + report.run_line(rec))
    return rec


def summarize(runs: list[dict]) -> dict:
    """Medians per (workload, target) over the measured runs that completed."""
    out: dict = {}
    groups: dict = {}
    for r in runs:
        if r.get("ok"):
            groups.setdefault((r["workload"], r["target"]), []).append(r)
    for (wk, tn), rs in groups.items():
        def med(get):
            vals = [v for v in (get(r) for r in rs) if v is not None]
            return statistics.median(vals) if vals else None
        s = {"n": len(rs), "flagged": sum(1 for r in rs if r.get("flagged"))}
        s["rps"] = med(lambda r: r.get("rps"))
        for p in ("p50", "p90", "p99", "p999", "mean"):
            s[p] = med(lambda r, p=p: (r.get("latency_us") or {}).get(p))
        for key in ("cpu_us_per_req", "backend_cpu_us_per_req", "both_cpu_us_per_req"):
            s[key] = {part: med(lambda r, key=key, part=part: (r.get(key) or {}).get(part))
                      for part in ("user", "sys", "total")} if any(r.get(key) for r in rs) else None
        cpus = [r["cpu_us_per_req"]["total"] for r in rs if r.get("cpu_us_per_req")]
        s["cpu_spread"] = [min(cpus), max(cpus)] if cpus else None
        for key in ("max_rss_kib", "rss_kib", "rss_before_kib", "rss_per_conn_kib", "other_cpu_cores"):
            s[key] = med(lambda r, key=key: r.get(key))
        s["errors"] = rs[-1].get("errors")
        out.setdefault(wk, {})[tn] = s
    return out


def meta(a, tools: dict, oha: str | None, weft_bin: str, idle_noise: float | None) -> dict:
    def ver(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    git = lambda *args: subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": a.quick, "reps": a.reps, "duration_s": a.duration, "warmup_s": a.warmup,
        "server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU, "noise_threshold_cores": a.noise,
        "idle_machine_busy_cores": idle_noise,
        "kernel": platform.release(), "cpu": cpu_model, "cores": os.cpu_count(),
        "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
        "weft_proxy": weft_bin,
        "versions": {
            "nginx": ver([tools["nginx"], "-v"]),
            "haproxy": ver([tools["haproxy"], "-v"]) if "haproxy" in tools else None,
            "wrk": ver([tools["wrk"], "-v"]) if "wrk" in tools else None,
            "h2load": ver([tools["h2load"], "--version"]) if "h2load" in tools else None,
            "oha": ver([oha, "--version"]) if oha else None,
        },
    }


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    try:
        sys.exit(main(sys.argv[1:]))
    except HarnessError as e:
        log(f"HARNESS ERROR: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
