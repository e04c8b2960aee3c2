#!/usr/bin/env bash
# Checks the chart's alert rules and dashboard with promtool (Debian package `prometheus`):
# rules parse, each alert's test case passes, every dashboard query parses as PromQL, and the
# dashboard's structure holds (unique ids, a ${datasource} variable, a refId on each target).
# Metric names are checked against docs/reference.md, the source of truth.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
files=charts/weft/files
promtool check rules "$files/alerts.yaml"
(cd "$files" && promtool test rules alerts_test.yaml)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$files" "$tmp/dashboard-rules.yaml" <<'PY'
import json, re, sys
files, out = sys.argv[1], sys.argv[2]
dash = json.load(open(f"{files}/grafana-dashboard.json"))
ids = [p["id"] for p in dash["panels"]]
assert len(ids) == len(set(ids)), f"duplicate panel ids {ids}"
variables = {v["name"]: v for v in dash["templating"]["list"]}
assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
exprs = []
for p in dash["panels"]:
    g = p["gridPos"]
    assert g["x"] + g["w"] <= 24, f"panel {p['title']} is wider than the grid"
    assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']} hard-codes its data source"
    for t in p["targets"]:
        assert t["refId"] and t["expr"], p["title"]
        exprs.append(t["expr"])
# Substitute Grafana's variables so promtool can parse each query as a recording rule.
subst = lambda e: e.replace("$__rate_interval", "1m").replace("$service", ".+")
rules = [{"record": f"weft:dashboard:query{i}", "expr": subst(e)} for i, e in enumerate(exprs)]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(out, "w"))
# Every weft_* metric the dashboard and the alerts use is documented.
reference = open("docs/reference.md").read()
documented = set(re.findall(r"weft_[a-z_]+", reference))
used = set(re.findall(r"weft_[a-z_]+", " ".join(exprs) + open(f"{files}/alerts.yaml").read()))
strip = lambda m: re.sub(r"_(bucket|sum|count)$", "", m)
missing = sorted(m for m in used if strip(m) not in documented and not m.startswith("weft_dashboard"))
assert not missing, f"metrics not in docs/reference.md: {missing}"
print(f"dashboard: {len(dash['panels'])} panels, {len(exprs)} queries; {len(used)} metric names all documented")
PY
promtool check rules "$tmp/dashboard-rules.yaml"
