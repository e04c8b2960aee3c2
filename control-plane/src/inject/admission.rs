//! The admission webhook's answer: an `AdmissionReview` v1 for a Pod comes in, the same pod
//! injection `weft inject` does runs on it, and the difference goes back as a JSONPatch that
//! replaces the pod's `metadata` and `spec`. Anything the webhook cannot or should not inject
//! is allowed unchanged (a webhook must never be the reason a pod cannot start), with the
//! reason in the response's warnings.

use base64::Engine as _;
use serde_json::{Value, json};

use super::tree::Yaml;
use super::{Options, pod};

/// Answers one AdmissionReview (the request's JSON body) with the review to send back.
pub fn review(body: &[u8], options: &Options) -> Result<Value, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let request = review.get("request").ok_or("an AdmissionReview needs a request")?;
    let uid = request.get("uid").and_then(Value::as_str).ok_or("request.uid is missing")?;
    let api_version = review.get("apiVersion").and_then(Value::as_str).unwrap_or("admission.k8s.io/v1");
    let allowed = |extra: Value| {
        let mut response = json!({"uid": uid, "allowed": true});
        if let (Some(r), Some(e)) = (response.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
    };
    let kind = request.pointer("/kind/kind").and_then(Value::as_str).unwrap_or_default();
    if kind != "Pod" {
        return Ok(allowed(json!({"warnings": [format!("weft: {kind} is not a Pod; left unchanged")]})));
    }
    let Some(object) = request.get("object") else {
        return Err("request.object is missing".to_string());
    };
    let namespace = request.get("namespace").and_then(Value::as_str);
    let name = object.pointer("/metadata/name").and_then(Value::as_str);
    let generate = object.pointer("/metadata/generateName").and_then(Value::as_str).map(|g| g.trim_end_matches('-'));
    match patch_for(object, name.or(generate), namespace, options) {
        Ok(Some((patch, notes))) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            let mut response = json!({"patchType": "JSONPatch", "patch": encoded});
            if !notes.is_empty() {
                // kubectl prints these to whoever created the pod (or the Job behind it).
                response["warnings"] = notes.iter().map(|n| json!(format!("weft: {n}"))).collect();
            }
            Ok(allowed(response))
        }
        Ok(None) => Ok(allowed(json!({}))),
        Err(why) => Ok(allowed(json!({"warnings": [format!("weft: not injected: {why}")]}))),
    }
}

/// The JSONPatch that injects `pod` and the injection's warnings, or None when it is left alone
/// (opted out, hostNetwork, another mesh).
fn patch_for(
    pod: &Value,
    name: Option<&str>,
    namespace: Option<&str>,
    options: &Options,
) -> Result<Option<(Value, Vec<String>)>, String> {
    // JSON is YAML: the injector's own reader takes the object as it is.
    let text = serde_json::to_string(pod).map_err(|e| e.to_string())?;
    let parsed = weft_api::yaml::parse_stream(&text);
    if let Some(e) = parsed.error {
        return Err(e.message);
    }
    let node = parsed.documents.first().ok_or("an empty object")?;
    let mut tree = Yaml::from_node(node)?;
    let workload = pod::Workload { name, namespace };
    let notes = match pod::inject(&mut tree, &workload, options) {
        Ok(pod::Outcome::Injected(notes)) => notes,
        Ok(pod::Outcome::Skipped(_)) => return Ok(None),
        Err(problems) => return Err(problems.join("; ")),
    };
    let injected = to_json(&tree);
    let part = |key: &str| injected.get(key).cloned().unwrap_or_else(|| json!({}));
    let patch = json!([
        {"op": if pod.get("metadata").is_some() { "replace" } else { "add" }, "path": "/metadata", "value": part("metadata")},
        {"op": if pod.get("spec").is_some() { "replace" } else { "add" }, "path": "/spec", "value": part("spec")},
    ]);
    Ok(Some((patch, notes)))
}

/// The injector's tree as JSON, with plain scalars typed as a YAML 1.2 reader types them.
pub(crate) fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Str(s) => Value::String(s.clone()),
        Yaml::Plain(s) => match s.as_str() {
            "null" | "~" | "" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => match (s.parse::<i64>(), s.parse::<f64>()) {
                (Ok(n), _) => json!(n),
                (_, Ok(f)) if f.is_finite() => json!(f),
                _ => Value::String(s.clone()),
            },
        },
        Yaml::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Map(entries) => Value::Object(entries.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_review(pod: Value) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "705ab4f5", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "shop", "operation": "CREATE", "object": pod}
        })
        .to_string()
        .into_bytes()
    }

    fn app_pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-7d9f-", "labels": {"app": "web"}},
               "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "web:1",
                        "ports": [{"containerPort": 8080}]}]}})
    }

    fn decoded_patch(review: &Value) -> Value {
        let b64 = review["response"]["patch"].as_str().expect("a patch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_pod_gets_a_patch_with_the_sidecar_and_its_uid_back() {
        let out = review(&pod_review(app_pod()), &Options::default()).unwrap();
        assert_eq!(out["response"]["uid"], "705ab4f5");
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let patch = decoded_patch(&out);
        assert_eq!(patch[0]["path"], "/metadata");
        assert_eq!(patch[1]["path"], "/spec");
        let spec = &patch[1]["value"];
        let inits: Vec<&str> =
            spec["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(inits, ["weft-init", "weft-proxy"], "{spec}");
        assert_eq!(spec["containers"][0]["ports"][0]["containerPort"], 8080, "numbers stay numbers");
        assert_eq!(patch[0]["value"]["labels"]["app"], "web", "the pod's own metadata is kept");
    }

    /// A Job's pod with native sidecars off: the command is wrapped; a container with only
    /// `args` cannot be, and the warning reaches whoever created the pod.
    #[test]
    fn a_job_pod_is_wrapped_and_what_cannot_be_is_a_warning() {
        let mut pod = app_pod();
        pod["metadata"]["annotations"] = json!({"weft.dev/native-sidecar": "false"});
        pod["spec"]["restartPolicy"] = json!("Never");
        pod["spec"]["containers"] = json!([
            {"name": "report", "image": "report:1", "command": ["/report"], "args": ["--all"]},
            {"name": "upload", "image": "upload:1", "args": ["--to", "s3://bucket"]},
        ]);
        let out = review(&pod_review(pod), &Options::default()).unwrap();
        let spec = &decoded_patch(&out)[1]["value"];
        assert_eq!(
            spec["containers"][1]["command"],
            json!(["/weft/bin/weft-proxy", "await", "--admin", "127.0.0.1:4191", "--", "/report"])
        );
        assert_eq!(spec["containers"][1]["args"], json!(["--all"]));
        assert!(spec["containers"][2].get("command").is_none());
        let warnings = out["response"]["warnings"].as_array().expect("warnings");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = warnings[0].as_str().unwrap();
        assert!(w.starts_with("weft: container \"upload\" sets no command") && w.contains("set command"), "{w}");
        assert!(w.len() <= 256, "the API server may cut longer warnings: {} bytes", w.len());
    }

    #[test]
    fn what_is_not_injected_is_allowed_unchanged() {
        let mut opted_out = app_pod();
        opted_out["metadata"]["annotations"] = json!({"weft.dev/inject": "disabled"});
        let out = review(&pod_review(opted_out), &Options::default()).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
        let mut service: Value = serde_json::from_slice(&pod_review(app_pod())).unwrap();
        service["request"]["kind"]["kind"] = json!("Service");
        let out = review(service.to_string().as_bytes(), &Options::default()).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"]["warnings"][0].as_str().unwrap().contains("not a Pod"));
        assert!(review(b"{}", &Options::default()).is_err(), "no request: an error for the caller");
    }

    #[test]
    fn plain_scalars_are_typed_as_yaml_reads_them() {
        let y = Yaml::Map(vec![
            ("a".into(), Yaml::Plain("8080".into())),
            ("b".into(), Yaml::Str("8080".into())),
            ("c".into(), Yaml::Plain("true".into())),
            ("d".into(), Yaml::Plain("null".into())),
            ("e".into(), Yaml::Plain("0.5".into())),
            ("f".into(), Yaml::Plain("web".into())),
        ]);
        assert_eq!(to_json(&y), json!({"a": 8080, "b": "8080", "c": true, "d": null, "e": 0.5, "f": "web"}));
    }
}
