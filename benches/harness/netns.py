"""Two "pods" for the transparent bench: network namespaces joined by a veth pair, as in
tests/integration/tests/transparent.rs. Nothing here changes the host's own network: every
command runs under `ip netns exec NS` or `ip -n NS`, and namespaces are checked to be new ones
before anything is programmed in them.

A namespace's name is appended to `<workdir>/netns` before it is created, so `benches/run`
deletes it on exit even when Python itself died; `Pods.remove()` does the same on a normal exit.
Deleting a namespace takes its veth end (so the pair) and its nat rules with it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading

from procs import HarnessError

PREFIX = "weftb-"
CLONE_NEWNET = 0x40000000
IPTABLES = ("iptables-nft-restore", "iptables-legacy-restore")


class NamespacesUnavailable(Exception):
    """This machine cannot make the pods (not root, no `ip netns`): the bench is skipped, not failed."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def unsupported() -> str | None:
    """Why this machine cannot run the transparent bench, if it cannot."""
    if os.geteuid() != 0:
        return "not running as root (network namespaces and nat rules need it)"
    if not os.path.exists("/proc/self/ns/net"):
        return "the kernel has no network namespaces"
    for tool, pkg in (("ip", "iproute2"), ("setpriv", "util-linux")):
        if not _which(tool):
            return f"{tool} is missing (Debian package {pkg})"
    if not any(_which(t) for t in IPTABLES):
        return "neither iptables-nft-restore nor iptables-legacy-restore is installed (Debian package iptables)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise HarnessError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")
    return r


def remove_stale() -> list[str]:
    """Deletes the pods of earlier runs whose harness is gone (killed before it could clean up)."""
    gone = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        tag = name.rsplit("-", 1)[-1]
        if name.startswith(PREFIX) and tag.isdigit() and not os.path.exists(f"/proc/{tag}"):
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


class Pods:
    """A client and a server namespace, `client_ip/24` and `server_ip/24` on the two veth ends."""

    client_ip = "10.201.0.1"
    server_ip = "10.201.0.2"

    def __init__(self, workdir: str):
        tag = os.getpid()
        self.client, self.server = f"{PREFIX}client-{tag}", f"{PREFIX}server-{tag}"
        self.veth = (f"{PREFIX}c{tag}", f"{PREFIX}s{tag}")  # at most 14 characters (IFNAMSIZ is 16)
        self.listfile = os.path.join(workdir, "netns")
        self.created: list[str] = []

    def create(self) -> None:
        host_ns = os.stat("/proc/self/ns/net").st_ino
        for ns in (self.client, self.server):
            with open(self.listfile, "a") as f:
                f.write(ns + "\n")
            r = _ip("netns", "add", ns, check=False)
            if r.returncode != 0:
                raise NamespacesUnavailable(f"`ip netns add` failed: {r.stderr.strip()}")
            self.created.append(ns)
            if self.run_in(ns, lambda: os.stat("/proc/thread-self/ns/net").st_ino) == host_ns:
                raise HarnessError(f"{ns} is the host's network namespace: refusing to program it")
        r = _ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1], check=False)
        if r.returncode != 0:
            raise NamespacesUnavailable(f"cannot create a veth pair: {r.stderr.strip()}")
        for ns, dev, ip in ((self.client, self.veth[0], self.client_ip), (self.server, self.veth[1], self.server_ip)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        """Deletes both namespaces (run it after their processes are stopped). Idempotent."""
        while self.created:
            _ip("netns", "del", self.created.pop(), check=False)

    @staticmethod
    def wrap(ns: str, uid: int | None = None) -> list[str]:
        """The command prefix that runs a program inside `ns`, as `uid` (and gid) when given."""
        out = ["ip", "netns", "exec", ns]
        if uid is not None:
            out += ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
        return out

    @staticmethod
    def run_in(ns: str, fn, *args):
        """Calls fn(*args) on a thread that has joined `ns`, so its sockets are the namespace's;
        the rest of the harness stays in the host's (a namespace belongs to a thread)."""
        out: dict = {}

        def body():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{ns}") as f:
                    if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {ns}")
                out["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                out["error"] = e

        t = threading.Thread(target=body, name=f"in-{ns}")
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["value"]
