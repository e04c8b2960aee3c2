"""`benches/run --transparent`: the CPU per request of a redirected (transparent) hop against an
explicit one, as a ratio from the same run (DESIGN.md: at most 1.05×).

Two pods (netns.py). The server pod runs only the backend nginx, so the figures isolate the
client side's hop. The client pod runs wrk and one weft-proxy, under the uid `weft-proxy init`
exempts, and the variants go round-robin through the same proxy process:

  direct       wrk -> backend:8081, a port init skips: no proxy on the way
  explicit     wrk -> 127.0.0.1:4150, an upstream port bound to Service `bench` -> backend:8080
  transparent  wrk -> backend:8080, redirected by init's nat rules to the outbound listener 4140,
               which finds Service `bench` by the original destination (its endpoint) -> backend:8080

With `--mesh` (auto: when certificates can be made) a server proxy joins the server pod, and two
more variants go the mesh path, client proxy -> mTLS -> server proxy (inbound 4143) -> backend:8080:

  mesh-explicit     wrk -> 127.0.0.1:4151, an upstream port bound to Service `bench-mesh`
  mesh-transparent  wrk -> server pod:8082, redirected to 4140; `bench-mesh` declares port 8082 and
                    its endpoint is the server proxy (nothing listens on 8082: only a redirect works)

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
from targets import (BODIES, MESH_STRICT, SERVER_CPU, Backend, Server, Target, _nginx_common, issue_certs, tls_spec,
                     wait_ready, weft_config)

PROXY_UID = 2102  # the uid init exempts from redirection, as the injector's default
APP_PORT = 8080  # the backend's port that the proxies and redirected calls reach
SKIPPED_PORT = 8081  # the same backend on a port init lets through: the direct variant
MESH_PORT = 8082  # the port `bench-mesh` declares: what the app calls to go the mesh path
OUTBOUND_PORT = 4140
INBOUND_PORT = 4143
UPSTREAM_PORT, MESH_UPSTREAM_PORT = 4150, 4151
ADMIN_PORT = 4191
SERVER_ID = "spiffe://cluster.local/ns/default/sa/bench"
VARIANTS = ["direct", "explicit", "transparent", "mesh-explicit", "mesh-transparent"]
MESH_VARIANTS = VARIANTS[3:]
PAIRS = [("transparent", "explicit"), ("mesh-transparent", "mesh-explicit")]  # the ratios reported
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
    """A weft-proxy in one pod under PROXY_UID, from the config text it is given."""

    def __init__(self, reg: Registry, work: str, binary: str, ns: str, name: str, config: str):
        self.reg, self.binary, self.ns, self.name = reg, binary, ns, name
        self.config = os.path.join(work, f"{name}.yaml")
        with open(self.config, "w") as f:
            f.write(config)
        self.log_path = os.path.join(work, f"{name}.log")

    def start(self) -> None:
        argv = Pods.wrap(self.ns, PROXY_UID) + [self.binary, "--config", self.config]
        self.proc = self.reg.spawn(self.name, argv, self.log_path, SERVER_CPU)
        Pods.run_in(self.ns, wait_ready, ADMIN_PORT, self.proc, 15, self.name, self.log_tail)

    def counters(self) -> tuple[float, float]:
        """(HTTP requests answered, connections passed through unrouted)."""
        _, _, text = Pods.run_in(self.ns, http_get, ADMIN_PORT, "/metrics")
        requests = passed = 0.0
        for line in text.decode().splitlines():
            if line.startswith("weft_requests_total{"):
                requests += float(line.rsplit(" ", 1)[1])
            elif line.startswith("weft_passthrough_connections_total"):
                passed += float(line.rsplit(" ", 1)[1])
        return requests, passed


def proxy_configs(pods: Pods, mesh: bool) -> tuple[str, str]:
    """The client proxy's config and, with `mesh`, the server proxy's (else "")."""
    services = [{"name": "bench", "protocol": "http", "endpoints": [{"address": f"{pods.server_ip}:{APP_PORT}"}]}]
    upstreams = [("bench", UPSTREAM_PORT)]
    extra, docs = f"  outbound: {{listen: 127.0.0.1:{OUTBOUND_PORT}}}\n", ""
    server = ""
    if mesh:
        services.append({"name": "bench-mesh", "protocol": "http", "port": MESH_PORT,
                         "endpoints": [{"address": f"{pods.server_ip}:{INBOUND_PORT}", "identity": SERVER_ID}]})
        upstreams.append(("bench-mesh", MESH_UPSTREAM_PORT))
        extra, docs = extra + tls_spec("client"), MESH_STRICT
        app = f"{pods.server_ip}:{APP_PORT}"
        server = weft_config("bench", ADMIN_PORT, services=[services[0]], upstreams=[],
                             extra_proxy=f"  inbound: {{listen: {pods.server_ip}:{INBOUND_PORT}, app: {app}}}\n"
                             + tls_spec("server"), extra_docs=MESH_STRICT)
    client = weft_config("bench-client", ADMIN_PORT, services=services, upstreams=upstreams, extra_proxy=extra,
                         extra_docs=docs)
    return client, server


def give_to_proxy(folder: str) -> None:
    """The proxies' uid must read their key files, which `weft ca` makes private to the owner."""
    for root, dirs, files in os.walk(folder):
        for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
            os.chown(n, PROXY_UID, PROXY_UID)


class Variant(Target):
    """One way for wrk in the client pod to reach the backend, through the proxies in `via`, whose
    CPU is then the variant's (none for direct: as in bench.py, the backend's)."""

    def __init__(self, name: str, title: str, host: str, port: int, via: list[PodProxy], every: list[PodProxy]):
        self.name, self.title, self.host, self.h1_port = name, title, host, port
        self.via, self.every = via, every
        first = (via or every)[0]
        self.proc, self.log_path = first.proc, first.log_path  # measure() checks the proxy is alive

    def pids(self) -> list[int]:
        return [p for proxy in self.via for p in proxy.pids()]

    def check(self) -> None:
        """Every body intact, and counted as HTTP requests by exactly the proxies on the way, with
        no pass-through (a redirect that missed would be one, or reach nothing)."""
        before = [p.counters() for p in self.every]
        Pods.run_in(self.every[0].ns, super().check)  # the client proxy's pod, where wrk runs
        for p, (r0, p0) in zip(self.every, before):
            r1, p1 = p.counters()
            want = float(len(BODIES)) if p in self.via else 0.0
            if (r1 - r0, p1 - p0) != (want, 0.0):
                raise HarnessError(f"{self.name}: {p.name} counted {r1 - r0:.0f} requests and {p1 - p0:.0f} "
                                   f"pass-throughs for {len(BODIES)} GETs (want {want:.0f} and 0)")


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


def run_init(pods: Pods, binary: str) -> str:
    """`weft-proxy init` in the client pod; returns what it said (the iptables backend it chose)."""
    argv = [binary, "init", "--proxy-uid", str(PROXY_UID), "--proxy-gid", str(PROXY_UID),
            "--outbound-port", str(OUTBOUND_PORT), "--skip-outbound-ports", str(SKIPPED_PORT)]
    r = subprocess.run(Pods.wrap(pods.client) + argv, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise HarnessError(f"`weft-proxy init` in {pods.client} failed (exit {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-600:]}")
    said = "; ".join(line.removeprefix("weft-proxy init: ") for line in r.stderr.strip().splitlines())
    log(f"{pods.client}: {said}")
    return said


def start_proxies(a, reg: Registry, pods: Pods, binary: str, release: str, mesh: bool,
                  notes: list[str]) -> list[PodProxy]:
    """The client proxy and, for the mesh variants, the server proxy (when `--mesh auto` can make
    their certificates; otherwise a note says why they are left out)."""
    work = os.path.join(a.workdir, "weft")
    os.makedirs(work, exist_ok=True)
    # A copy the proxies' uid can run wherever the build folder is, and that a rebuild during
    # the run leaves alone.
    shutil.copy2(binary, os.path.join(work, "weft-proxy"))
    binary = os.path.join(work, "weft-proxy")
    if mesh:
        try:
            issue_certs(os.path.join(release, "weft"), work, {"client": "bench-client", "server": "bench"})
        except HarnessError as e:
            if a.mesh == "on":
                raise
            mesh = False
            notes.append(f"mesh variants skipped: {str(e).splitlines()[0]}")
            log(notes[-1])
    give_to_proxy(work)
    client_cfg, server_cfg = proxy_configs(pods, mesh)
    proxies = [PodProxy(reg, work, binary, pods.client, "client-proxy", client_cfg)]
    if mesh:
        proxies.append(PodProxy(reg, work, binary, pods.server, "server-proxy", server_cfg))
    for p in proxies:
        p.start()
    return proxies


def make_variants(pods: Pods, proxies: list[PodProxy]) -> list[Variant]:
    """Every variant the proxies allow (the mesh ones need the server proxy), in VARIANTS order."""
    app, mesh_app = f"{pods.server_ip}:{APP_PORT}", f"{pods.server_ip}:{MESH_PORT}"
    redirected = f"redirected to 127.0.0.1:{OUTBOUND_PORT} (outbound, by original destination)"
    mtls = f"mTLS -> server proxy {pods.server_ip}:{INBOUND_PORT} -> {app}"
    client = proxies[:1]
    out = [Variant("direct", f"wrk -> {pods.server_ip}:{SKIPPED_PORT} (port skipped by init)",
                   pods.server_ip, SKIPPED_PORT, [], proxies),
           Variant("explicit", f"wrk -> 127.0.0.1:{UPSTREAM_PORT} (upstream port of bench) -> {app}",
                   "127.0.0.1", UPSTREAM_PORT, client, proxies),
           Variant("transparent", f"wrk -> {app}, {redirected} -> {app}", pods.server_ip, APP_PORT, client, proxies)]
    if len(proxies) > 1:
        out += [Variant("mesh-explicit", f"wrk -> 127.0.0.1:{MESH_UPSTREAM_PORT} (upstream port of bench-mesh) -> {mtls}",
                        "127.0.0.1", MESH_UPSTREAM_PORT, proxies, proxies),
                Variant("mesh-transparent", f"wrk -> {mesh_app}, {redirected} -> {mtls}", pods.server_ip, MESH_PORT,
                        proxies, proxies)]
    return out


def main(a) -> int:
    why = unsupported()
    if why:
        log(f"transparent bench SKIPPED: {why}")
        return 0
    names = a.targets.split(",") if a.targets else [v for v in VARIANTS if a.mesh != "off" or v not in MESH_VARIANTS]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise HarnessError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    notes: list[str] = []
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
        init_note = run_init(pods, binary)
        proxies = start_proxies(a, reg, pods, binary, release, any(n in MESH_VARIANTS for n in names), notes)
        mesh = len(proxies) > 1
        variants = [v for v in make_variants(pods, proxies) if v.name in names]
        for v in variants:
            v.check()
            log(f"{v.name}: {v.title}: checked")
        idle_rss = {p.name: mem_of(p.pids())["rss_kib"] for p in proxies}
        idle_noise = idle_machine_busy()
        w = next(w for w in all_workloads([], 0) if w.key == "h1-c16")
        runs: list[dict] = []
        run_workload(PodRunner(a, tools, backend, pods), variants, w, a, runs, failures)
    finally:
        cleanup()

    data = {
        "meta": dict(meta(a, tools, None, binary, idle_noise), mode="transparent", init=init_note, mesh=mesh,
                     pods={"client": pods.client_ip, "server": pods.server_ip, "proxy_uid": PROXY_UID}),
        "variants": {v.name: {"title": v.title, "proxies": [p.name for p in v.via]} for v in variants},
        "proxy_idle_rss_kib": idle_rss,
        "notes": notes,
        "workloads": [vars(w)],
        "runs": runs,
        "failures": failures,
    }
    data["summary"] = summarize(runs)
    measured = {v.name for v in variants}
    data["loadgen_cpu_us_per_req"] = {
        n: statistics.median(r["loadgen_cpu_us_per_req"] for r in runs if r["target"] == n and r.get("ok"))
        for n in measured if any(r["target"] == n and r.get("ok") for r in runs)}
    data["ratios"] = {f"{t}/{e}": ratio(data["summary"].get(w.key, {}), runs, t, e) for t, e in PAIRS
                      if t in measured and e in measured}
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


def ratio(s: dict, runs: list[dict], t: str, e: str) -> dict | None:
    """t / e proxy CPU per request: of the medians (user, sys, total), and of each repetition's
    pair (both ran within one round of the variants, so slow noise tends to hit both alike)."""
    ct, ce = (s.get(t) or {}).get("cpu_us_per_req"), (s.get(e) or {}).get("cpu_us_per_req")
    if not ct or not ce:
        return None
    out = {part: ct[part] / ce[part] if ce[part] else None for part in ("user", "sys", "total")}
    per_rep: dict = {}
    for r in runs:
        if r.get("ok") and r["target"] in (t, e):
            per_rep.setdefault(r["rep"], {})[r["target"]] = r["cpu_us_per_req"]["total"]
    out["per_rep"] = [p[t] / p[e] for _, p in sorted(per_rep.items()) if len(p) == 2]
    out["rps"] = s[t]["rps"] / s[e]["rps"]
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
         f"pair, client pod {m['pods']['client']}, server pod {m['pods']['server']} with the backend nginx"
         + (" and, for the mesh variants only, a server weft-proxy (inbound, strict mTLS, certificates from `weft ca`)"
            if m["mesh"] else " only") +
         f". In the client pod, wrk (1 thread, 16 keep-alive connections, 34-byte body) and the client weft-proxy "
         f"(uid {m['pods']['proxy_uid']}, which `weft-proxy init` exempts; init: {m['init'] or '(said nothing)'}); "
         f"every proxy has `workers: 1`. Proxies and "
         f"backend pinned to core {m['server_cpu']}, wrk to core {m['load_cpu']}. {m['reps']} measured "
         f"repetition(s) of {m['duration_s']} s per variant after a {m['warmup_s']} s warm-up, interleaved and "
         f"rotated; medians. Machine busy while idle: {f(m['idle_machine_busy_cores'], 3)} cores; runs where other "
         f"processes used more than {m['noise_threshold_cores']} cores were repeated once.",
         "",
         "Tools: " + ", ".join(f"{k} `{v}`" for k, v in m["versions"].items() if v) + ".",
         "",
         "CPU µs/req is user + system time of the proxies on the way (both for the mesh variants) over the run "
         "divided by the requests completed with a 2xx; for `direct` the backend's, as in the main harness. "
         "wrk's own CPU is shown too: the nat rules work on the app's packets on the app's core.",
         ""]
    for n in data["notes"]:
        L.append(f"- Note: {n}")
    for fl in data["failures"]:
        L.append(f"- **Failure:** {fl}")
    if data["notes"] or data["failures"]:
        L.append("")
    L += ["## Result", "",
          "| variant | path | req/s | × direct | p50 µs | p99 µs | CPU µs/req user | sys | **total** | backend µs/req | "
          "wrk µs/req | other procs, cores | runs |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    direct = (s.get("direct") or {}).get("rps")
    for name, info in data["variants"].items():
        r = s.get(name)
        if not r:
            L.append(f"| {name} | {info['title']} | no completed run | | | | | | | | | | |")
            continue
        c, b = r.get("cpu_us_per_req") or {}, r.get("backend_cpu_us_per_req") or {}
        flag = f" ({r['flagged']} flagged)" if r["flagged"] else ""
        who = " (backend CPU)" if not info["proxies"] else (" (both proxies)" if len(info["proxies"]) > 1 else "")
        L.append(f"| {name}{who} | {info['title']} | {f(r['rps'], 0)} | "
                 f"{report._ratio(r['rps'], direct)} | {f(r.get('p50'), 0)} | {f(r.get('p99'), 0)} | "
                 f"{f(c.get('user'), 2)} | {f(c.get('sys'), 2)} | **{f(c.get('total'), 2)}** | {f(b.get('total'), 2)} | "
                 f"{f(data['loadgen_cpu_us_per_req'].get(name), 2)} | {f(r.get('other_cpu_cores'), 2)} | {r['n']}{flag} |")
    L += ["", "Medians are taken per column, so user and sys need not add up to the total, nor their ratios "
          "bracket its ratio. `other procs` is the median of the cores other processes used during the runs.", ""]
    for pair, q in data["ratios"].items():
        t, e = pair.split("/")
        if q:
            L.append(f"- **{t} / {e}, proxy CPU per request: {q['total']:.3f}×** (user {f(q['user'], 3)}×, "
                     f"sys {f(q['sys'], 3)}×; per repetition {', '.join(f'{x:.3f}' for x in q['per_rep'])}); "
                     f"req/s {q['rps']:.3f}×. DESIGN.md's target for a redirected hop, ≤ {q['design_limit']:.2f}×: "
                     f"{'✅ met' if q['met'] else '❌ missed'}.")
        else:
            L.append(f"- {t} / {e}: not measured (both variants must complete a run).")
    L += ["", "## Every run", "", "<details><summary>per-run figures</summary>", "", "```"]
    for r in data["runs"]:
        L.append(f"rep {r['rep']} {r['target']:<11} "
                 + (report.run_line(r) + f", wrk {f(r.get('loadgen_cpu_us_per_req'), 2)} µs/req" if r.get("ok")
                    else f"FAILED: {(r.get('error') or '').splitlines()[0] if r.get('error') else ''}")
                 + (" (repeated)" if r.get("repeated") else ""))
    L += ["```", "", "</details>"]
    return L
