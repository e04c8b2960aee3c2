//! Where each workload kind keeps its pod template.

/// The path to the pod template (a mapping with `metadata` and `spec`), or `None` for kinds
/// `weft inject` passes through. A Pod is its own template.
pub(crate) fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}
