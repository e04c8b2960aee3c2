#!/usr/bin/env bash
# Installs kubernetes-validate if missing (PyPI; its Kubernetes schemas ship inside the package,
# so validation itself is offline) and validates `weft inject`'s golden outputs for Kubernetes
# 1.29 (the first with native sidecars on by default) and 1.33, strictly (unknown fields fail).
# Usage: .ci/kubernetes-validate.sh [FILE...]   (default: control-plane/tests/inject/out/*.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."

ensure_kubernetes_validate() {
    command -v kubernetes-validate >/dev/null 2>&1 && return
    # Debian's system pip refuses without --break-system-packages (PEP 668); others take it as is.
    python3 -m pip install -q kubernetes-validate 2>/dev/null \
        || python3 -m pip install -q --break-system-packages kubernetes-validate
    command -v kubernetes-validate >/dev/null 2>&1 || { echo "kubernetes-validate is not on PATH after pip install" >&2; exit 1; }
}
ensure_kubernetes_validate

files=("$@")
[ "${#files[@]}" -gt 0 ] || files=(control-plane/tests/inject/out/*.yaml)
for version in 1.29.0 1.33.0; do
    kubernetes-validate -k "$version" --strict --quiet "${files[@]}"
    echo "kubernetes-validate $version --strict: ${#files[@]} files valid"
done

# The check is real: before 1.28 an init container has no restartPolicy, so the native sidecar
# must be rejected there.
if [ "$#" -eq 0 ]; then
    if kubernetes-validate -k 1.27.0 --strict --quiet control-plane/tests/inject/out/deployment.yaml >/dev/null 2>&1; then
        echo "kubernetes-validate accepted a native sidecar for 1.27: the validation is not checking" >&2
        exit 1
    fi
    echo "kubernetes-validate 1.27.0 rejects the native sidecar, as it should"
fi
