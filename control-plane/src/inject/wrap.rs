//! Pods that run to completion (Jobs, CronJobs, restartPolicy Never or OnFailure) when native
//! sidecars are off. The proxy is then an ordinary container that would keep the pod running
//! after the app is done, so each app container's command runs under `weft-proxy await`, which
//! waits for the proxy, runs the command and shuts the proxy down when it ends. The binary
//! reaches the app's image through an in-memory emptyDir that an init container fills from the
//! proxy image (a static binary: it runs in any image, musl or distroless).
//!
//! Native sidecars need none of this: the kubelet stops them once the app's containers end.

use super::settings::Settings;
use super::sidecar::{self, PROXY_BINARY};
use super::tree::Yaml;

/// The init container that copies the binary, and the volume it copies it into.
pub(crate) const BIN_NAME: &str = "weft-bin";
const BIN_DIR: &str = "/weft/bin";
/// The binary as the app containers see it.
const AWAIT_BINARY: &str = "/weft/bin/weft-proxy";

/// How the pod's containers end, when they do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// restartPolicy Never: whatever the command's outcome, the pod is done.
    Never,
    /// restartPolicy OnFailure: the kubelet reruns a failed command in the same pod, so the
    /// proxy must outlive a failure.
    OnFailure,
}

/// `None` for pods whose containers are restarted whatever happens (restartPolicy Always, the
/// default): they never complete, and the proxy never has to stop.
pub(crate) fn completion(spec: &Yaml) -> Option<Completion> {
    match spec.get("restartPolicy").and_then(Yaml::as_str) {
        Some("Never") => Some(Completion::Never),
        Some("OnFailure") => Some(Completion::OnFailure),
        _ => None,
    }
}

/// What [`wrap`] did: the containers whose command now runs under `await`, and a warning for
/// each it could not wrap.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Wrapped {
    pub(crate) containers: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

/// Prefixes each app container's `command` with `weft-proxy await … --`. `args` stay as they
/// are: the kubelet appends them to `command`, so they still follow the original command.
/// A container without `command` runs its image's entrypoint, which the manifest does not say:
/// it cannot be wrapped, and is named in a warning.
pub(crate) fn wrap(containers: &mut [Yaml], s: &Settings, completion: Completion) -> Wrapped {
    let admin = sidecar::loopback(s.ports.admin);
    let mut prefix = vec![AWAIT_BINARY, "await", "--admin", &admin];
    if completion == Completion::OnFailure {
        prefix.push("--keep-proxy-on-failure");
    }
    prefix.push("--");
    let mut out = Wrapped::default();
    for c in containers {
        let name = c.get("name").and_then(Yaml::as_str).unwrap_or_default().to_string();
        let Some(Yaml::Seq(command)) = c.get_mut("command").filter(|cmd| !cmd.items().is_empty()) else {
            out.warnings.push(format!(
                "container {name:?} sets no command, so it cannot run under weft-proxy await and the pod will not \
                 complete while the proxy runs: set command (the image's entrypoint) in the manifest"
            ));
            continue;
        };
        command.splice(0..0, prefix.iter().map(|p| Yaml::str(*p)));
        // An empty list goes, so that unwrapping (which drops a list it leaves empty) and
        // wrapping again put the key in the same place.
        if c.get("volumeMounts").is_some_and(|m| m.items().is_empty()) {
            c.remove("volumeMounts");
        }
        if let Some(Yaml::Seq(mounts)) = c.entry("volumeMounts", Yaml::Seq(Vec::new()), None) {
            mounts.push(sidecar::mount(BIN_NAME, BIN_DIR, true));
        }
        out.containers.push(name);
    }
    out
}

/// Undoes [`wrap`] for the containers an earlier injection recorded: the original command
/// back, the mount gone.
pub(crate) fn unwrap(containers: &mut [Yaml], wrapped: &[String]) {
    for c in containers {
        if !c.get("name").and_then(Yaml::as_str).is_some_and(|n| wrapped.iter().any(|w| w == n)) {
            continue;
        }
        if let Some(Yaml::Seq(command)) = c.get_mut("command")
            && command.first().and_then(Yaml::as_str) == Some(AWAIT_BINARY)
            && command.get(1).and_then(Yaml::as_str) == Some("await")
            && let Some(end) = command.iter().position(|a| a.as_str() == Some("--"))
        {
            command.drain(..=end);
        }
        if let Some(Yaml::Seq(mounts)) = c.get_mut("volumeMounts") {
            mounts.retain(|m| m.get("name").and_then(Yaml::as_str) != Some(BIN_NAME));
            if mounts.is_empty() {
                c.remove("volumeMounts");
            }
        }
    }
}

/// Copies the binary from the proxy image into the shared volume, as the proxy's uid.
pub(crate) fn bin_container(s: &Settings) -> Yaml {
    Yaml::map([
        ("name", Yaml::str(BIN_NAME)),
        ("image", Yaml::str(&s.image)),
        ("command", sidecar::strs(&["cp", PROXY_BINARY, AWAIT_BINARY])),
        ("resources", sidecar::resources(("10m", "100m"), ("16Mi", "64Mi"))),
        ("securityContext", sidecar::non_root(s.proxy_uid)),
        ("volumeMounts", Yaml::Seq(vec![sidecar::mount(BIN_NAME, BIN_DIR, false)])),
    ])
}

/// In memory: the binary is a few MiB, and nothing is left on the node.
pub(crate) fn bin_volume() -> Yaml {
    Yaml::map([
        ("name", Yaml::str(BIN_NAME)),
        ("emptyDir", Yaml::map([("medium", Yaml::str("Memory")), ("sizeLimit", Yaml::str("32Mi"))])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::settings::{self, Options};

    fn parse(text: &str) -> Yaml {
        Yaml::from_node(&weft_api::yaml::parse_stream(text).documents[0]).unwrap()
    }

    fn strings(y: Option<&Yaml>) -> Vec<&str> {
        y.map(Yaml::items).unwrap_or_default().iter().filter_map(Yaml::as_str).collect()
    }

    #[test]
    fn the_command_runs_under_await_and_the_args_still_follow_it() {
        let mut cs = parse(
            "- {name: report, image: r, command: [/bin/report, --all], args: [--since, 24h], volumeMounts: []}\n\
             - {name: helper, image: h, args: [--serve]}\n",
        );
        let Yaml::Seq(list) = &mut cs else { panic!() };
        let s = settings::read(None, &[], &Options::default()).unwrap();
        let out = wrap(list, &s, Completion::Never);
        assert_eq!(out.containers, ["report"]);
        assert_eq!(out.warnings.len(), 1);
        assert!(out.warnings[0].starts_with("container \"helper\" sets no command"), "{:?}", out.warnings);
        let report = &list[0];
        assert_eq!(
            strings(report.get("command")),
            ["/weft/bin/weft-proxy", "await", "--admin", "127.0.0.1:4191", "--", "/bin/report", "--all"]
        );
        // What the kubelet runs: command, then args.
        let argv: Vec<&str> = strings(report.get("command")).into_iter().chain(strings(report.get("args"))).collect();
        assert_eq!(&argv[4..], ["--", "/bin/report", "--all", "--since", "24h"]);
        assert_eq!(report.path(&["volumeMounts"]).unwrap().items().len(), 1);
        assert!(list[1].get("volumeMounts").is_none(), "an unwrapped container gets no mount");

        let before = parse("{name: report, image: r, command: [/bin/report, --all], args: [--since, 24h]}\n");
        unwrap(list, &["report".to_string()]);
        assert_eq!(list[0], before, "unwrapping restores the command and drops the mount list it emptied");
    }

    #[test]
    fn on_failure_keeps_the_proxy_for_the_next_try_and_the_admin_port_is_the_pods() {
        let mut list = vec![parse("{name: a, command: [run], volumeMounts: [{name: data, mountPath: /data}]}\n")];
        let mut s = settings::read(None, &[], &Options::default()).unwrap();
        s.ports.admin = 5191;
        wrap(&mut list, &s, Completion::OnFailure);
        assert_eq!(
            strings(list[0].get("command")),
            ["/weft/bin/weft-proxy", "await", "--admin", "127.0.0.1:5191", "--keep-proxy-on-failure", "--", "run"]
        );
        let mounts: Vec<&str> =
            list[0].get("volumeMounts").unwrap().items().iter().filter_map(|m| m.get("name")?.as_str()).collect();
        assert_eq!(mounts, ["data", "weft-bin"]);
        unwrap(&mut list, &["a".to_string()]);
        assert_eq!(list[0], parse("{name: a, command: [run], volumeMounts: [{name: data, mountPath: /data}]}\n"));
    }

    #[test]
    fn only_pods_that_end_complete() {
        let spec = |policy: &str| parse(&format!("{{restartPolicy: {policy}, containers: []}}\n"));
        assert_eq!(completion(&spec("Never")), Some(Completion::Never));
        assert_eq!(completion(&spec("OnFailure")), Some(Completion::OnFailure));
        assert_eq!(completion(&spec("Always")), None);
        assert_eq!(completion(&parse("{containers: []}\n")), None);
    }
}
