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
//!   (`weft_control_registry_stale{source="kubernetes"}`) until the watch delivers again;
//! - every change recomputes the whole translation and replaces the source's instances in the
//!   catalog, which publishes only what differs. Cost is linear in the watched cluster per
//!   event; fine for thousands of Services, to be made incremental when a cluster needs it.

pub mod translate;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::Registry;
use crate::serve::catalog::Catalog;
use translate::{ObjectKey, translate};

pub const SOURCE: &str = "kubernetes";

/// Where the API server is and what to watch (`weft serve --kubernetes` flags).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeOptions {
    /// The API server's URL, reached without credentials (a `kubectl proxy`, a test's fake);
    /// None: in-cluster (the pod's service account and `KUBERNETES_SERVICE_HOST`).
    pub api: Option<String>,
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<ObjectKey, KubeService>,
    slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Watches (one per kind and namespace) that have completed a first list.
    listed: usize,
    watches: usize,
    /// Watches whose last event was an error.
    failing: usize,
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
type Select<K> = fn(&mut State) -> &mut BTreeMap<ObjectKey, K>;

impl KubernetesRegistry {
    /// `client` comes from [`client`], shared with the rest of `weft serve`.
    pub fn new(catalog: Arc<Catalog>, options: KubeOptions, client: Client) -> Arc<KubernetesRegistry> {
        Arc::new(KubernetesRegistry { catalog, options, client, state: Mutex::new(State::default()) })
    }

    /// The APIs to watch for `K`: the whole cluster, or one per configured namespace (named).
    fn apis<K>(&self, client: &Client) -> Vec<(Option<String>, Api<K>)>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        if self.options.namespaces.is_empty() {
            vec![(None, Api::all(client.clone()))]
        } else {
            self.options.namespaces.iter().map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns))).collect()
        }
    }

    /// Follows one watch of `K` over `namespace` (None: all).
    async fn watch<K>(self: Arc<Self>, namespace: Option<String>, api: Api<K>, select: Select<K>)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).to_string();
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
                        self.set_failing(1);
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
                self.set_failing(-1);
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
                        state.listed += 1;
                    }
                    self.publish(&state);
                }
                Event::Apply(o) => {
                    let mut state = lock(&self.state);
                    select(&mut state).insert(key(&o), o);
                    self.publish(&state);
                }
                Event::Delete(o) => {
                    let mut state = lock(&self.state);
                    select(&mut state).remove(&key(&o));
                    self.publish(&state);
                }
            }
        }
    }

    fn set_failing(&self, delta: isize) {
        let mut state = lock(&self.state);
        state.failing = state.failing.saturating_add_signed(delta);
        self.catalog.metrics.registry_stale.with_label_values(&[SOURCE]).set(i64::from(state.failing > 0));
    }

    fn publish(&self, state: &State) {
        if state.listed < state.watches {
            return;
        }
        let t = translate(&state.services, &state.slices);
        if self.catalog.replace_source(SOURCE, t.endpoints) {
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
        let services = self.apis::<KubeService>(&client);
        let slices = self.apis::<EndpointSlice>(&client);
        lock(&self.state).watches = services.len() + slices.len();
        self.catalog.metrics.registry_stale.with_label_values(&[SOURCE]).set(0);
        for (ns, api) in services {
            tokio::spawn(self.clone().watch(ns, api, |s| &mut s.services));
        }
        for (ns, api) in slices {
            tokio::spawn(self.clone().watch(ns, api, |s| &mut s.slices));
        }
        Ok(())
    }
}
