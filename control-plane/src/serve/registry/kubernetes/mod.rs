//! The Kubernetes registry (source `kubernetes`): Services and EndpointSlices watched through
//! kube-rs and fed to the catalog.
//!
//! kube-rs's watcher does the list/watch protocol (paginated lists, bookmarks, resuming from the
//! last resourceVersion after a dropped connection, relisting after 410 Gone, backoff). What is
//! done here:
//! - a (re)list arrives as `Init`, `InitApply`…, `InitDone`; the objects are buffered and swapped
//!   in whole at `InitDone`, so a relist never shows the catalog an empty or half-listed cluster;
//! - nothing is published until both kinds have been listed once;
//! - an error (API server down, 403, 5xx) keeps the last known state and marks the source stale
//!   (`weft_control_registry_stale{source="kubernetes"}`, or `"kubernetes-policy"` for the policy
//!   objects' watches) until the watch delivers again;
//! - every change recomputes the whole translation and replaces the source's instances in the
//!   catalog, which publishes only what differs. Cost is linear in the watched cluster per
//!   event; fine for thousands of Services, to be made incremental when a cluster needs it.

pub mod objects;
pub mod translate;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::Registry;
use crate::serve::catalog::Catalog;
use translate::{ObjectKey, translate};

pub const SOURCE: &str = "kubernetes";
/// The stale source of the policy objects' watches.
pub const POLICY_SOURCE: &str = "kubernetes-policy";

/// Where the API server is and what to watch (`weft serve --kubernetes` flags).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeOptions {
    /// The API server's URL, reached without credentials (a `kubectl proxy`, a test's fake);
    /// None: in-cluster (the pod's service account and `KUBERNETES_SERVICE_HOST`).
    pub api: Option<String>,
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// Also take policy from the cluster: the `weft.dev/v1alpha1` objects (`--kube-policy`).
    pub policy: bool,
}

#[derive(Default)]
struct State {
    services: BTreeMap<ObjectKey, KubeService>,
    slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Policy objects by kind.
    objects: BTreeMap<String, BTreeMap<ObjectKey, DynamicObject>>,
    decoded: objects::Decoded,
    /// Per role, the watches (one per kind and namespace) and those that completed a first
    /// list: a role publishes once all of its watches have listed.
    watches: BTreeMap<Role, (usize, usize)>,
    /// Per role, the watches whose last event was an error.
    failing: BTreeMap<Role, usize>,
}

/// What a watch feeds: the registry (Services and EndpointSlices) or the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Registry,
    Policy,
}

impl Role {
    /// The source a role's staleness is reported under: a policy watch that fails (the CRDs
    /// are not installed, RBAC refuses) does not make the endpoints look stale.
    fn source(self) -> &'static str {
        match self {
            Role::Registry => SOURCE,
            Role::Policy => POLICY_SOURCE,
        }
    }
}

impl State {
    fn ready(&self, role: Role) -> bool {
        self.watches.get(&role).is_some_and(|(all, listed)| listed >= all)
    }
}

pub struct KubernetesRegistry {
    catalog: Arc<Catalog>,
    options: KubeOptions,
    client: Client,
    state: Mutex<State>,
}

/// The API client `weft serve --kubernetes` uses for everything it asks the API server (the
/// watches here, the CA's TokenReviews): `--kube-api` without credentials, else in-cluster.
pub fn client(options: &KubeOptions) -> Result<Client, String> {
    let config = match &options.api {
        Some(url) => {
            let uri = url.parse().map_err(|e| format!("--kube-api {url:?}: {e}"))?;
            kube::Config::new(uri)
        }
        None => kube::Config::incluster()
            .map_err(|e| format!("not inside a pod, or its service account is missing ({e}); give --kube-api"))?,
    };
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key<K: Resource>(o: &K) -> ObjectKey {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Which of the state's maps a watch feeds.
type Select<K> = Box<dyn for<'a> Fn(&'a mut State) -> &'a mut BTreeMap<ObjectKey, K> + Send + Sync>;

/// A watch: its kind (for logs), namespace (None: all), API, map and role.
struct Watch<K: Clone> {
    kind: String,
    namespace: Option<String>,
    api: Api<K>,
    select: Select<K>,
    role: Role,
}

impl KubernetesRegistry {
    /// `client` comes from [`client`], shared with the rest of `weft serve`.
    pub fn new(catalog: Arc<Catalog>, options: KubeOptions, client: Client) -> Arc<KubernetesRegistry> {
        Arc::new(KubernetesRegistry { catalog, options, client, state: Mutex::new(State::default()) })
    }

    /// The namespaces to watch, one API each: None is the whole cluster.
    fn namespaces(&self) -> Vec<Option<String>> {
        if self.options.namespaces.is_empty() {
            vec![None]
        } else {
            self.options.namespaces.iter().cloned().map(Some).collect()
        }
    }

    /// Watches of a typed kind (Services, EndpointSlices), one per namespace.
    fn typed<K>(&self, client: &Client, select: fn(&mut State) -> &mut BTreeMap<ObjectKey, K>) -> Vec<Watch<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + 'static,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).to_string();
        self.namespaces()
            .into_iter()
            .map(|ns| Watch {
                kind: kind.clone(),
                api: match &ns {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                },
                namespace: ns,
                select: Box::new(select),
                role: Role::Registry,
            })
            .collect()
    }

    /// Watches of the policy kinds, one per kind and namespace.
    fn policy(&self, client: &Client) -> Vec<Watch<DynamicObject>> {
        let mut out = Vec::new();
        for (kind, plural) in objects::KINDS {
            let resource = objects::api_resource(kind, plural);
            for ns in self.namespaces() {
                let api = match &ns {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                    None => Api::all_with(client.clone(), &resource),
                };
                let select: Select<DynamicObject> = Box::new(move |s| s.objects.entry(kind.to_string()).or_default());
                out.push(Watch { kind: kind.to_string(), namespace: ns, api, select, role: Role::Policy });
            }
        }
        out
    }

    /// Follows one watch.
    async fn watch<K>(self: Arc<Self>, w: Watch<K>)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let Watch { kind, namespace, api, select, role } = w;
        let mut stream = std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
        let mut buffer: Option<BTreeMap<ObjectKey, K>> = None;
        let mut listed = false;
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    if !failing {
                        tracing::warn!(%kind, error = %e, "Kubernetes watch failed; serving the last known state until it recovers");
                        failing = true;
                        self.set_failing(role, 1);
                    }
                    continue;
                }
            };
            // `Init` and `InitApply` come before a (re)list is complete, and a later page can
            // still fail: the source is current again only once the list is done or the watch
            // delivers a change.
            if failing && matches!(event, Event::InitDone | Event::Apply(_) | Event::Delete(_)) {
                tracing::info!(%kind, "Kubernetes watch recovered");
                failing = false;
                self.set_failing(role, -1);
            }
            match event {
                Event::Init => buffer = Some(BTreeMap::new()),
                Event::InitApply(o) => {
                    buffer.get_or_insert_default().insert(key(&o), o);
                }
                Event::InitDone => {
                    let fresh = buffer.take().unwrap_or_default();
                    let mut state = lock(&self.state);
                    // This watch covers one namespace or all: replace only what it covers.
                    let map = select(&mut state);
                    map.retain(|k, _| namespace.as_ref().is_some_and(|ns| *ns != k.0));
                    map.extend(fresh);
                    if !listed {
                        listed = true;
                        state.watches.entry(role).or_default().1 += 1;
                    }
                    self.publish(&mut state, role);
                }
                Event::Apply(o) => {
                    let mut state = lock(&self.state);
                    select(&mut state).insert(key(&o), o);
                    self.publish(&mut state, role);
                }
                Event::Delete(o) => {
                    let mut state = lock(&self.state);
                    select(&mut state).remove(&key(&o));
                    self.publish(&mut state, role);
                }
            }
        }
    }

    fn set_failing(&self, role: Role, delta: isize) {
        let mut state = lock(&self.state);
        let failing = state.failing.entry(role).or_default();
        *failing = failing.saturating_add_signed(delta);
        self.catalog.set_stale(role.source(), *failing > 0);
    }

    fn publish(&self, state: &mut State, role: Role) {
        if !state.ready(role) {
            return;
        }
        if role == Role::Policy {
            let (docs, problems) = state.decoded.update(&state.objects);
            for p in &problems {
                tracing::warn!(problem = %p, "policy object rejected; its last good version (if any) keeps serving");
            }
            if self.catalog.set_policy_objects(docs, problems) {
                tracing::info!(version = self.catalog.version(), "policy from the cluster applied");
            }
            return;
        }
        let t = translate(&state.services, &state.slices);
        // The Services first: an endpoint of a Service that is new to the policy then arrives
        // with the Service's ports and protocol already known.
        if self.catalog.set_cluster_services(t.services) {
            tracing::debug!(services = state.services.len(), "Kubernetes Services composed into the policy");
        }
        if self.catalog.replace_source_with_pods(SOURCE, t.endpoints, Some(t.pods)) {
            tracing::debug!(
                services = state.services.len(),
                slices = state.slices.len(),
                "Kubernetes endpoints published"
            );
        }
    }
}

impl Registry for KubernetesRegistry {
    fn source(&self) -> &'static str {
        SOURCE
    }

    fn start(self: Arc<Self>) -> Result<(), String> {
        let client = self.client.clone();
        let services = self.typed::<KubeService>(&client, |s| &mut s.services);
        let slices = self.typed::<EndpointSlice>(&client, |s| &mut s.slices);
        let policy = if self.options.policy { self.policy(&client) } else { Vec::new() };
        {
            let mut state = lock(&self.state);
            state.watches.insert(Role::Registry, (services.len() + slices.len(), 0));
            if !policy.is_empty() {
                state.watches.insert(Role::Policy, (policy.len(), 0));
            }
        }
        self.catalog.set_stale(SOURCE, false);
        if self.options.policy {
            self.catalog.set_stale(POLICY_SOURCE, false);
        }
        for w in services {
            tokio::spawn(self.clone().watch(w));
        }
        for w in slices {
            tokio::spawn(self.clone().watch(w));
        }
        for w in policy {
            tokio::spawn(self.clone().watch(w));
        }
        Ok(())
    }
}
