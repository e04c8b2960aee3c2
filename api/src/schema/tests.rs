//! The schema and the decoder agree: a document with every field set decodes cleanly, and each
//! field broken in turn (wrong type, value outside the enum or range, unknown sibling, required
//! field left out) is refused at that field's path; an optional field left out decodes cleanly,
//! to the schema's default where it has one. Also: the rendered CRDs are structural, as
//! Kubernetes requires.

use serde_json::{Value, json};

use super::*;
use crate::decode::decode_best_effort;

/// A valid value of `ty`, as JSON (which the YAML decoder reads as flow YAML).
fn sample(ty: &Type) -> Value {
    match ty {
        Type::Text(text) => json!(match text {
            Text::NonEmpty => "file.pem",
            Text::Name | Text::ServiceRef => "a",
            Text::HttpPath => "/a",
            Text::Method => "GET",
            Text::SpiffeId => "spiffe://cluster.local/ns/a/sa/a",
            Text::TrustDomain => "cluster.local",
            Text::Url => "http://127.0.0.1:8086",
            Text::LogLevel => "info",
        }),
        Type::Integer(range) => json!(i64::try_from(*range.start()).unwrap()),
        Type::Ratio => json!(0.5),
        Type::Boolean => json!(true),
        Type::Duration => json!("1s"),
        Type::Address => json!("127.0.0.1:8080"),
        Type::Ip => json!("10.96.0.10"),
        Type::Enum(names) => json!(names[0]),
        Type::List(item) => json!([sample(item)]),
        Type::Object(object) => {
            Value::Object(object.fields.iter().map(|f| (f.name.to_string(), sample(&f.ty))).collect())
        }
        Type::StringMap => json!({"x-a": "b"}),
    }
}

/// Every field under `object` at `path` (a JSON pointer and the diagnostic's dotted path),
/// list items taken at index 0.
/// Every field of a kind's spec and metadata, with its JSON pointer and dotted path.
fn fields_of(kind: &Kind) -> Vec<(&'static Field, String, String)> {
    let mut fields = Vec::new();
    walk(kind.spec, "/spec", "spec", &mut fields);
    walk(&METADATA, "/metadata", "metadata", &mut fields);
    fields
}

fn walk(object: &'static Object, pointer: &str, path: &str, out: &mut Vec<(&'static Field, String, String)>) {
    for field in object.fields {
        let (pointer, path) = (format!("{pointer}/{}", field.name), format!("{path}.{}", field.name));
        out.push((field, pointer.clone(), path.clone()));
        match &field.ty {
            Type::Object(inner) => walk(inner, &pointer, &path, out),
            Type::List(Type::Object(inner)) => walk(inner, &format!("{pointer}/0"), &format!("{path}[0]"), out),
            _ => {}
        }
    }
}

fn full_document(kind: &Kind) -> Value {
    json!({"kind": kind.name, "metadata": {"name": "a"}, "spec": sample(&Type::Object(kind.spec))})
}

/// The decoded document (as the discovery JSON) and the paths of the problems found.
fn decode(doc: &Value) -> (Option<Value>, Vec<String>) {
    let (docs, problems) = decode_best_effort("f.yaml", &doc.to_string());
    let paths: Vec<String> = problems.0.iter().map(|d| d.path.clone()).collect();
    (docs.first().map(|d| serde_json::to_value(d).unwrap()), paths)
}

/// `doc` with the value at `pointer` replaced by `with` (or removed when `None`).
fn edited(doc: &Value, pointer: &str, with: Option<Value>) -> Value {
    let mut doc = doc.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = doc.pointer_mut(parent).unwrap();
    match (parent, with) {
        (Value::Object(map), Some(value)) => drop(map.insert(key.to_string(), value)),
        (Value::Object(map), None) => drop(map.remove(key)),
        (Value::Array(items), Some(value)) => items[key.parse::<usize>().unwrap()] = value,
        (other, _) => panic!("cannot edit {pointer} in {other}"),
    }
    doc
}

fn assert_refused(doc: &Value, path: &str, what: &str) {
    let (_, problems) = decode(doc);
    assert!(problems.iter().any(|p| p == path), "{what}: expected a problem at {path}, got {problems:?} for {doc}");
}

#[test]
fn a_document_with_every_field_decodes_cleanly() {
    for kind in KINDS {
        let doc = full_document(kind);
        let (decoded, problems) = decode(&doc);
        assert!(problems.is_empty(), "{}: {problems:?}\n{doc}", kind.name);
        assert_eq!(decoded.unwrap()["kind"], kind.name);
    }
}

#[test]
fn each_field_broken_in_turn_is_refused_at_its_path() {
    for kind in KINDS {
        let doc = full_document(kind);
        let fields = fields_of(kind);
        for (field, pointer, path) in &fields {
            let wrong_type = match field.ty {
                Type::Object(_) | Type::StringMap => json!("x"),
                _ => json!({"x": 1}),
            };
            assert_refused(&edited(&doc, pointer, Some(wrong_type)), path, "wrong type");
            if field.required {
                assert_refused(&edited(&doc, pointer, None), path, "required field missing");
            }
            let (scalar, item_pointer, item_path) = match &field.ty {
                Type::List(item) => (*item, format!("{pointer}/0"), format!("{path}[0]")),
                ty => (ty, pointer.clone(), path.clone()),
            };
            match scalar {
                Type::Enum(_) => assert_refused(&edited(&doc, &item_pointer, Some(json!("bogus"))), &item_path, "enum"),
                Type::Integer(range) => {
                    let below = i64::try_from(*range.start() - 1).unwrap();
                    assert_refused(&edited(&doc, &item_pointer, Some(json!(below))), &item_path, "below the range");
                    if let Ok(above) = u64::try_from(*range.end() + 1) {
                        assert_refused(&edited(&doc, &item_pointer, Some(json!(above))), &item_path, "above the range");
                    }
                }
                Type::Ratio => assert_refused(&edited(&doc, &item_pointer, Some(json!(1.5))), &item_path, "ratio"),
                Type::Object(_) => {
                    let unknown = edited(&doc, &format!("{item_pointer}/bogusField"), Some(json!(1)));
                    assert_refused(&unknown, &format!("{item_path}.bogusField"), "unknown field");
                }
                _ => {}
            }
        }
        assert_refused(&edited(&doc, "/spec/bogusField", Some(json!(1))), "spec.bogusField", "unknown spec field");
    }
}

#[test]
fn an_optional_field_left_out_decodes_cleanly_to_the_schema_default() {
    let mut checked = 0;
    for kind in KINDS {
        let doc = full_document(kind);
        let fields = fields_of(kind);
        for (field, pointer, path) in &fields {
            if field.required {
                continue;
            }
            let (decoded, problems) = decode(&edited(&doc, pointer, None));
            assert!(problems.is_empty(), "{path} left out: {problems:?}");
            let Some(default) = field.default else { continue };
            let decoded = decoded.unwrap();
            assert_eq!(decoded.pointer(pointer), Some(&default()), "{} {path}: decoded {decoded}", kind.name);
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} defaults checked");
}

/// Kubernetes' structural-schema rules (apiextensions "Specifying a structural schema"):
/// every node has a type, objects list their properties or say what their values are, and
/// `additionalProperties` never stands beside `properties`.
fn assert_structural(schema: &Value, at: &str) {
    let ty = schema["type"].as_str().unwrap_or_else(|| panic!("{at}: no type in {schema}"));
    match ty {
        "object" => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            assert!(properties.is_some() != additional.is_some(), "{at}: properties xor additionalProperties");
            for (name, child) in properties.into_iter().flatten() {
                assert_structural(child, &format!("{at}.{name}"));
            }
            if let Some(additional) = additional {
                assert_structural(additional, &format!("{at}.*"));
            }
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let required = required.as_str().unwrap();
                assert!(properties.unwrap().contains_key(required), "{at}: required {required} is not a property");
            }
        }
        "array" => assert_structural(&schema["items"], &format!("{at}[]")),
        "string" | "integer" | "number" | "boolean" => {}
        other => panic!("{at}: unexpected type {other}"),
    }
    assert!(schema.get("x-kubernetes-preserve-unknown-fields").is_none(), "{at}: nothing is left open");
}

#[test]
fn the_crds_are_structural_and_name_every_kind() {
    let crds = crds();
    assert_eq!(crds.len(), kind_names().len());
    for (crd, kind) in crds.iter().zip(KINDS) {
        assert_eq!(crd["metadata"]["name"], format!("{}.weft.dev", kind.plural));
        let version = &crd["spec"]["versions"][0];
        assert_eq!((version["served"].as_bool(), version["storage"].as_bool()), (Some(true), Some(true)));
        assert_structural(&version["schema"]["openAPIV3Schema"], kind.name);
        assert_eq!(crd["spec"]["scope"], "Namespaced");
    }
    let route = &crds[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(route["required"], json!(["service"]));
    let port = &crds[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["ports"]
        ["items"]["properties"]["port"];
    assert_eq!((port["minimum"].as_i64(), port["maximum"].as_i64()), (Some(1), Some(65535)));
}

#[test]
fn the_json_schema_closes_every_object_and_checks_each_kind() {
    let schema = json_schema();
    assert_eq!(schema["properties"]["kind"]["enum"], json!(kind_names()));
    assert_eq!(schema["allOf"].as_array().unwrap().len(), KINDS.len());
    let mesh = &schema["allOf"][4]["then"]["properties"]["spec"];
    assert_eq!(mesh["additionalProperties"], json!(false));
    assert_eq!(mesh["properties"]["mtls"]["enum"], json!(["strict", "permissive", "off"]));
    assert_eq!(mesh["properties"]["mtls"]["default"], json!("strict"));
}
