#!/usr/bin/env python3
"""Validates policy documents against the CRDs' openAPIV3Schema and the editors' JSON Schema.

Usage: policy-schema.py RENDERED_CHART JSON_SCHEMA --valid FILE... --invalid FILE...

RENDERED_CHART is `helm template --include-crds` output: the weft.dev CRDs are taken from it as
the chart installs them. Every --valid document must pass both schemas; every --invalid file
(one document each) must be refused by both. `weft check` is run on the same files by the
caller (.ci/helm.sh), so the two checks are held to the same answers.

The API server prunes unknown fields and, under strict field validation (kubectl's default),
refuses them; a structural schema cannot say `additionalProperties: false`, so this check adds
it to every object that lists its properties, as the API server behaves. `metadata` is
Kubernetes' own and stays open (Weft narrows only its name).
"""
import copy
import sys

import jsonschema
import yaml

API_VERSION = "weft.dev/v1alpha1"


def strict(schema):
    """The CRD schema with unknown fields refused, as under strict field validation."""
    schema = copy.deepcopy(schema)

    def close(node):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
            for child in node["properties"].values():
                close(child)
        if node.get("type") == "array":
            close(node["items"])

    close(schema["properties"]["spec"])
    return schema


def load_crds(rendered):
    crds = {}
    for doc in yaml.safe_load_all(open(rendered)):
        if doc and doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["group"] == "weft.dev":
            version = next(v for v in doc["spec"]["versions"] if v["name"] == "v1alpha1")
            assert version["served"] and version["storage"], doc["metadata"]["name"]
            schema = version["schema"]["openAPIV3Schema"]
            crds[doc["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(strict(schema))
    return crds


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def problems(doc, crds, editor):
    """(problems by the CRD schema, problems by the editors' JSON Schema)."""
    by_editor = [f"{'.'.join(map(str, e.absolute_path)) or '<document>'}: {e.message}" for e in editor.iter_errors(doc)]
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in crds:
        return [f"kind: no weft.dev CRD for {kind!r}"], by_editor
    # As applied to the cluster: apiVersion written out (files may leave it out).
    as_object = dict(doc, apiVersion=doc.get("apiVersion", API_VERSION))
    by_crd = [
        f"{'.'.join(map(str, e.absolute_path)) or '<object>'}: {e.message}" for e in crds[kind].iter_errors(as_object)
    ]
    return by_crd, by_editor


def main(argv):
    rendered, schema_file = argv[0], argv[1]
    valid = argv[argv.index("--valid") + 1 : argv.index("--invalid")]
    invalid = argv[argv.index("--invalid") + 1 :]
    crds = load_crds(rendered)
    expected = {"Service", "Route", "TrafficPolicy", "AuthorizationPolicy", "Mesh", "Proxy"}
    if set(crds) != expected:
        print(f"the chart's weft.dev CRDs are {sorted(crds)}, expected {sorted(expected)}", file=sys.stderr)
        return 1
    editor_schema = yaml.safe_load(open(schema_file))
    jsonschema.Draft7Validator.check_schema(editor_schema)
    editor = jsonschema.Draft7Validator(editor_schema)

    failed = False
    count = 0
    for path in valid:
        for doc in documents(path):
            count += 1
            by_crd, by_editor = problems(doc, crds, editor)
            for who, found in (("CRD schema", by_crd), ("JSON Schema", by_editor)):
                for p in found:
                    print(f"{path}: {doc.get('kind')} {doc['metadata'].get('name')}: refused by the {who}: {p}")
                    failed = True
    for path in invalid:
        docs = documents(path)
        if len(docs) != 1:
            print(f"{path}: an invalid case holds exactly one document, found {len(docs)}")
            failed = True
            continue
        by_crd, by_editor = problems(docs[0], crds, editor)
        for who, found in (("CRD schema", by_crd), ("JSON Schema", by_editor)):
            if not found:
                print(f"{path}: accepted by the {who}, which should refuse it")
                failed = True
        if by_crd and by_editor:
            print(f"refused as expected: {path}: {by_crd[0]}")
    if failed:
        return 1
    print(f"policy schemas: {count} valid documents in {len(valid)} files pass the CRDs and the JSON Schema; "
          f"{len(invalid)} invalid ones are refused by both")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
