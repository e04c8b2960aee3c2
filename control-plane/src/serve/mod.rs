//! `weft serve`: the control plane. Policy from a watched folder, instances from the registry
//! backends, both merged in the catalog and streamed to proxies by the discovery listener;
//! the admin listener shows the state and metrics.
//!
//! Follow a change by module name: `folder` (files) → `policy` / `registry` → `catalog`
//! (versions, scopes, per-stream queues) → `discovery` (the streams) → the proxies.

pub mod admin;
pub mod catalog;
pub mod discovery;
pub mod folder;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod tls;
pub mod watch_limit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use weft_api::{Document, SpiffeId};

use catalog::Catalog;
use discovery::Discovery;
use registry::{Registry, SelfRegistration, YamlDirRegistry};

pub const USAGE: &str = "\
Usage: weft serve [--policy DIR] [--registry DIR] [--listen ADDR] [--admin ADDR]
                  [--registration-ttl DURATION] [--heartbeat DURATION]
                  [--ca DIR --join-token-file FILE [--cert-ttl DURATION] [--identity SPIFFE_ID]
                   [--tls-san DNS_NAME]...]
                  [--kubernetes [--kube-api URL] [--kube-namespaces NS,...] [--kube-policy]]
                  [--max-watches-per-client N] [--insecure-plaintext]

Runs the control plane.

  --policy DIR             policy YAML folder, watched; an invalid change is rejected (every
                           problem logged as FILE:LINE: field.path: message) and the last good
                           policy keeps serving
  --registry DIR           folder of Service documents whose endpoints are registrations,
                           watched (default: the policy folder)
  --listen ADDR            discovery API, HTTP/2 or HTTP/1.1 (default 0.0.0.0:8086): TLS with --ca,
                           plaintext only from loopback peers
  --admin ADDR             /metrics, /ready, /live, /v1/status, /v1/snapshot (default 127.0.0.1:9990)
  --registration-ttl DUR   how long a proxy's instance stays after its stream closes, and how
                           long a starting control plane waits for proxies to re-register
                           before it sends snapshots (default 5s)
  --heartbeat DUR          idle streams get a heartbeat line, and HTTP/2 connections a PING to
                           answer, this often; a proxy that stops answering loses its stream and
                           registration (default 10s)
  --ca DIR                 sign proxies' certificate requests (POST /v1/certificates) with the
                           CA in DIR (ca.pem, ca-key.pem, optional trust-bundle.pem; see
                           `weft ca init`)
  --join-token-file FILE   bootstrap credentials for --ca: one `<token> <spiffe-id>` per line;
                           a token only ever gets a certificate for its own id; watched (an
                           invalid change is logged and the last good tokens stay)
  --cert-ttl DURATION      lifetime of issued certificates (default 24h); proxies renew at 70 %
  --identity SPIFFE_ID     the control plane's own id in its serving certificate (default
                           spiffe://<the Mesh's trustDomain>/ns/weft/sa/weft-control)
  --tls-san DNS_NAME       a DNS name for the serving certificate too (repeatable), for clients
                           that verify names: the Kubernetes API server calling the admission
                           webhook (POST /v1/admission) at weft-control.weft.svc
  --kubernetes             instances from the Kubernetes API: every Service's ready EndpointSlice
                           endpoints (terminating ones only while none is ready) and its
                           ClusterIPs, watched; an API server that is down or refuses keeps the
                           last known state, marked stale (weft_control_registry_stale). With
                           --ca, a bearer token that is no join token is checked as a pod's
                           service-account token (TokenReview, audience weft.dev) and gets
                           exactly spiffe://<trust domain>/ns/<namespace>/sa/<account>.
                           In-cluster credentials unless --kube-api is given
  --kube-api URL           the API server, reached without credentials (kubectl proxy); implies
                           --kubernetes
  --kube-namespaces NS,... watch these namespaces only (default: all); implies --kubernetes
  --kube-policy            policy from the cluster too: the weft.dev/v1alpha1 objects (the CRDs
                           `weft crds` prints), checked like files; an object that does not pass
                           is reported by name and field and its last good version serves;
                           implies --kubernetes
  --max-watches-per-client N
                           open watch streams one client (its address and, over TLS, its
                           certificate's id) may hold; more are refused with 429 and counted in
                           weft_control_requests_refused_total{reason=\"too-many-watches\"}
                           (default 100); plaintext from loopback is not limited
  --insecure-plaintext     accept plaintext discovery from any peer, not only loopback: anyone
                           who reaches the port can then read policy and act as any proxy
";

#[derive(Clone, Debug)]
pub struct ServeArgs {
    pub policy: Option<PathBuf>,
    pub registry: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub registration_ttl: Duration,
    pub heartbeat: Duration,
    /// The CA folder: when set, the discovery listener also signs CSRs.
    pub ca: Option<PathBuf>,
    pub join_token_file: Option<PathBuf>,
    pub cert_ttl: Duration,
    /// The control plane's own SPIFFE id (default from the Mesh's trust domain).
    pub identity: Option<SpiffeId>,
    /// DNS names for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    pub insecure_plaintext: bool,
    /// Open watch streams one client (peer IP and certificate id) may hold.
    pub max_watches_per_client: usize,
    /// `--kubernetes`: Services and EndpointSlices from the Kubernetes API as a registry.
    pub kubernetes: Option<registry::kubernetes::KubeOptions>,
}

/// The namespace and service account of the control plane's default identity.
pub const DEFAULT_NAMESPACE: &str = "weft";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "weft-control";

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            policy: None,
            registry: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 8086)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9990)),
            registration_ttl: Duration::from_secs(5),
            heartbeat: Duration::from_secs(10),
            ca: None,
            join_token_file: None,
            cert_ttl: Duration::from_secs(24 * 3600),
            identity: None,
            tls_sans: Vec::new(),
            insecure_plaintext: false,
            max_watches_per_client: watch_limit::DEFAULT_MAX_WATCHES_PER_CLIENT,
            kubernetes: None,
        }
    }
}

impl ServeArgs {
    pub fn parse(args: &[String]) -> Result<ServeArgs, String> {
        let mut out = ServeArgs::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--insecure-plaintext" {
                out.insecure_plaintext = true;
                continue;
            }
            if flag == "--kubernetes" {
                out.kubernetes.get_or_insert_default();
                continue;
            }
            if flag == "--kube-policy" {
                out.kubernetes.get_or_insert_default().policy = true;
                continue;
            }
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--policy" => out.policy = Some(value()?.into()),
                "--registry" => out.registry = Some(value()?.into()),
                "--listen" => out.listen = parse_addr(flag, value()?)?,
                "--admin" => out.admin = parse_addr(flag, value()?)?,
                "--registration-ttl" => out.registration_ttl = parse_duration(flag, value()?)?,
                "--heartbeat" => out.heartbeat = parse_duration(flag, value()?)?.max(Duration::from_millis(100)),
                "--ca" => out.ca = Some(value()?.into()),
                "--join-token-file" => out.join_token_file = Some(value()?.into()),
                "--cert-ttl" => out.cert_ttl = parse_duration(flag, value()?)?,
                "--max-watches-per-client" => {
                    let v = value()?;
                    out.max_watches_per_client = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("{flag}: {v:?} is not a count above 0"))?;
                }
                "--tls-san" => out.tls_sans.push(value()?.clone()),
                "--kube-api" => out.kubernetes.get_or_insert_default().api = Some(value()?.clone()),
                "--kube-namespaces" => {
                    let list: Vec<String> =
                        value()?.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
                    out.kubernetes.get_or_insert_default().namespaces = list;
                }
                "--identity" => {
                    let v = value()?;
                    out.identity = Some(SpiffeId::parse(v).map_err(|e| format!("--identity: {e}"))?);
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if out.ca.is_some() != out.join_token_file.is_some() {
            return Err("--ca and --join-token-file go together".into());
        }
        if out.identity.is_some() && out.ca.is_none() {
            return Err("--identity names the certificate --ca signs for the control plane; give --ca too".into());
        }
        Ok(out)
    }
}

fn parse_duration(flag: &str, v: &str) -> Result<Duration, String> {
    weft_api::duration::parse_duration(v).map_err(|e| format!("{flag}: {e}"))
}

fn parse_addr(flag: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse().map_err(|_| format!("{flag}: {v:?} is not an IP:PORT address"))
}

/// Runs `weft serve` with the arguments after `serve`; returns the exit status.
pub fn run(args: &[String]) -> u8 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return 0;
    }
    let args = match ServeArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft serve: {e}\n\n{USAGE}");
            return 2;
        }
    };
    if let Err(e) = weft_proxy::logging::init(weft_api::LogFormat::Text, "info") {
        eprintln!("weft serve: {e}");
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft serve: cannot start a runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        match start(&args).await {
            Ok(_) => {
                wait_for_stop().await;
                tracing::info!("stopping");
                0
            }
            Err(e) => {
                eprintln!("weft serve: {e}");
                1
            }
        }
    })
}

/// A running control plane (its tasks live in the current runtime).
pub struct Running {
    pub catalog: Arc<Catalog>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// Loads the policy, binds the listeners and starts every task. Fails, changing nothing,
/// when the policy folder is invalid or a port is taken.
pub async fn start(args: &ServeArgs) -> Result<Running, String> {
    let issuer = match (&args.ca, &args.join_token_file) {
        (Some(ca), Some(tokens)) => {
            let issuer = crate::ca::Authority::load(ca)
                .and_then(|a| {
                    crate::ca::JoinTokens::load(tokens).and_then(|t| crate::ca::Issuer::new(a, t, args.cert_ttl))
                })
                .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            Some(Arc::new(issuer))
        }
        _ => None,
    };
    let catalog = Catalog::new(args.registration_ttl);
    catalog.set_cert_ttl(args.cert_ttl);
    if let Some(issuer) = &issuer {
        let at = issuer.authority().not_after().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs());
        catalog.set_ca_not_after(at.unwrap_or_default());
    }
    let mut trust_domain = weft_api::MeshSpec::default().trust_domain;
    // Without --registry the policy folder's Service endpoints are the YAML registry: one parse
    // feeds both.
    let shared_registry = match (&args.policy, &args.registry) {
        (Some(dir), None) => Some(YamlDirRegistry::fed_by_policy(catalog.clone(), dir.clone())),
        _ => None,
    };
    if let Some(dir) = &args.policy {
        let mut files = folder::load(dir).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            format!("{}\nthe policy folder {} is not valid; nothing was started", list.join("\n"), dir.display())
        })?;
        if let Some(r) = &shared_registry {
            r.take_instances(&mut files);
        }
        trust_domain = files
            .iter()
            .flat_map(|(_, docs)| docs)
            .find_map(|d| match d {
                Document::Mesh(m) => Some(m.spec.trust_domain.clone()),
                _ => None,
            })
            .unwrap_or(trust_domain);
        catalog.set_policy_files(files);
    }
    let tls = match &issuer {
        Some(issuer) => {
            let id = match &args.identity {
                Some(id) => id.clone(),
                None => SpiffeId::new(&trust_domain, DEFAULT_NAMESPACE, DEFAULT_SERVICE_ACCOUNT)
                    .map_err(|e| format!("the control plane's identity: {e}"))?,
            };
            let tls = Arc::new(tls::ServingTls::new(issuer, id, args.tls_sans.clone(), args.cert_ttl)?);
            tls.renew_forever(issuer.clone(), args.cert_ttl);
            Some(tls)
        }
        None => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (discovery): {e}", args.listen))?;
    let admin =
        TcpListener::bind(args.admin).await.map_err(|e| format!("cannot listen on {} (admin): {e}", args.admin))?;
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;

    if let Some(dir) = &args.policy {
        let catalog = catalog.clone();
        let watched = dir.clone();
        let registry = shared_registry.clone();
        folder::watch(dir.clone(), move || reload_policy(&catalog, &watched, registry.as_deref()))?;
    }
    let self_registration = SelfRegistration::new(catalog.clone(), args.registration_ttl);
    let mut registries: Vec<Arc<dyn Registry>> = vec![self_registration.clone()];
    if let Some(dir) = &args.registry {
        registries.push(YamlDirRegistry::new(catalog.clone(), dir.clone()));
    }
    let kube_client = match &args.kubernetes {
        Some(options) => Some(registry::kubernetes::client(options).map_err(|e| format!("registry kubernetes: {e}"))?),
        None => None,
    };
    if let (Some(options), Some(client)) = (&args.kubernetes, &kube_client) {
        registries.push(registry::kubernetes::KubernetesRegistry::new(
            catalog.clone(),
            options.clone(),
            client.clone(),
        ));
    }
    for r in registries {
        let source = r.source();
        r.start().map_err(|e| format!("registry {source}: {e}"))?;
    }
    if let (Some(issuer), Some(file)) = (&issuer, &args.join_token_file) {
        let (issuer, file, c) = (issuer.clone(), file.clone(), catalog.clone());
        folder::watch_file(&file.clone(), move || reload_tokens(&issuer, &file, &c))?;
    }
    let signs = issuer.is_some();
    // With both a CA and Kubernetes, a bearer token that is no join token may be a pod's
    // service-account token: the API server says whose (docs/certificates.md).
    let token_review = match (&issuer, kube_client) {
        (Some(_), Some(client)) => Some(crate::ca::TokenReviewer::new(client, trust_domain.clone())),
        _ => None,
    };
    let reviews_tokens = token_review.is_some();
    let transport = match (&tls, args.insecure_plaintext) {
        (Some(t), false) => format!("TLS as {} (plaintext from loopback peers only)", t.id),
        (Some(t), true) => format!("TLS as {}, and plaintext from ANY peer (--insecure-plaintext)", t.id),
        (None, false) => "plaintext from loopback peers only (no --ca: no TLS)".to_string(),
        (None, true) => "plaintext from ANY peer, unauthenticated (--insecure-plaintext, no --ca)".to_string(),
    };
    let discovery = Arc::new(Discovery {
        catalog: catalog.clone(),
        self_registration,
        heartbeat: args.heartbeat,
        issuer,
        token_review,
        tls,
        insecure_plaintext: args.insecure_plaintext,
        watch_limit: watch_limit::WatchLimit::new(args.max_watches_per_client),
    });
    tokio::spawn(discovery::serve(listener, discovery));
    tokio::spawn(admin::serve(admin, catalog.clone()));
    tracing::info!(
        discovery = %listen,
        admin = %admin_addr,
        policy = ?args.policy,
        version = catalog.version(),
        signs_certificates = signs,
        reviews_service_account_tokens = reviews_tokens,
        "weft control plane {} serving; discovery: {transport}",
        env!("CARGO_PKG_VERSION")
    );
    if args.insecure_plaintext {
        tracing::warn!("--insecure-plaintext: any peer that reaches {listen} can read policy and act as any proxy");
    }
    Ok(Running { catalog, listen, admin: admin_addr })
}

fn reload_policy(catalog: &Catalog, dir: &std::path::Path, registry: Option<&YamlDirRegistry>) {
    match folder::load(dir) {
        Ok(mut files) => {
            if let Some(r) = registry {
                r.take_instances(&mut files);
            }
            if catalog.set_policy_files(files) {
                catalog.metrics.policy_reloads.with_label_values(&["applied"]).inc();
                tracing::info!(dir = %dir.display(), version = catalog.version(), "policy reloaded");
            }
        }
        Err(problems) => {
            // A change that arrives in several bursts of file events is loaded more than once;
            // the same problems are reported (logged and counted) once.
            if catalog.set_policy_file_problems(problems.iter().map(ToString::to_string).collect()) {
                catalog.metrics.policy_reloads.with_label_values(&["rejected"]).inc();
                for p in &problems {
                    tracing::error!(problem = %p, "policy change rejected; the last good policy keeps serving");
                }
            }
        }
    }
}

fn reload_tokens(issuer: &crate::ca::Issuer, file: &std::path::Path, catalog: &Catalog) {
    match crate::ca::JoinTokens::load(file) {
        Ok(tokens) => {
            let n = tokens.len();
            if issuer.set_tokens(tokens) {
                catalog.metrics.token_reloads.with_label_values(&["applied"]).inc();
                tracing::info!(file = %file.display(), tokens = n, "join tokens reloaded");
            }
        }
        Err(e) => {
            catalog.metrics.token_reloads.with_label_values(&["rejected"]).inc();
            tracing::error!(error = %e, kept = issuer.token_count(), "join token file change rejected; the last good tokens stay");
        }
    }
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<ServeArgs, String> {
        ServeArgs::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_follow_the_design_contract() {
        let a = args(&[]).unwrap();
        assert_eq!(a.listen.to_string(), "0.0.0.0:8086");
        assert_eq!(a.admin.to_string(), "127.0.0.1:9990");
        assert_eq!(a.registration_ttl, Duration::from_secs(5));
    }

    #[test]
    fn options_parse_and_errors_name_the_option() {
        let a = args(&["--policy", "p", "--listen", "127.0.0.1:1", "--registration-ttl", "250ms"]).unwrap();
        assert_eq!(a.policy, Some(PathBuf::from("p")));
        assert_eq!(a.listen.to_string(), "127.0.0.1:1");
        assert_eq!(a.registration_ttl, Duration::from_millis(250));
        assert!(args(&["--listen", "nope"]).unwrap_err().contains("--listen"));
        assert!(args(&["--policy"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--registration-ttl", "5"]).unwrap_err().contains("--registration-ttl"));
        assert!(args(&["--colour"]).unwrap_err().contains("--colour"));
    }

    #[test]
    fn kubernetes_options_imply_kubernetes() {
        use registry::kubernetes::KubeOptions;
        assert_eq!(args(&[]).unwrap().kubernetes, None);
        assert_eq!(args(&["--kubernetes"]).unwrap().kubernetes, Some(KubeOptions::default()));
        let a =
            args(&["--kube-policy", "--kube-namespaces", "shop, ops,", "--kube-api", "http://127.0.0.1:8001"]).unwrap();
        assert_eq!(
            a.kubernetes,
            Some(KubeOptions {
                api: Some("http://127.0.0.1:8001".into()),
                namespaces: vec!["shop".into(), "ops".into()],
                policy: true,
            })
        );
        assert!(args(&["--kube-api"]).unwrap_err().contains("needs a value"));
    }
}
