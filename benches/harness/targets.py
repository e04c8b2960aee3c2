"""The backend (nginx serving static files) and the targets the load goes through.

All on 127.0.0.1. The backend and every proxy run pinned to core 0 (`SERVER_CPU`), the load
generator to core 1. Each target exposes an HTTP/1.1 port and, where it can, an h2c (HTTP/2 with
prior knowledge) port.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time

from procs import HarnessError, Registry, free_port, http_get, mem_of, tree, wait_port

SERVER_CPU = 0
LOAD_CPU = 1

# Paths the backend serves; workloads pick one.
BODIES = {"small": ("/s.txt", b"hello from the weft bench backend\n"),
          "1k": ("/1k.bin", bytes(range(256)) * 4),
          "64k": ("/64k.bin", bytes(range(256)) * 256)}

# gRPC unary: the backend answers one method with a fixed message and `grpc-status: 0` in the
# trailers (nginx's `add_trailer`), whatever the request. Messages are length-prefixed frames
# (1 byte compressed flag, 4 bytes big-endian length).
GRPC_PATH = "/bench.Bench/Unary"


def grpc_frame(msg: bytes) -> bytes:
    return b"\0" + len(msg).to_bytes(4, "big") + msg


GRPC_REQUEST = grpc_frame(b"\x0a\x08ping-req")
GRPC_RESPONSE = grpc_frame(b"\x0a\x1chello from the grpc backend!")


def _nginx_common(work: str, name: str) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    t = os.path.join(work, "tmp")
    os.makedirs(t, exist_ok=True)
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;
    uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
    sendfile on; tcp_nodelay on;
    keepalive_requests 100000000; keepalive_timeout 600s;
    types {{ text/plain txt; application/octet-stream bin; }}
    default_type application/octet-stream;
"""


def _haproxy_common(extra_global: str = "") -> str:
    """haproxy's global and defaults sections, the same for every haproxy the harness runs."""
    return f"""global
    nbthread 1
    maxconn 8000
{extra_global}
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    option http-keep-alive
    http-reuse always
"""


class Server:
    """A long-running process (tree) started by the harness."""

    name = "?"
    proc: subprocess.Popen | None = None

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return tree(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"


class Backend(Server):
    """nginx serving three static bodies over HTTP/1.1 (`h1_port`) and h2c (`h2_port`)."""

    name = "backend"

    def __init__(self, reg: Registry, workdir: str, nginx: str):
        self.reg, self.nginx = reg, nginx
        self.work = os.path.join(workdir, "backend")
        os.makedirs(os.path.join(self.work, "www"), exist_ok=True)
        for path, body in BODIES.values():
            with open(os.path.join(self.work, "www", path.lstrip("/")), "wb") as f:
                f.write(body)
        with open(os.path.join(self.work, "unary.grpc"), "wb") as f:
            f.write(GRPC_RESPONSE)
        self.grpc_request = os.path.join(self.work, "grpc-request.bin")
        with open(self.grpc_request, "wb") as f:
            f.write(GRPC_REQUEST)
        self.h1_port, self.h2_port = free_port(), free_port()
        self.log_path = os.path.join(self.work, "stdout.log")

    def start(self) -> None:
        # The gRPC method: nginx's static module refuses POST with 405, which error_page turns
        # into a 200 with the file (the request body is read and dropped).
        grpc = f"""        location = {GRPC_PATH} {{
            alias {self.work}/unary.grpc;
            default_type application/grpc;
            etag off;
            add_trailer grpc-status 0;
            error_page 405 =200 $uri;
        }}"""
        conf = _nginx_common(self.work, "backend") + f"""
    open_file_cache max=16 inactive=600s; open_file_cache_valid 600s;
    server {{
        listen 127.0.0.1:{self.h1_port} backlog=4096;
        root {self.work}/www;
    }}
    server {{
        listen 127.0.0.1:{self.h2_port} http2 backlog=4096;
        root {self.work}/www;
{grpc}
    }}
}}
"""
        path = os.path.join(self.work, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = self.reg.spawn("backend", [self.nginx, "-p", self.work, "-c", path], self.log_path, SERVER_CPU)
        wait_port(self.h1_port, 10, self.proc)
        wait_port(self.h2_port, 10, self.proc)


class Target(Server):
    """Something the load generator talks to. `direct` has no process of its own."""

    name = "?"
    title = "?"
    host = "127.0.0.1"  # where the load generator connects (a pod address in the transparent bench)
    h1_port: int = 0
    h2_port: int | None = None
    grpc_port: int | None = None  # h2c port for gRPC unary, where the target has one
    skip_reason: str | None = None  # set when the target cannot run here (not an error)
    error: str | None = None  # set when the target failed to start (an error)
    idle_rss_kib: int | None = None

    def start(self) -> None:
        raise NotImplementedError

    def h2_note(self) -> str | None:
        return None

    def check(self) -> None:
        """One request per body through the target; the body must come back intact."""
        for key, (path, body) in BODIES.items():
            try:
                status, headers, got = http_get(self.h1_port, path, host=self.host)
            except OSError as e:
                raise HarnessError(f"{self.name}: GET {path} failed: {e}") from e
            if status != 200 or got != body:
                extra = headers.get("weft-proxy-error", "")
                raise HarnessError(f"{self.name}: GET {path} gave {status} {extra} with {len(got)} bytes "
                                   f"(want 200 with {len(body)} bytes)")

    def check_grpc(self, nghttp: str) -> None:
        """One gRPC call through the target: 200, the exact message and `grpc-status: 0` in trailers."""
        assert self.grpc_port is not None
        url = f"http://127.0.0.1:{self.grpc_port}{GRPC_PATH}"
        with tempfile.NamedTemporaryFile(suffix=".bin") as req:
            req.write(GRPC_REQUEST)
            req.flush()
            call = [nghttp, "-d", req.name, "-H", "content-type: application/grpc", "-H", "te: trailers"]
            r = subprocess.run(call + ["-n", "-v", url], capture_output=True, timeout=20)
            got = subprocess.run(call + [url], capture_output=True, timeout=20).stdout
        out = r.stdout.decode("latin-1")
        status = re.search(r"recv \(stream_id=\d+\) :status: (\d+)", out)
        # Trailers arrive after the first DATA frame.
        after_data = out.split("recv DATA frame", 1)[1] if "recv DATA frame" in out else ""
        if r.returncode != 0 or not status or status.group(1) != "200" or \
                not re.search(r"recv \(stream_id=\d+\) grpc-status: 0", after_data):
            raise HarnessError(f"{self.name}: gRPC call gave status {status.group(1) if status else '?'}, "
                               f"no grpc-status 0 trailer (nghttp exit {r.returncode}): {out[-600:]}")
        if got != GRPC_RESPONSE:
            raise HarnessError(f"{self.name}: gRPC message came back as {got[:80]!r}, want {GRPC_RESPONSE!r}")

    def record_idle(self) -> None:
        if self.proc is not None:
            self.idle_rss_kib = mem_of(self.pids())["rss_kib"]


class Direct(Target):
    name, title = "direct", "direct (no proxy)"

    def __init__(self, backend: Backend):
        self.backend = backend

    def start(self) -> None:
        self.h1_port, self.h2_port = self.backend.h1_port, self.backend.h2_port
        self.grpc_port = self.backend.h2_port

    def pids(self) -> list[int]:
        return []


class NginxProxy(Target):
    name, title = "nginx", "nginx reverse proxy"

    def __init__(self, reg: Registry, workdir: str, nginx: str, backend: Backend):
        self.reg, self.nginx, self.backend = reg, nginx, backend
        self.work = os.path.join(workdir, "nginx-proxy")
        os.makedirs(self.work, exist_ok=True)
        self.h1_port, self.h2_port, self.grpc_port = free_port(), free_port(), free_port()
        self.log_path = os.path.join(self.work, "stdout.log")

    def h2_note(self) -> str:
        return ("nginx cannot speak HTTP/2 upstream: h2c from the client, HTTP/1.1 keep-alive to the backend "
                "(gRPC: `grpc_pass`, h2c to the backend)")

    def start(self) -> None:
        loc = """        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k; proxy_buffers 8 16k; proxy_busy_buffers_size 32k;
        }"""
        conf = _nginx_common(self.work, "nginx") + f"""
    upstream be {{
        server 127.0.0.1:{self.backend.h1_port};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{self.h1_port} backlog=4096;
{loc}
    }}
    server {{
        listen 127.0.0.1:{self.h2_port} http2 backlog=4096;
{loc}
    }}
    upstream be_grpc {{
        server 127.0.0.1:{self.backend.h2_port};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{self.grpc_port} http2 backlog=4096;
        location / {{ grpc_pass grpc://be_grpc; }}
    }}
}}
"""
        path = os.path.join(self.work, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = self.reg.spawn("nginx", [self.nginx, "-p", self.work, "-c", path], self.log_path, SERVER_CPU)
        wait_port(self.h1_port, 10, self.proc)


class Haproxy(Target):
    name, title = "haproxy", "haproxy reverse proxy"

    def __init__(self, reg: Registry, workdir: str, haproxy: str, backend: Backend):
        self.reg, self.haproxy, self.backend = reg, haproxy, backend
        self.work = os.path.join(workdir, "haproxy")
        os.makedirs(self.work, exist_ok=True)
        self.h1_port, self.h2_port = free_port(), free_port()
        self.grpc_port = self.h2_port  # h2 end to end carries trailers
        self.log_path = os.path.join(self.work, "stdout.log")

    def h2_note(self) -> str:
        return "h2c from the client, h2c to the backend"

    def start(self) -> None:
        conf = _haproxy_common() + f"""
frontend fe_h1
    bind 127.0.0.1:{self.h1_port}
    default_backend be_h1

frontend fe_h2
    bind 127.0.0.1:{self.h2_port} proto h2
    default_backend be_h2

backend be_h1
    server s1 127.0.0.1:{self.backend.h1_port}

backend be_h2
    server s1 127.0.0.1:{self.backend.h2_port} proto h2
"""
        path = os.path.join(self.work, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = self.reg.spawn("haproxy", [self.haproxy, "-db", "-f", path], self.log_path, SERVER_CPU)
        wait_port(self.h1_port, 10, self.proc)


def weft_config(name: str, admin_port: int, services: list[dict], upstreams: list[tuple[str, int]],
                extra_proxy: str = "", extra_docs: str = "") -> str:
    """A static-mode weft-proxy config: one Proxy document plus Service documents (each declares
    one port: `port`, default 80)."""
    ups = "\n".join(f"    - {{service: {svc}, listen: 127.0.0.1:{port}}}" for svc, port in upstreams)
    docs = [f"""apiVersion: weft.dev/v1alpha1
kind: Proxy
metadata: {{name: {name}}}
spec:
  service: {name}
  upstreams:
{ups if ups else "    []"}
  admin: {{listen: 127.0.0.1:{admin_port}}}
  workers: 1
  log: {{level: warn}}
{extra_proxy}"""]
    for s in services:
        eps = ", ".join(
            "{address: %s%s}" % (e["address"], f", identity: \"{e['identity']}\"" if e.get("identity") else "")
            for e in s["endpoints"])
        docs.append(f"""apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: {s['name']}}}
spec:
  ports: [{{port: {s.get('port', 80)}, protocol: {s['protocol']}}}]
  endpoints: [{eps}]
""")
    if extra_docs:
        docs.append(extra_docs)
    return "---\n".join(docs)


# The Mesh document of every mTLS setup here, and a Proxy's `tls` line for the certificate that
# issue_certs wrote into `folder` (relative to the config file's own folder).
MESH_STRICT = "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {mtls: strict}\n"


def tls_spec(folder: str) -> str:
    return f"  tls: {{certFile: {folder}/cert.pem, keyFile: {folder}/key.pem, bundleFile: {folder}/bundle.pem}}\n"


def issue_certs(cli: str, work: str, who: dict[str, str]) -> None:
    """A CA in `work/ca` and one certificate per entry of `who` (folder -> service account), from
    Weft's own CA code (`weft ca init|issue`): `<folder>/cert.pem`, `key.pem`, `bundle.pem`."""
    ca = os.path.join(work, "ca")
    r = subprocess.run([cli, "ca", "init", "--out", ca], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or not os.path.exists(os.path.join(ca, "ca.pem")):
        raise HarnessError("`weft ca init` does not work yet (mTLS between proxies lands with issue 4): "
                           + (r.stderr.strip() or r.stdout.strip())[:300])
    for folder, sa in who.items():
        r = subprocess.run([cli, "ca", "issue", "--ca", ca, "--id", f"spiffe://cluster.local/ns/default/sa/{sa}",
                            "--out", os.path.join(work, folder)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise HarnessError("`weft ca issue` failed: " + (r.stderr.strip() or r.stdout.strip())[:300])


def wait_ready(admin_port: int, proc: subprocess.Popen, timeout: float, what: str, log_tail) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"{what} exited with status {proc.returncode} before it was ready; its log ends:\n"
                               f"{log_tail()}")
        try:
            status, _, _ = http_get(admin_port, "/ready", timeout=1)
            if status == 200:
                return
            last = f"GET /ready gave {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise HarnessError(f"{what} not ready after {timeout:.0f}s ({last}); its log ends:\n{log_tail()}")


class Weft(Target):
    """One weft-proxy hop: upstream ports bound to Service `bench` (HTTP/1.1) and `bench-h2` (h2c)."""

    name, title = "weft", "weft-proxy, one hop"

    def __init__(self, reg: Registry, workdir: str, binary: str, backend: Backend):
        self.reg, self.binary, self.backend = reg, binary, backend
        self.work = os.path.join(workdir, "weft")
        os.makedirs(self.work, exist_ok=True)
        self.h1_port, self.h2_port, self.admin_port = free_port(), free_port(), free_port()
        self.grpc_port = free_port()
        self.log_path = os.path.join(self.work, "stdout.log")

    def h2_note(self) -> str:
        return "h2c from the client, h2c to the backend (Service protocol http2; gRPC: Service protocol grpc)"

    def start(self) -> None:
        if not os.access(self.binary, os.X_OK):
            raise HarnessError(f"weft: no executable at {self.binary} (did the release build run?)")
        conf = weft_config(
            "bench-client", self.admin_port,
            services=[{"name": "bench", "protocol": "http",
                       "endpoints": [{"address": f"127.0.0.1:{self.backend.h1_port}"}]},
                      {"name": "bench-h2", "protocol": "http2",
                       "endpoints": [{"address": f"127.0.0.1:{self.backend.h2_port}"}]},
                      {"name": "bench-grpc", "protocol": "grpc",
                       "endpoints": [{"address": f"127.0.0.1:{self.backend.h2_port}"}]}],
            upstreams=[("bench", self.h1_port), ("bench-h2", self.h2_port), ("bench-grpc", self.grpc_port)])
        path = os.path.join(self.work, "weft.yaml")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = self.reg.spawn("weft", [self.binary, "--config", path], self.log_path, SERVER_CPU)
        wait_ready(self.admin_port, self.proc, 15, "weft-proxy", self.log_tail)
        wait_port(self.h1_port, 5, self.proc)


class PairTarget(Target):
    """A target made of two processes: the client side (`proc`, which the load talks to) and the
    server side (`server`). Its CPU and memory are both processes'."""

    server: subprocess.Popen | None = None

    def pids(self) -> list[int]:
        out = super().pids()
        if self.server is not None and self.server.poll() is None:
            out += tree(self.server.pid)
        return out


class WeftMesh(PairTarget):
    """weft client proxy -> mTLS -> weft server proxy -> backend: the real mesh path.

    Needs `weft ca init|issue` and the proxies' TLS (issue 4). `mode` is `auto` (try, and skip with
    the reason when it cannot start), `on` (a failure is an error) or `off` (skipped)."""

    name, title = "weft-mesh", "weft mesh path (2 proxies, mTLS)"

    def __init__(self, reg: Registry, workdir: str, binary: str, weft_cli: str, backend: Backend, mode: str):
        self.reg, self.binary, self.cli, self.backend, self.mode = reg, binary, weft_cli, backend, mode
        self.work = os.path.join(workdir, "weft-mesh")
        os.makedirs(self.work, exist_ok=True)
        self.h1_port, self.h2_port = free_port(), None
        self.inbound_port, self.admin_c, self.admin_s = free_port(), free_port(), free_port()
        self.log_path = os.path.join(self.work, "client.log")
        self.server_log = os.path.join(self.work, "server.log")
        if mode == "off":
            self.skip_reason = "skipped (--mesh off)"

    def start(self) -> None:
        if not os.access(self.binary, os.X_OK) or not os.access(self.cli, os.X_OK):
            raise HarnessError("weft-mesh: weft-proxy or weft binary missing")
        issue_certs(self.cli, self.work, {"client": "bench-client", "server": "bench"})
        server = weft_config("bench", self.admin_s, services=[{"name": "bench", "protocol": "http", "endpoints": [
            {"address": f"127.0.0.1:{self.backend.h1_port}"}]}], upstreams=[],
            extra_proxy=f"  inbound: {{listen: 127.0.0.1:{self.inbound_port}, app: 127.0.0.1:{self.backend.h1_port}}}\n"
            + tls_spec("server"), extra_docs=MESH_STRICT)
        client = weft_config("bench-client", self.admin_c, services=[{"name": "bench", "protocol": "http", "endpoints": [
            {"address": f"127.0.0.1:{self.inbound_port}", "identity": "spiffe://cluster.local/ns/default/sa/bench"}]}],
            upstreams=[("bench", self.h1_port)], extra_proxy=tls_spec("client"), extra_docs=MESH_STRICT)
        for n, c in (("server.yaml", server), ("client.yaml", client)):
            with open(os.path.join(self.work, n), "w") as f:
                f.write(c)
        self.server = self.reg.spawn("weft-mesh-server", [self.binary, "--config", os.path.join(self.work, "server.yaml")],
                                     self.server_log, SERVER_CPU)
        wait_ready(self.admin_s, self.server, 15, "weft-proxy (mesh server side)",
                   lambda: open(self.server_log, errors="replace").read()[-2000:])
        self.proc = self.reg.spawn("weft-mesh-client", [self.binary, "--config", os.path.join(self.work, "client.yaml")],
                                   self.log_path, SERVER_CPU)
        wait_ready(self.admin_c, self.proc, 15, "weft-proxy (mesh client side)", self.log_tail)
        wait_port(self.h1_port, 5, self.proc)


class HaproxyTls(PairTarget):
    """The non-mesh equivalent of the mesh path: haproxy (client side) -> TLS with client
    certificates, HTTP/2 -> haproxy (server side) -> backend. Both processes on the server core,
    certificates from the same CA code as the mesh."""

    name, title = "haproxy-tls", "haproxy pair with mutual TLS between them"

    def __init__(self, reg: Registry, workdir: str, haproxy: str, weft_cli: str, backend: Backend):
        self.reg, self.haproxy, self.cli, self.backend = reg, haproxy, weft_cli, backend
        self.work = os.path.join(workdir, "haproxy-tls")
        os.makedirs(self.work, exist_ok=True)
        self.h1_port, self.tls_port = free_port(), free_port()
        self.log_path = os.path.join(self.work, "client.log")
        self.server_log = os.path.join(self.work, "server.log")

    def h2_note(self) -> str:
        return "HTTP/1.1 from the client, HTTP/2 over mutual TLS between the two haproxy processes"

    def start(self) -> None:
        if not os.access(self.cli, os.X_OK):
            raise HarnessError("haproxy-tls: the weft binary (for `weft ca`) is missing")
        issue_certs(self.cli, self.work, {"client": "bench-client", "server": "bench"})
        for who in ("client", "server"):  # haproxy wants the certificate and its key in one file
            with open(os.path.join(self.work, f"{who}.pem"), "w") as out:
                for part in ("cert.pem", "key.pem"):
                    with open(os.path.join(self.work, who, part)) as f:
                        out.write(f.read())
        ca = os.path.join(self.work, "ca", "ca.pem")
        common = _haproxy_common("    ssl-default-bind-options ssl-min-ver TLSv1.3\n"
                                 "    ssl-default-server-options ssl-min-ver TLSv1.3\n")
        server = common + f"""
frontend fe_tls
    bind 127.0.0.1:{self.tls_port} ssl crt {self.work}/server.pem ca-file {ca} verify required alpn h2
    default_backend be

backend be
    server s1 127.0.0.1:{self.backend.h1_port}
"""
        client = common + f"""
frontend fe_h1
    bind 127.0.0.1:{self.h1_port}
    default_backend be_tls

backend be_tls
    server s1 127.0.0.1:{self.tls_port} ssl crt {self.work}/client.pem ca-file {ca} verify required alpn h2
"""
        for n, c in (("server.cfg", server), ("client.cfg", client)):
            with open(os.path.join(self.work, n), "w") as f:
                f.write(c)
        self.server = self.reg.spawn("haproxy-tls-server", [self.haproxy, "-db", "-f", os.path.join(self.work, "server.cfg")],
                                     self.server_log, SERVER_CPU)
        wait_port(self.tls_port, 10, self.server)
        self.proc = self.reg.spawn("haproxy-tls-client", [self.haproxy, "-db", "-f", os.path.join(self.work, "client.cfg")],
                                   self.log_path, SERVER_CPU)
        wait_port(self.h1_port, 10, self.proc)
