"""`benches/run --transparent`: the CPU per request of a redirected (transparent) hop against an
explicit one, as a ratio from the same run (DESIGN.md: at most 1.05×).

Two pods (netns.py). The server pod runs only the backend nginx, so the figures isolate the
client side's hop. The client pod runs wrk and one weft-proxy, under the uid `weft-proxy init`
exempts, and the variants go round-robin through the same proxy process:

  direct       wrk -> backend:8081, a port init skips: no proxy on the way
  explicit     wrk -> 127.0.0.1:4150, an upstream port bound to Service `bench` -> backend:8080
  transparent  wrk -> backend:8080, redirected by init's nat rules to the outbound listener 4140,
               which finds Service `bench` by the original destination (its endpoint) -> backend:8080

The method (pinning, warm-up, rotation, noise, medians) is bench.py's; see benches/README.md.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess

import report
from bench import Runner, build, ensure_tools, idle_machine_busy, log, meta, run_workload, summarize
from loadgen import Workload, all_workloads, run_wrk
from netns import NamespacesUnavailable, Pods, remove_stale, unsupported
from procs import HarnessError, Registry, http_get, mem_of, wait_port
from targets import BODIES, SERVER_CPU, Backend, Server, Target, _nginx_common, wait_ready, weft_config

PROXY_UID = 2102  # the uid init exempts from redirection, as the injector's default
APP_PORT = 8080  # the backend's port that the proxy and redirected calls reach
SKIPPED_PORT = 8081  # the same backend on a port init lets through: the direct variant
OUTBOUND_PORT = 4140
UPSTREAM_PORT = 4150
ADMIN_PORT = 4191
VARIANTS = ["direct", "explicit", "transparent"]
DESIGN_LIMIT = 1.05  # DESIGN.md: a transparently redirected hop at most 1.05× an explicit one


class PodBackend(Backend):
    """The harness's backend nginx and bodies, in the server pod, on the pod's address."""

    def __init__(self, reg: Registry, workdir: str, nginx: str, pods: Pods):
        super().__init__(reg, workdir, nginx)
        self.pods = pods
        self.h1_port, self.h2_port = APP_PORT, None

    def start(self) -> None:
        ip = self.pods.server_ip
        conf = _nginx_common(self.work, "backend") + f"""
    open_file_cache max=16 inactive=600s; open_file_cache_valid 600s;
    server {{
        listen {ip}:{APP_PORT} backlog=4096;
        listen {ip}:{SKIPPED_PORT} backlog=4096;
        root {self.work}/www;
    }}
}}
"""
        path = os.path.join(self.work, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        argv = Pods.wrap(self.pods.server) + [self.nginx, "-p", self.work, "-c", path]
        self.proc = self.reg.spawn("backend", argv, self.log_path, SERVER_CPU)
        for port in (APP_PORT, SKIPPED_PORT):
            Pods.run_in(self.pods.server, wait_port, port, 10, self.proc, ip)


class PodProxy(Server):
    """weft-proxy in the client pod under PROXY_UID: an upstream port and the outbound listener,
    both for Service `bench` (the backend's APP_PORT)."""

    name = "weft-proxy"

    def __init__(self, reg: Registry, workdir: str, binary: str, pods: Pods):
        self.reg, self.pods = reg, pods
        self.work = os.path.join(workdir, "weft")
        os.makedirs(self.work, exist_ok=True)
        # A copy the proxy's uid can run wherever the build folder is, and that a rebuild
        # during the run leaves alone.
        self.binary = os.path.join(self.work, "weft-proxy")
        shutil.copy2(binary, self.binary)
        self.log_path = os.path.join(self.work, "stdout.log")

    def start(self) -> None:
        conf = weft_config(
            "bench-client", ADMIN_PORT,
            services=[{"name": "bench", "protocol": "http",
                       "endpoints": [{"address": f"{self.pods.server_ip}:{APP_PORT}"}]}],
            upstreams=[("bench", UPSTREAM_PORT)],
            extra_proxy=f"  outbound: {{listen: 127.0.0.1:{OUTBOUND_PORT}}}\n")
        path = os.path.join(self.work, "weft.yaml")
        with open(path, "w") as f:
            f.write(conf)
        argv = Pods.wrap(self.pods.client, PROXY_UID) + [self.binary, "--config", path]
        self.proc = self.reg.spawn("weft", argv, self.log_path, SERVER_CPU)
        Pods.run_in(self.pods.client, wait_ready, ADMIN_PORT, self.proc, 15, "weft-proxy", self.log_tail)

    def counters(self) -> tuple[float, float]:
        """(HTTP requests answered for Service `bench`, connections passed through unrouted)."""
        _, _, text = Pods.run_in(self.pods.client, http_get, ADMIN_PORT, "/metrics")
        requests = passed = 0.0
        for line in text.decode().splitlines():
            if line.startswith("weft_requests_total{") and 'service="bench"' in line:
                requests += float(line.rsplit(" ", 1)[1])
            elif line.startswith("weft_passthrough_connections_total"):
                passed += float(line.rsplit(" ", 1)[1])
        return requests, passed


class Variant(Target):
    """One way for wrk in the client pod to reach the backend; `proxied` when it goes through the
    proxy, whose CPU is then the variant's (for direct, as in bench.py, the backend's)."""

    def __init__(self, name: str, title: str, host: str, port: int, proxy: PodProxy, proxied: bool):
        self.name, self.title, self.host, self.h1_port = name, title, host, port
        self.proxy, self.proxied = proxy, proxied
        self.proc, self.log_path = proxy.proc, proxy.log_path  # measure() checks the proxy is alive

    def pids(self) -> list[int]:
        return self.proxy.pids() if self.proxied else []

    def check(self) -> None:
        """Every body intact, and the proxy counted them as HTTP requests of `bench` exactly when
        the variant goes through it (a redirect that missed would be a pass-through, or nothing)."""
        before = self.proxy.counters()
        Pods.run_in(self.proxy.pods.client, super().check)
        after = self.proxy.counters()
        want = (float(len(BODIES)) if self.proxied else 0.0, 0.0)
        got = (after[0] - before[0], after[1] - before[1])
        if got != want:
            raise HarnessError(f"{self.name}: the proxy counted {got[0]:.0f} requests and {got[1]:.0f} "
                               f"pass-throughs for {len(BODIES)} GETs (want {want[0]:.0f} and 0)")


class PodRunner(Runner):
    """bench.py's Runner with wrk inside the client pod, and wrk's own CPU per request kept:
    the nat rules' work on the app's packets lands on the app's core, not the proxy's."""

    def __init__(self, args, tools: dict, backend: Backend, pods: Pods):
        super().__init__(args, tools, backend, None)
        self.wrap = tuple(Pods.wrap(pods.client))

    def load(self, t: Target, w: Workload, duration: int) -> dict:
        return run_wrk(self.tools["wrk"], t.h1_port, w, duration, host=t.host, wrap=self.wrap)

    def measure(self, t: Target, w: Workload, duration: int) -> dict:
        res = super().measure(t, w, duration)
        n = res["requests"]
        res["loadgen_cpu_us_per_req"] = res["loadgen_cpu_s"] / n * 1e6 if n else None
        return res


def main(a) -> int:
    why = unsupported()
    if why:
        log(f"transparent bench SKIPPED: {why}")
        return 0
    names = a.targets.split(",") if a.targets else VARIANTS
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise HarnessError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    tools = ensure_tools(["nginx", "wrk"], [], not a.no_install)
    release, build_error = build(a.no_build or bool(a.weft_bin))
    if build_error:
        raise HarnessError(build_error)
    binary = a.weft_bin or os.path.join(release, "weft-proxy")
    if not os.access(binary, os.X_OK):
        raise HarnessError(f"no executable weft-proxy at {binary} (did the release build run?)")

    reg, pods = Registry(a.workdir), Pods(a.workdir)

    def cleanup() -> None:
        reg.stop_all()  # first: a namespace with processes in it outlives its deletion
        pods.remove()

    atexit.register(cleanup)  # also when something escapes the finally below
    failures: list[str] = []
    try:
        stale = remove_stale()
        if stale:
            log(f"removed namespaces left by earlier runs: {', '.join(stale)}")
        try:
            pods.create()
        except NamespacesUnavailable as e:
            log(f"transparent bench SKIPPED: {e}")
            return 0
        log(f"pods: {pods.client} ({pods.client_ip}) and {pods.server} ({pods.server_ip}), veth {'/'.join(pods.veth)}")
        backend = PodBackend(reg, a.workdir, tools["nginx"], pods)
        backend.start()
        init_argv = [binary, "init", "--proxy-uid", str(PROXY_UID), "--proxy-gid", str(PROXY_UID),
                     "--outbound-port", str(OUTBOUND_PORT), "--skip-outbound-ports", str(SKIPPED_PORT)]
        r = subprocess.run(Pods.wrap(pods.client) + init_argv, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise HarnessError(f"`weft-proxy init` in {pods.client} failed (exit {r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-600:]}")
        init_note = "; ".join(l.removeprefix("weft-proxy init: ") for l in r.stderr.strip().splitlines())
        log(f"{pods.client}: {init_note}")
        proxy = PodProxy(reg, a.workdir, binary, pods)
        proxy.start()
        server = f"{pods.server_ip}:{APP_PORT}"
        all_variants = {
            "direct": Variant("direct", f"wrk -> {pods.server_ip}:{SKIPPED_PORT} (port skipped by init)",
                              pods.server_ip, SKIPPED_PORT, proxy, False),
            "explicit": Variant("explicit", f"wrk -> 127.0.0.1:{UPSTREAM_PORT} (upstream port of bench) -> {server}",
                                "127.0.0.1", UPSTREAM_PORT, proxy, True),
            "transparent": Variant("transparent", f"wrk -> {server}, redirected to 127.0.0.1:{OUTBOUND_PORT} "
                                   f"(outbound, by original destination) -> {server}",
                                   pods.server_ip, APP_PORT, proxy, True),
        }
        variants = [all_variants[n] for n in names]
        for v in variants:
            v.check()
            log(f"{v.name}: {v.title}: checked")
        idle_rss = mem_of(proxy.pids())["rss_kib"]
        idle_noise = idle_machine_busy()
        w = next(w for w in all_workloads([], 0) if w.key == "h1-c16")
        runs: list[dict] = []
        run_workload(PodRunner(a, tools, backend, pods), variants, w, a, runs, failures)
    finally:
        cleanup()

    data = {
        "meta": dict(meta(a, tools, None, binary, idle_noise), mode="transparent", init=init_note,
                     pods={"client": pods.client_ip, "server": pods.server_ip, "proxy_uid": PROXY_UID}),
        "variants": {v.name: {"title": v.title, "proxied": v.proxied} for v in variants},
        "proxy_idle_rss_kib": idle_rss,
        "workloads": [vars(w)],
        "runs": runs,
        "failures": failures,
    }
    data["summary"] = summarize(runs)
    data["loadgen_cpu_us_per_req"] = {
        n: statistics.median(r["loadgen_cpu_us_per_req"] for r in runs if r["target"] == n and r.get("ok"))
        for n in names if any(r["target"] == n and r.get("ok") for r in runs)}
    data["ratio"] = ratios(data["summary"].get(w.key, {}), runs)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S") + "-transparent" + ("-quick" if a.quick else "")
    os.makedirs(a.out, exist_ok=True)
    jpath = os.path.join(a.out, f"{stamp}.json")
    with open(jpath, "w") as f:
        json.dump(data, f, indent=1)
    lines = markdown(data)
    mpath = os.path.join(a.out, f"{stamp}.md")
    with open(mpath, "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"wrote {jpath} and {mpath}")
    print("\n".join(lines[lines.index("## Result") + 2:lines.index("## Every run")]))
    if failures:
        log("HARNESS FAILURES:\n  " + "\n  ".join(failures))
        return 1
    return 0


def ratios(s: dict, runs: list[dict]) -> dict | None:
    """transparent / explicit proxy CPU per request: of the medians (user, sys, total), and of
    each repetition's pair (the two ran a few seconds apart, so noise hits both alike)."""
    t, e = (s.get("transparent") or {}).get("cpu_us_per_req"), (s.get("explicit") or {}).get("cpu_us_per_req")
    if not t or not e:
        return None
    out = {part: t[part] / e[part] if e[part] else None for part in ("user", "sys", "total")}
    per_rep = {}
    for r in runs:
        if r.get("ok") and r["target"] in ("explicit", "transparent"):
            per_rep.setdefault(r["rep"], {})[r["target"]] = r["cpu_us_per_req"]["total"]
    out["per_rep"] = [p["transparent"] / p["explicit"] for _, p in sorted(per_rep.items()) if len(p) == 2]
    out["rps"] = s["transparent"]["rps"] / s["explicit"]["rps"]
    out["design_limit"] = DESIGN_LIMIT
    out["met"] = out["total"] <= DESIGN_LIMIT
    return out


def markdown(data: dict) -> list[str]:
    m, f = data["meta"], report._f
    s = data["summary"].get("h1-c16", {})
    L = [f"# Weft transparent hop: {m['date']}{' (quick smoke run: no figure here means anything)' if m['quick'] else ''}",
         "",
         f"Commit `{m['git_commit'][:12]}`{' (work tree dirty)' if m['git_dirty'] else ''}, {m['cores']} cores "
         f"({m['cpu']}), kernel {m['kernel']}. `benches/run --transparent`: two network namespaces joined by a veth "
         f"pair, client pod {m['pods']['client']}, server pod {m['pods']['server']} running only the backend nginx. "
         f"In the client pod, wrk (1 thread, 16 keep-alive connections, 34-byte body) and one weft-proxy (`workers: "
         f"1`, uid {m['pods']['proxy_uid']}, which `weft-proxy init` exempts; init: {m['init'] or '(said nothing)'}). Proxy and "
         f"backend pinned to core {m['server_cpu']}, wrk to core {m['load_cpu']}. {m['reps']} measured "
         f"repetition(s) of {m['duration_s']} s per variant after a {m['warmup_s']} s warm-up, interleaved and "
         f"rotated; medians. Machine busy while idle: {f(m['idle_machine_busy_cores'], 3)} cores; runs where other "
         f"processes used more than {m['noise_threshold_cores']} cores were repeated once.",
         "",
         "Tools: " + ", ".join(f"{k} `{v}`" for k, v in m["versions"].items() if v) + ".",
         "",
         "Proxy CPU µs/req is user + system time of the weft-proxy process over the run divided by the requests "
         "completed with a 2xx (for `direct` the backend's, as in the main harness). wrk's own CPU is shown too: "
         "the nat rules work on the app's packets on the app's core.",
         ""]
    for fl in data["failures"]:
        L.append(f"- **Failure:** {fl}")
    if data["failures"]:
        L.append("")
    L += ["## Result", "",
          "| variant | path | req/s | × direct | p50 µs | p99 µs | CPU µs/req user | sys | **total** | backend µs/req | "
          "wrk µs/req | runs |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    direct = (s.get("direct") or {}).get("rps")
    for name, info in data["variants"].items():
        r = s.get(name)
        if not r:
            L.append(f"| {name} | {info['title']} | no completed run | | | | | | | | | |")
            continue
        c, b = r.get("cpu_us_per_req") or {}, r.get("backend_cpu_us_per_req") or {}
        flag = f" ({r['flagged']} flagged)" if r["flagged"] else ""
        L.append(f"| {name}{'' if info['proxied'] else ' (backend CPU)'} | {info['title']} | {f(r['rps'], 0)} | "
                 f"{report._ratio(r['rps'], direct)} | {f(r.get('p50'), 0)} | {f(r.get('p99'), 0)} | "
                 f"{f(c.get('user'), 2)} | {f(c.get('sys'), 2)} | **{f(c.get('total'), 2)}** | {f(b.get('total'), 2)} | "
                 f"{f(data['loadgen_cpu_us_per_req'].get(name), 2)} | {r['n']}{flag} |")
    L.append("")
    q = data["ratio"]
    if q:
        L.append(f"**transparent / explicit, proxy CPU per request: {q['total']:.3f}×** (user {f(q['user'], 3)}×, "
                 f"sys {f(q['sys'], 3)}×; per repetition {', '.join(f'{x:.3f}' for x in q['per_rep'])}); "
                 f"req/s {q['rps']:.3f}×. DESIGN.md's target ≤ {q['design_limit']:.2f}×: "
                 f"{'✅ met' if q['met'] else '❌ missed'}.")
    else:
        L.append("transparent / explicit: not measured (both variants must complete a run).")
    L += ["", "## Every run", "", "<details><summary>per-run figures</summary>", "", "```"]
    for r in data["runs"]:
        L.append(f"rep {r['rep']} {r['target']:<11} "
                 + (report.run_line(r) + f", wrk {f(r.get('loadgen_cpu_us_per_req'), 2)} µs/req" if r.get("ok")
                    else f"FAILED: {(r.get('error') or '').splitlines()[0] if r.get('error') else ''}")
                 + (" (repeated)" if r.get("repeated") else ""))
    L += ["```", "", "</details>"]
    return L
