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
use weft_proxy::cli::{duration, positive, socket_addr};

use catalog::Catalog;
use discovery::Discovery;
use registry::{Registry, SelfRegistration, YamlDirRegistry};

/// Run the control plane: policy, registry, discovery streams.
///
/// Flags a container sets also read a `WEFT_SERVE_*` environment variable; a flag given on the
/// command line wins over its variable.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Policy YAML folder, watched
    ///
    /// An invalid change is rejected (every problem logged as FILE:LINE: field.path: message)
    /// and the last good policy keeps serving.
    #[arg(long, value_name = "DIR", env = "WEFT_SERVE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Folder of Service documents whose endpoints are registrations, watched (default: the
    /// policy folder)
    #[arg(long, value_name = "DIR", env = "WEFT_SERVE_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// Discovery API, HTTP/2 or HTTP/1.1: TLS with --ca, plaintext only from loopback peers
    #[arg(long, value_name = "ADDR", env = "WEFT_SERVE_LISTEN", default_value = "0.0.0.0:8086", value_parser = socket_addr)]
    pub listen: SocketAddr,
    /// /metrics, /ready, /live, /v1/status, /v1/snapshot
    #[arg(long, value_name = "ADDR", env = "WEFT_SERVE_ADMIN", default_value = "127.0.0.1:9990", value_parser = socket_addr)]
    pub admin: SocketAddr,
    /// How long a proxy's instance stays after its stream closes
    ///
    /// Also how long a starting control plane waits for proxies to re-register before it sends
    /// snapshots.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub registration_ttl: Duration,
    /// Heartbeat lines and HTTP/2 PINGs this often (at least 100ms)
    ///
    /// Idle streams get a heartbeat line, and HTTP/2 connections a PING to answer; a proxy that
    /// stops answering loses its stream and registration.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = heartbeat)]
    pub heartbeat: Duration,
    /// Sign proxies' certificate requests with the CA in DIR
    ///
    /// POST /v1/certificates; DIR holds ca.pem, ca-key.pem and optionally trust-bundle.pem (see
    /// `weft ca init`).
    #[arg(long, value_name = "DIR", env = "WEFT_SERVE_CA", requires = "join_token_file")]
    pub ca: Option<PathBuf>,
    /// Bootstrap credentials for --ca: one `<token> <spiffe-id>` per line
    ///
    /// A token only ever gets a certificate for its own id. Watched: an invalid change is
    /// logged and the last good tokens stay.
    #[arg(long, value_name = "FILE", env = "WEFT_SERVE_JOIN_TOKEN_FILE", requires = "ca")]
    pub join_token_file: Option<PathBuf>,
    /// Lifetime of issued certificates; proxies renew at 70 %
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = duration)]
    pub cert_ttl: Duration,
    /// The control plane's own id in the certificate --ca signs for it
    ///
    /// Default: spiffe://<the Mesh's trustDomain>/ns/weft/sa/weft-control.
    #[arg(long, value_name = "SPIFFE_ID", requires = "ca", value_parser = spiffe_id)]
    pub identity: Option<SpiffeId>,
    /// A DNS name for the serving certificate too (repeatable, or comma-separated)
    ///
    /// For clients that verify names: the Kubernetes API server calling the admission webhook
    /// (POST /v1/admission) at weft-control.weft.svc.
    #[arg(long = "tls-san", value_name = "DNS_NAME", env = "WEFT_SERVE_TLS_SAN", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// Open watch streams one client may hold
    ///
    /// A client is its address and, over TLS, its certificate's id. More are refused with 429
    /// and counted in weft_control_requests_refused_total{reason="too-many-watches"}; plaintext
    /// from loopback is not limited.
    #[arg(long, value_name = "N", default_value_t = watch_limit::DEFAULT_MAX_WATCHES_PER_CLIENT, value_parser = positive)]
    pub max_watches_per_client: usize,
    /// Accept plaintext discovery from any peer, not only loopback
    ///
    /// Anyone who reaches the port can then read policy and act as any proxy.
    #[arg(long)]
    pub insecure_plaintext: bool,
    #[command(flatten)]
    pub kube: KubeFlags,
}

/// `--kubernetes` and the flags that imply it.
#[derive(clap::Args, Clone, Debug)]
pub struct KubeFlags {
    /// Instances from the Kubernetes API (in-cluster credentials unless --kube-api is given)
    ///
    /// Every Service's ready EndpointSlice endpoints (terminating ones only while none is ready)
    /// and its ClusterIPs, watched; an API server that is down or refuses keeps the last known
    /// state, marked stale (weft_control_registry_stale). With --ca, a bearer token that is no
    /// join token is checked as a pod's service-account token (TokenReview, audience weft.dev)
    /// and gets exactly spiffe://<trust domain>/ns/<namespace>/sa/<account>.
    #[arg(long, env = "WEFT_SERVE_KUBERNETES")]
    kubernetes: bool,
    /// The API server, reached without credentials (kubectl proxy); implies --kubernetes
    #[arg(long, value_name = "URL")]
    kube_api: Option<String>,
    /// Watch these namespaces only (default: all); implies --kubernetes
    #[arg(long, value_name = "NS,...", env = "WEFT_SERVE_KUBE_NAMESPACES", value_delimiter = ',')]
    kube_namespaces: Vec<String>,
    /// Policy from the cluster's weft.dev objects too; implies --kubernetes
    ///
    /// The weft.dev/v1alpha1 objects (the CRDs `weft crds` prints), checked like files; an
    /// object that does not pass is reported by name and field and its last good version
    /// serves.
    #[arg(long, env = "WEFT_SERVE_KUBE_POLICY")]
    kube_policy: bool,
}

impl KubeFlags {
    /// What to watch, when any of the flags asks for Kubernetes.
    pub fn options(&self) -> Option<registry::kubernetes::KubeOptions> {
        let wanted = self.kubernetes || self.kube_policy || self.kube_api.is_some() || !self.kube_namespaces.is_empty();
        wanted.then(|| registry::kubernetes::KubeOptions {
            api: self.kube_api.clone(),
            namespaces: self
                .kube_namespaces
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            policy: self.kube_policy,
        })
    }
}

/// The namespace and service account of the control plane's default identity.
pub const DEFAULT_NAMESPACE: &str = "weft";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "weft-control";

fn heartbeat(s: &str) -> Result<Duration, String> {
    duration(s).map(|d| d.max(Duration::from_millis(100)))
}

fn spiffe_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s).map_err(|e| e.to_string())
}

/// Runs `weft serve`; returns the exit status.
pub fn run(args: ServeArgs) -> u8 {
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
    let kubernetes = args.kube.options();
    let kube_client = match &kubernetes {
        Some(options) => Some(registry::kubernetes::client(options).map_err(|e| format!("registry kubernetes: {e}"))?),
        None => None,
    };
    if let (Some(options), Some(client)) = (&kubernetes, &kube_client) {
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
        weft_proxy::cli::parse_from::<ServeArgs>("serve", list).map_err(|e| e.to_string())
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
        assert!(args(&["--policy"]).unwrap_err().contains("a value is required for '--policy <DIR>'"));
        assert!(args(&["--registration-ttl", "5"]).unwrap_err().contains("--registration-ttl"));
        assert!(args(&["--colour"]).unwrap_err().contains("--colour"));
        assert_eq!(args(&["--heartbeat", "1ms"]).unwrap().heartbeat, Duration::from_millis(100));
        assert!(args(&["--max-watches-per-client", "0"]).unwrap_err().contains("--max-watches-per-client"));
    }

    #[test]
    fn the_ca_and_its_tokens_go_together_and_the_identity_needs_them() {
        for one in [["--ca", "ca"], ["--join-token-file", "tokens"]] {
            let err = args(&one).unwrap_err();
            assert!(err.contains("--ca <DIR>") && err.contains("--join-token-file <FILE>"), "{err}");
        }
        let err = args(&["--identity", "spiffe://cluster.local/ns/weft/sa/weft-control"]).unwrap_err();
        assert!(err.contains("--ca <DIR>"), "{err}");
        assert!(
            args(&["--ca", "ca", "--join-token-file", "t", "--identity", "nope"]).unwrap_err().contains("--identity")
        );
        let a =
            args(&["--ca", "ca", "--join-token-file", "t", "--tls-san", "a.svc", "--tls-san", "b.svc,c.svc"]).unwrap();
        assert_eq!(a.tls_sans, ["a.svc", "b.svc", "c.svc"]);
    }

    #[test]
    fn kubernetes_options_imply_kubernetes() {
        use registry::kubernetes::KubeOptions;
        assert_eq!(args(&[]).unwrap().kube.options(), None);
        assert_eq!(args(&["--kubernetes"]).unwrap().kube.options(), Some(KubeOptions::default()));
        let a =
            args(&["--kube-policy", "--kube-namespaces", "shop, ops,", "--kube-api", "http://127.0.0.1:8001"]).unwrap();
        assert_eq!(
            a.kube.options(),
            Some(KubeOptions {
                api: Some("http://127.0.0.1:8001".into()),
                namespaces: vec!["shop".into(), "ops".into()],
                policy: true,
            })
        );
        assert!(args(&["--kube-api"]).unwrap_err().contains("a value is required for '--kube-api <URL>'"));
    }
}
