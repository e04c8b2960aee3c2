//! Renders the field tables as OpenAPI v3 (a CRD's structural openAPIV3Schema) and as a JSON
//! Schema for editors.
//!
//! The two differ in one place: Kubernetes forbids `additionalProperties` beside `properties`
//! (the API server prunes unknown fields, and refuses them under strict field validation,
//! kubectl's default), while an editor needs `additionalProperties: false` to flag a typo.

use serde_json::{Map, Value, json};

use super::{Field, GROUP, KINDS, Kind, METADATA, Object, Text, Type, VERSION};
use crate::API_VERSION;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Crd,
    JsonSchema,
}

/// `^...$` patterns for text the schema can pre-check; `validate` has the exact rule.
fn text_schema(text: Text) -> Value {
    const LABEL: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
    let mut s = json!({"type": "string", "minLength": 1});
    let pattern = match text {
        Text::NonEmpty | Text::LogLevel => None,
        Text::Name => {
            s["maxLength"] = json!(63);
            Some(format!("^{LABEL}$"))
        }
        Text::ServiceRef => Some(format!("^{LABEL}(\\.{LABEL})?$")),
        Text::HttpPath => Some("^/".to_string()),
        Text::Method => Some("^[A-Za-z_-]+$".to_string()),
        Text::SpiffeId => Some("^spiffe://[a-z0-9._-]+/ns/[^/]+/sa/[^/]+$".to_string()),
        Text::TrustDomain => Some("^[a-z0-9._-]+$".to_string()),
        Text::Url => Some("^https?://[^/]+:[0-9]+(/.*)?$".to_string()),
    };
    if let Some(pattern) = pattern {
        s["pattern"] = json!(pattern);
    }
    s
}

fn type_schema(ty: &Type, flavor: Flavor) -> Value {
    match ty {
        Type::Text(text) => text_schema(*text),
        Type::Integer(range) => {
            let mut s = json!({"type": "integer", "minimum": i64::try_from(*range.start()).unwrap_or(i64::MIN)});
            // Kubernetes integers are int64: a larger bound says nothing.
            if let Ok(max) = i64::try_from(*range.end()) {
                s["maximum"] = json!(max);
            }
            s
        }
        Type::Ratio => json!({"type": "number", "minimum": 0, "maximum": 1}),
        Type::Boolean => json!({"type": "boolean"}),
        Type::Duration => json!({"type": "string", "pattern": "^([0-9.]+(h|m|s|ms|us|µs|ns))+$"}),
        Type::Address => json!({"type": "string", "pattern": "^([0-9.]+|\\[[0-9a-fA-F:.]+\\]):[0-9]+$"}),
        Type::Ip => json!({"type": "string", "pattern": "^[0-9a-fA-F:.]+$"}),
        Type::Enum(names) => json!({"type": "string", "enum": names}),
        Type::List(item) => json!({"type": "array", "items": type_schema(item, flavor)}),
        Type::Object(object) => object_schema(object, flavor),
        Type::StringMap => json!({"type": "object", "additionalProperties": {"type": "string"}}),
    }
}

fn field_schema(field: &Field, flavor: Flavor) -> Value {
    let mut s = type_schema(&field.ty, flavor);
    s["description"] = json!(field.doc);
    if let Some(default) = field.default {
        s["default"] = default();
    }
    s
}

fn object_schema(object: &Object, flavor: Flavor) -> Value {
    let properties: Map<String, Value> =
        object.fields.iter().map(|f| (f.name.to_string(), field_schema(f, flavor))).collect();
    let required: Vec<&str> = object.fields.iter().filter(|f| f.required).map(|f| f.name).collect();
    let mut s = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    if flavor == Flavor::JsonSchema {
        s["additionalProperties"] = json!(false);
    }
    s
}

fn spec_schema(kind: &Kind, flavor: Flavor) -> Value {
    let mut s = object_schema(kind.spec, flavor);
    s["description"] = json!(format!("{} settings.", kind.name));
    s
}

/// The CustomResourceDefinition of `kind` (apiextensions.k8s.io/v1), namespaced, v1alpha1
/// served and stored, in the `weft` category (`kubectl get weft` lists every kind).
pub fn crd(kind: &Kind) -> Value {
    let singular = kind.name.to_lowercase();
    let mut columns: Vec<Value> = kind
        .columns
        .iter()
        .map(|(name, path, doc)| json!({"name": name, "type": "string", "jsonPath": path, "description": doc}))
        .collect();
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    let name = METADATA.field("name").map_or(Value::Null, |f| type_schema(&f.ty, Flavor::Crd));
    let mut root = json!({
        "type": "object",
        "description": kind.doc,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            // Kubernetes owns metadata; Weft narrows only the name, to a DNS label.
            "metadata": {"type": "object", "properties": {"name": name}},
            "spec": spec_schema(kind, Flavor::Crd),
        },
    });
    if kind.spec_required() {
        root["required"] = json!(["spec"]);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{GROUP}", kind.plural),
            "labels": {"app.kubernetes.io/name": "weft", "app.kubernetes.io/part-of": "weft"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.name,
                "listKind": format!("{}List", kind.name),
                "plural": kind.plural,
                "singular": singular,
                "shortNames": kind.short_names,
                "categories": ["weft"],
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    })
}

/// Every kind's CustomResourceDefinition, in the order DESIGN.md lists the kinds.
pub fn crds() -> Vec<Value> {
    KINDS.iter().map(crd).collect()
}

/// A JSON Schema (draft-07) for one policy document as `weft check` reads it, for editors
/// (yaml-language-server applies it to every document of a file): `apiVersion` may be left
/// out, `metadata` holds only name and namespace, and each kind's `spec` is checked.
pub fn json_schema() -> Value {
    let kinds: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    let per_kind: Vec<Value> = KINDS
        .iter()
        .map(|kind| {
            let mut then = json!({"properties": {"spec": spec_schema(kind, Flavor::JsonSchema)}});
            if kind.spec_required() {
                then["required"] = json!(["spec"]);
            }
            json!({
                "if": {"properties": {"kind": {"const": kind.name}}, "required": ["kind"]},
                "then": then,
            })
        })
        .collect();
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": format!("Weft policy document ({API_VERSION})"),
        "type": "object",
        "required": ["kind", "metadata"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"type": "string", "enum": [API_VERSION]},
            "kind": {"type": "string", "enum": kinds},
            "metadata": object_schema(&METADATA, Flavor::JsonSchema),
            "spec": {"type": "object"},
        },
        "allOf": per_kind,
    })
}
