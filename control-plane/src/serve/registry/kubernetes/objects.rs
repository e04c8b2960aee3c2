//! Policy from the cluster: the `weft.dev/v1alpha1` objects operators apply with `kubectl`
//! (`weft serve --kube-policy`), decoded and checked by the same code as policy files.
//!
//! Each object goes through the file decoder and the same value rules, so an object is
//! accepted exactly when the same document in a file passes `weft check`. An object that does not decode is reported by kind, namespace, name and
//! field path, and its last good version (if it had one) keeps serving; the CRD schema catches
//! most mistakes earlier, at `kubectl apply`.

use std::collections::BTreeMap;

use kube::api::{ApiResource, DynamicObject};
use weft_api::Document;

use super::translate::ObjectKey;

pub const GROUP: &str = "weft.dev";
pub const VERSION: &str = "v1alpha1";

/// The policy kinds watched, with their resource (plural) names.
pub const KINDS: [(&str, &str); 5] = [
    ("Service", "services"),
    ("Route", "routes"),
    ("TrafficPolicy", "trafficpolicies"),
    ("AuthorizationPolicy", "authorizationpolicies"),
    ("Mesh", "meshes"),
];

pub fn api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.to_string(),
        version: VERSION.to_string(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.to_string(),
        plural: plural.to_string(),
    }
}

/// How an object is named in diagnostics and as the policy's "file": `Route shop/checkout`.
pub fn label(kind: &str, (namespace, name): &ObjectKey) -> String {
    format!("{kind} {namespace}/{name}")
}

/// Decodes one object as the policy document it stands for: the file decoder
/// (`weft_api::decode::decode_object`), then the value rules every file's documents meet.
pub fn decode(kind: &str, key: &ObjectKey, object: &DynamicObject) -> Result<Document, Vec<String>> {
    let label = label(kind, key);
    let mut value = serde_json::to_value(object).unwrap_or_default();
    // The watch is per kind; an object listed there is of that kind whatever it says.
    value["kind"] = serde_json::json!(kind);
    value["apiVersion"] = serde_json::json!(format!("{GROUP}/{VERSION}"));
    let doc =
        weft_api::decode::decode_object(&label, &value).map_err(|d| d.0.iter().map(describe).collect::<Vec<_>>())?;
    weft_api::validate::validate_documents(&label, std::slice::from_ref(&doc))
        .map_err(|d| d.0.iter().map(describe).collect::<Vec<_>>())?;
    Ok(doc)
}

/// A problem of an object: `Route shop/checkout: spec.rules[0].timeout: message` (an object
/// has no lines; its field path says where).
pub fn describe(d: &weft_api::Diagnostic) -> String {
    match d.path.is_empty() {
        true => format!("{}: {}", d.file, d.message),
        false => format!("{}: {}: {}", d.file, d.path, d.message),
    }
}

/// The last good document of every object, by kind and key, with the resourceVersion it was
/// decoded from (an unchanged object is not decoded again).
#[derive(Default)]
pub struct Decoded {
    good: BTreeMap<(String, ObjectKey), (Option<String>, Document)>,
    /// Problems of objects whose current version did not decode, by kind and key.
    problems: BTreeMap<(String, ObjectKey), (Option<String>, Vec<String>)>,
}

impl Decoded {
    /// Takes the objects now in the cluster (by kind) and returns the documents to serve (one
    /// "file" per object) and the problems of those that do not decode.
    pub fn update(
        &mut self,
        objects: &BTreeMap<String, BTreeMap<ObjectKey, DynamicObject>>,
    ) -> (Vec<(String, Vec<Document>)>, Vec<String>) {
        let present = |k: &(String, ObjectKey)| objects.get(&k.0).is_some_and(|m| m.contains_key(&k.1));
        self.good.retain(|k, _| present(k));
        self.problems.retain(|k, _| present(k));
        for (kind, map) in objects {
            for (key, object) in map {
                let id = (kind.clone(), key.clone());
                let version = object.metadata.resource_version.clone();
                let seen = |v: &Option<String>| version.is_some() && *v == version;
                if self.good.get(&id).is_some_and(|(v, _)| seen(v))
                    || self.problems.get(&id).is_some_and(|(v, _)| seen(v))
                {
                    continue;
                }
                match decode(kind, key, object) {
                    Ok(doc) => {
                        self.problems.remove(&id);
                        self.good.insert(id, (version, doc));
                    }
                    Err(problems) => {
                        self.problems.insert(id, (version, problems));
                    }
                }
            }
        }
        let docs = self.good.iter().map(|((kind, key), (_, doc))| (label(kind, key), vec![doc.clone()])).collect();
        let problems = self.problems.values().flat_map(|(_, p)| p.iter().cloned()).collect();
        (docs, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, ns: &str, name: &str, version: &str, spec: serde_json::Value) -> DynamicObject {
        let mut o = DynamicObject::new(name, &api_resource(kind, "x")).within(ns);
        o.metadata.resource_version = Some(version.into());
        o.data = serde_json::json!({ "spec": spec });
        o
    }

    fn cluster(objects: Vec<(&str, DynamicObject)>) -> BTreeMap<String, BTreeMap<ObjectKey, DynamicObject>> {
        let mut out: BTreeMap<String, BTreeMap<ObjectKey, DynamicObject>> = BTreeMap::new();
        for (kind, o) in objects {
            let key = (o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default());
            out.entry(kind.to_string()).or_default().insert(key, o);
        }
        out
    }

    #[test]
    fn objects_decode_like_files_and_a_bad_edit_keeps_the_last_good_version() {
        let good_route =
            serde_json::json!({"service": "web", "rules": [{"backends": [{"service": "web"}], "timeout": "2s"}]});
        let service = serde_json::json!({"ports": [{"port": 80, "protocol": "http"}]});
        let mut decoded = Decoded::default();
        let (docs, problems) = decoded.update(&cluster(vec![
            ("Service", object("Service", "shop", "web", "1", service.clone())),
            ("Route", object("Route", "shop", "web", "2", good_route)),
        ]));
        assert!(problems.is_empty(), "{problems:?}");
        let labels: Vec<&str> = docs.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["Route shop/web", "Service shop/web"]);
        assert!(matches!(&docs[0].1[0], Document::Route(r) if r.metadata.namespace == "shop"));

        // An edit with a bad timeout: reported by object and field, the last good Route serves.
        let bad_route =
            serde_json::json!({"service": "web", "rules": [{"backends": [{"service": "web"}], "timeout": "soon"}]});
        let (docs, problems) = decoded.update(&cluster(vec![
            ("Service", object("Service", "shop", "web", "1", service.clone())),
            ("Route", object("Route", "shop", "web", "3", bad_route)),
        ]));
        assert_eq!(docs.len(), 2, "the last good Route keeps serving");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("Route shop/web: spec.rules[0].timeout: "), "{problems:?}");

        // An object that never decoded serves nothing; a deleted one leaves with its problems.
        let (docs, problems) = decoded.update(&cluster(vec![
            ("Service", object("Service", "shop", "web", "1", service)),
            ("Service", object("Service", "shop", "broken", "4", serde_json::json!({"ports": [{"port": 0}]}))),
        ]));
        let labels: Vec<&str> = docs.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["Service shop/web"]);
        assert!(
            problems.len() == 1 && problems[0].starts_with("Service shop/broken: spec.ports[0].port: "),
            "{problems:?}"
        );
    }
}
