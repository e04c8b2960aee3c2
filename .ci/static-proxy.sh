#!/usr/bin/env bash
# The weft-proxy binary `weft inject` copies into Job containers (native sidecars off) must run
# in any app image. Built as images/weft-proxy.Dockerfile builds it (glibc, crt-static; a debug
# build here, the linking is the same), it must be statically linked and, as root, run
# `weft-proxy await -- CMD` inside an empty root holding nothing but itself (no libc, no shell,
# like distroless), against a real proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --target "$target" -p weft-proxy --bin weft-proxy
bin="${CARGO_TARGET_DIR:-target}/$target/debug/weft-proxy"

# ldd (libc-bin, always there on Debian) says so for static and static-pie executables.
if ! ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
    ldd "$bin" >&2 || true
    echo "weft-proxy is not statically linked" >&2
    exit 1
fi
echo "weft-proxy ($target, crt-static) is statically linked"

if [ "$(id -u)" != 0 ]; then
    echo "not root: skipping the run in an empty root (chroot needs root)"
    exit 0
fi
work=$(mktemp -d)
proxy_pid=
cleanup() {
    [ -z "$proxy_pid" ] || kill "$proxy_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/root/weft/bin" "$work/config"
cp "$bin" "$work/root/weft/bin/weft-proxy"
port=$((20000 + RANDOM % 20000))
admin=127.0.0.1:$port
cat > "$work/config/proxy.yaml" <<YAML
apiVersion: weft.dev/v1alpha1
kind: Proxy
metadata: {name: job}
spec:
  service: job
  workers: 1
  outbound: {listen: "127.0.0.1:$((port + 1))"}
  admin: {listen: "$admin"}
YAML
"$bin" --config "$work/config/proxy.yaml" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
# The chroot shares the host's network: its await reaches the proxy's admin port, runs the only
# program there is (itself), and shuts the proxy down.
status=0
chroot "$work/root" /weft/bin/weft-proxy await --admin "$admin" --timeout 20s -- /weft/bin/weft-proxy --version \
    || status=$?
if [ "$status" != 0 ]; then
    cat "$work/proxy.log" >&2
    echo "weft-proxy await failed in an empty root (exit $status)" >&2
    exit 1
fi
for _ in $(seq 50); do
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$proxy_pid" 2>/dev/null; then
    echo "the proxy still runs after await's POST /shutdown" >&2
    exit 1
fi
proxy_pid=
echo "weft-proxy await ran in an empty root and shut the proxy down"
