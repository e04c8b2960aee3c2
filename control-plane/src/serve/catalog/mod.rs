//! The control plane's state: the last good policy, every registered instance, the version
//! counter and the open watch streams. Each change gets the next version and is pushed, as an
//! endpoint-level delta, to the streams whose scope it touches.
//!
//! Pushes never wait: each stream has a bounded queue, and a stream whose queue is full is
//! marked for a resync (its backlog is dropped and it gets a fresh snapshot when it reads
//! again), so one slow proxy costs the others nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use weft_api::discovery::{Delta, EndpointChange, Snapshot, WatchMessage};
use weft_api::{Document, EndpointSpec};

use super::metrics::ControlMetrics;
use super::policy::{Policy, PolicyInputs};
use super::registry::kubernetes::objects;

mod merge;
mod report;
pub mod traffic;

/// Messages queued per stream before the stream is marked for a resync.
pub const STREAM_BUFFER: usize = 64;
/// Publish times kept for the lag shown by `weft status`.
const PUBLISHED_KEPT: usize = 16 * 1024;
/// Unacked versions remembered per stream (a proxy that never acks costs at most this much).
const UNACKED_KEPT: usize = 1024;

/// One address of a service, as each registry source that reports it says. The first claim
/// (in the order the sources reported it) is the endpoint proxies see; the others wait behind
/// it, so a source withdrawing an address that another still reports does not remove it.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    first: (&'static str, EndpointSpec),
    /// Other sources reporting the same address: rare, so empty (no allocation) as a rule.
    others: Vec<(&'static str, EndpointSpec)>,
}

/// What withdrawing a source's claim left.
enum Withdrawn {
    NotClaimed,
    Gone,
    Remains,
}

impl Instance {
    fn new(source: &'static str, spec: EndpointSpec) -> Instance {
        Instance { first: (source, spec), others: Vec::new() }
    }

    pub fn spec(&self) -> &EndpointSpec {
        &self.first.1
    }

    /// What `source` says of this address, if it says anything.
    pub fn claim_of(&self, source: &str) -> Option<&EndpointSpec> {
        std::iter::once(&self.first).chain(&self.others).find(|(s, _)| *s == source).map(|(_, spec)| spec)
    }

    pub fn sources(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.first.0).chain(self.others.iter().map(|(s, _)| *s))
    }

    /// Sets `source`'s claim; true when `source` had none.
    fn claim(&mut self, source: &'static str, spec: EndpointSpec) -> bool {
        if self.first.0 == source {
            self.first.1 = spec;
        } else if let Some(c) = self.others.iter_mut().find(|(s, _)| *s == source) {
            c.1 = spec;
        } else {
            self.others.push((source, spec));
            return true;
        }
        false
    }

    fn withdraw(&mut self, source: &'static str) -> Withdrawn {
        if self.first.0 == source {
            if self.others.is_empty() {
                return Withdrawn::Gone;
            }
            self.first = self.others.remove(0);
        } else if let Some(i) = self.others.iter().position(|(s, _)| *s == source) {
            self.others.remove(i);
        } else {
            return Withdrawn::NotClaimed;
        }
        Withdrawn::Remains
    }
}

/// What a stream's queue carries.
pub enum Item {
    Line {
        version: u64,
        bytes: Bytes,
        published: Instant,
    },
    /// Wakes the stream to look at its resync flag.
    Resync,
}

/// 128 bits from the system's CSPRNG, as hex: a session id nobody can guess.
fn secret_session_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system random number generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One open watch stream.
pub struct Subscriber {
    /// The stream's secret: 128 random bits, known only to the proxy that opened it (it comes
    /// in the stream's snapshot). On plaintext it is what authorises acks and leaves.
    pub session: String,
    /// A name for the stream that can be shown (`weft status`); never a credential.
    pub public_id: String,
    /// The SPIFFE id of the client certificate the stream was opened with (TLS): acks and
    /// leaves for it must come from the same identity.
    pub identity: Option<String>,
    /// `name.namespace` of the proxy's service.
    pub self_key: String,
    pub name: String,
    pub address: Option<SocketAddr>,
    tx: mpsc::Sender<Item>,
    resync: AtomicBool,
    /// The stream fell behind (its queue filled): the next resync counts in `weft status`'s
    /// RESYNCS. Resyncs for a policy or scope change are ordinary and do not.
    fell_behind: AtomicBool,
    progress: Mutex<Progress>,
    connected_at: Instant,
}

impl Progress {
    fn push(&mut self, version: u64, published: Option<Instant>) {
        self.unacked.push_back((version, published));
        while self.unacked.len() > UNACKED_KEPT {
            self.unacked.pop_front();
        }
    }
}

#[derive(Default)]
struct Progress {
    sent: u64,
    acked: u64,
    /// Versions sent and not acked yet, with their publish time (None: not timed, e.g. the
    /// first snapshot of a stream, which measures connection set-up rather than convergence).
    unacked: VecDeque<(u64, Option<Instant>)>,
    resyncs: u64,
    /// The proxy's certificate expiry as it last reported it (Unix seconds).
    cert_not_after: Option<u64>,
    /// Its traffic reports of the last [`traffic::WINDOW`], oldest first.
    reports: VecDeque<(Instant, Vec<weft_api::discovery::TrafficStat>)>,
    proxy_version: Option<String>,
    mtls: Option<String>,
}

impl Subscriber {
    /// Whether a resync was requested; clears the request.
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }

    /// Records that `version` is being sent; false when the stream already has it (a delta
    /// that was queued before a snapshot that included it).
    pub fn accept(&self, version: u64, published: Option<Instant>) -> bool {
        let mut p = lock(&self.progress);
        if version <= p.sent {
            return false;
        }
        p.sent = version;
        p.push(version, published);
        true
    }

    pub fn sent_version(&self) -> u64 {
        lock(&self.progress).sent
    }

    fn request_resync(&self) -> bool {
        let first = !self.resync.swap(true, Ordering::AcqRel);
        // A full queue already holds something that wakes the stream.
        let _ = self.tx.try_send(Item::Resync);
        first
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Catalog {
    inner: Mutex<Inner>,
    pub metrics: ControlMetrics,
    /// Snapshots wait until this instant after start, so proxies reconnecting to a restarted
    /// control plane are not sent a mesh missing the instances that have not re-registered yet.
    warm_at: Instant,
    next_session: AtomicU64,
    epoch: u64,
    /// Certificate lifetime the mesh issues (`--cert-ttl`); a proxy whose certificate has less
    /// than a fifth of it left missed its renewal (proxies renew at 70 %).
    cert_ttl_secs: AtomicU64,
    ca_not_after: AtomicU64,
    /// What the policy is composed of (files, cluster Services); taken before `inner`.
    inputs: Mutex<PolicyInputs>,
}

struct Inner {
    version: u64,
    last_published: Instant,
    policy: Arc<Policy>,
    policy_errors: Vec<String>,
    /// Registries whose source cannot be read now (their last known instances serve).
    stale: BTreeSet<&'static str>,
    instances: BTreeMap<String, BTreeMap<SocketAddr, Instance>>,
    /// Per service, the pod IPs the cluster lists (any condition): for those services a meshed
    /// pod is published once (see merge.rs).
    pod_ips: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Services with a Service document or a registration (registry-only services stay known
    /// once seen, so an instance flapping does not resync every stream).
    known: BTreeSet<String>,
    scopes: HashMap<String, Arc<BTreeSet<String>>>,
    subscribers: HashMap<String, (Arc<Subscriber>, Arc<BTreeSet<String>>)>,
    published: VecDeque<(u64, Instant)>,
    per_source: BTreeMap<&'static str, i64>,
}

impl Inner {
    fn scope(&mut self, self_key: &str) -> Arc<BTreeSet<String>> {
        if let Some(s) = self.scopes.get(self_key) {
            return s.clone();
        }
        let mut known = self.known.clone();
        known.insert(self_key.to_string());
        let scope = Arc::new(self.policy.scope(&known, self_key));
        self.scopes.insert(self_key.to_string(), scope.clone());
        scope
    }

    fn bump(&mut self) -> (u64, Instant) {
        self.version += 1;
        self.last_published = Instant::now();
        self.published.push_back((self.version, self.last_published));
        while self.published.len() > PUBLISHED_KEPT {
            self.published.pop_front();
        }
        (self.version, self.last_published)
    }

    /// Recomputes every stream's scope; streams whose scope changed are resynced.
    fn rescope(&mut self, all: bool, metrics: &ControlMetrics) {
        self.scopes.clear();
        let sessions: Vec<String> = self.subscribers.keys().cloned().collect();
        for session in sessions {
            let self_key = self.subscribers[&session].0.self_key.clone();
            let scope = self.scope(&self_key);
            let entry = self.subscribers.get_mut(&session).expect("listed above");
            if all || entry.1 != scope {
                entry.1 = scope;
                if entry.0.request_resync() {
                    metrics.resyncs.with_label_values(&[if all { "policy" } else { "scope" }]).inc();
                }
            }
        }
    }
}

/// What a snapshot needs from the locked state: only the endpoint lists are copied under the
/// lock; documents are picked and everything is serialized after it is released.
struct SnapshotParts {
    version: u64,
    policy: Arc<Policy>,
    scope: Arc<BTreeSet<String>>,
    endpoints: BTreeMap<String, Vec<EndpointSpec>>,
}

impl SnapshotParts {
    fn take(inner: &Inner, scope: Arc<BTreeSet<String>>) -> SnapshotParts {
        let endpoints = scope
            .iter()
            .map(|key| {
                let list = inner
                    .instances
                    .get(key)
                    .map(|m| merge::effective(m, inner.pod_ips.get(key)).into_values().collect())
                    .unwrap_or_default();
                (key.clone(), list)
            })
            .collect();
        SnapshotParts { version: inner.version, policy: inner.policy.clone(), scope, endpoints }
    }

    fn finish(self, self_key: &str, session: &str) -> Snapshot {
        Snapshot {
            version: self.version,
            session: session.to_string(),
            documents: self.policy.documents_for(&self.scope, self_key),
            endpoints: self.endpoints,
        }
    }
}

/// Versions start at the start time in microseconds, so they keep growing across control
/// plane restarts (as long as it publishes under a million changes a second on average).
fn initial_version() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

impl Catalog {
    pub fn new(warmup: Duration) -> Arc<Catalog> {
        let version = initial_version();
        let metrics = ControlMetrics::new();
        metrics.config_version.set(version as i64);
        Arc::new(Catalog {
            inner: Mutex::new(Inner {
                version,
                last_published: Instant::now(),
                policy: Arc::new(Policy::default()),
                policy_errors: Vec::new(),
                stale: BTreeSet::new(),
                instances: BTreeMap::new(),
                pod_ips: BTreeMap::new(),
                known: BTreeSet::new(),
                scopes: HashMap::new(),
                subscribers: HashMap::new(),
                published: VecDeque::new(),
                per_source: BTreeMap::new(),
            }),
            metrics,
            warm_at: Instant::now() + warmup,
            next_session: AtomicU64::new(1),
            epoch: version,
            cert_ttl_secs: AtomicU64::new(24 * 3600),
            ca_not_after: AtomicU64::new(0),
            inputs: Mutex::new(PolicyInputs::default()),
        })
    }

    /// The certificate lifetime `weft status` judges "near expiry" against.
    /// When the CA's own certificate expires (Unix seconds), shown by `weft status`.
    pub fn set_ca_not_after(&self, at: u64) {
        self.ca_not_after.store(at, Ordering::Relaxed);
    }

    pub fn ca_not_after(&self) -> Option<u64> {
        Some(self.ca_not_after.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    pub fn set_cert_ttl(&self, ttl: Duration) {
        self.cert_ttl_secs.store(ttl.as_secs().max(1), Ordering::Relaxed);
    }

    /// Seconds left before `not_after` (negative once expired) and whether that is under a
    /// fifth of the certificate lifetime.
    fn cert_expiry(&self, not_after: u64) -> (f64, bool) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
        let left = not_after as f64 - now;
        (left, left < self.cert_ttl_secs.load(Ordering::Relaxed) as f64 / 5.0)
    }

    /// When snapshots may be sent (the end of the start-up registration grace).
    pub fn warm_at(&self) -> Instant {
        self.warm_at
    }

    pub fn version(&self) -> u64 {
        lock(&self.inner).version
    }

    /// Takes a valid policy folder's documents and composes them with the cluster's Services.
    /// Returns false when the policy did not change (a file touched, only comments edited).
    pub fn set_policy_files(&self, files: Vec<(String, Vec<Document>)>) -> bool {
        let mut inputs = lock(&self.inputs);
        inputs.set_files(files);
        inputs.file_problems.clear();
        self.compose(&mut inputs)
    }

    /// Records why the policy folder's last load was refused (its previous documents keep
    /// serving); false when these are the problems already recorded (say them once).
    pub fn set_policy_file_problems(&self, problems: Vec<String>) -> bool {
        let mut inputs = lock(&self.inputs);
        if inputs.file_problems == problems {
            return false;
        }
        inputs.file_problems = problems;
        self.set_policy_errors(inputs.problems());
        true
    }

    /// Takes the policy objects applied to the cluster (decoded, one "file" each) and the
    /// problems of those that do not decode. Returns false when the policy did not change.
    pub fn set_policy_objects(&self, objects: Vec<(String, Vec<Document>)>, problems: Vec<String>) -> bool {
        let mut inputs = lock(&self.inputs);
        let changed_problems = inputs.object_problems != problems;
        inputs.object_problems = problems;
        if inputs.set_objects(objects) {
            return self.compose(&mut inputs);
        }
        if changed_problems {
            self.set_policy_errors(inputs.problems());
        }
        false
    }

    /// Takes the Services a cluster registry knows and composes them with the files. Returns
    /// false when the policy did not change.
    pub fn set_cluster_services(&self, services: Vec<weft_api::Service>) -> bool {
        let mut inputs = lock(&self.inputs);
        inputs.set_cluster(services) && self.compose(&mut inputs)
    }

    /// Builds the policy from its inputs and serves it if it holds together. The files were
    /// checked as a set and each object on its own; the whole is checked again. A policy object
    /// that breaks a rule across documents (a Route to a Service nobody declares) keeps its
    /// version in the last served policy (or is left out if it had none) and is reported; if
    /// the cluster's Services do not fit, the policy serves without them; if
    /// nothing fits, the last good policy keeps serving. Every problem shows in `weft status`
    /// and `weft_control_policy_errors`.
    fn compose(&self, inputs: &mut PolicyInputs) -> bool {
        // Each input was checked on its own (files as a set, objects and cluster Services one by
        // one): what remains is the rules across all of them.
        let check = |files: &[(String, Vec<Document>)]| weft_api::validate::validate_set(files);
        let (files, dropped) = inputs.compose(&BTreeSet::new(), true);
        for d in &dropped {
            tracing::warn!(problem = %d, "left out of the policy");
        }
        let mut problems = Vec::new();
        let mut chosen = None;
        match check(&files) {
            Ok(()) => chosen = Some(files),
            Err(found) => {
                let held: BTreeSet<String> =
                    found.0.iter().filter(|d| inputs.is_object(&d.file)).map(|d| d.file.clone()).collect();
                let retry = (!held.is_empty()).then(|| inputs.compose(&held, true).0);
                if let Some(files) = retry.filter(|f| check(f).is_ok()) {
                    let broken: Vec<&weft_api::Diagnostic> =
                        found.0.iter().filter(|d| held.contains(&d.file)).collect();
                    for d in &broken {
                        tracing::warn!(problem = %objects::describe(d), "policy object held back: it does not fit the rest of the policy; its last good version (if any) keeps serving");
                    }
                    problems.extend(broken.into_iter().map(|d| {
                        format!(
                            "{} (held back: its version in the last good policy, if any, serves)",
                            objects::describe(d)
                        )
                    }));
                    chosen = Some(files);
                } else {
                    let without = inputs.compose(&BTreeSet::new(), false).0;
                    match check(&without) {
                        Ok(()) => {
                            tracing::error!(problems = %found, "the cluster's Services do not fit the policy; it serves without them");
                            chosen = Some(without);
                        }
                        Err(_) => problems.extend(found.0.iter().map(ToString::to_string)),
                    }
                }
            }
        }
        let changed = chosen.is_some_and(|files| {
            inputs.served(&files);
            self.set_policy(Policy::new(files))
        });
        inputs.set_problems = problems;
        // `set_policy` clears the recorded problems: record those that remain.
        self.set_policy_errors(inputs.problems());
        changed
    }

    /// Replaces the policy (already validated): every stream gets a fresh snapshot. Returns
    /// false when nothing changed (a file touched, or only comments edited).
    pub fn set_policy(&self, policy: Policy) -> bool {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        self.metrics.policy_errors.set(0);
        inner.policy_errors.clear();
        if inner.policy.documents() == policy.documents() && inner.version != self.epoch {
            return false;
        }
        inner.known.retain(|k| inner.instances.contains_key(k));
        let declared: Vec<String> = policy.declared_services().map(String::from).collect();
        inner.known.extend(declared);
        inner.policy = Arc::new(policy);
        let (version, _) = inner.bump();
        self.metrics.config_version.set(version as i64);
        inner.rescope(true, &self.metrics);
        true
    }

    /// Records a rejected policy load; the last good policy keeps serving.
    /// Records why the last policy load was rejected; false when these are the problems
    /// already recorded (the same bad change seen twice: say it once).
    pub fn set_policy_errors(&self, errors: Vec<String>) -> bool {
        self.metrics.policy_errors.set(errors.len() as i64);
        let mut inner = lock(&self.inner);
        if inner.policy_errors == errors {
            return false;
        }
        inner.policy_errors = errors;
        true
    }

    /// Marks `source` as unreadable (its last known instances keep serving) or current again,
    /// in `weft status` and `weft_control_registry_stale`.
    pub fn set_stale(&self, source: &'static str, stale: bool) {
        let mut inner = lock(&self.inner);
        if stale {
            inner.stale.insert(source);
        } else {
            inner.stale.remove(source);
        }
        self.metrics.registry_stale.with_label_values(&[source]).set(i64::from(stale));
    }

    /// Adds or updates one instance. Returns whether anything changed.
    pub fn upsert(&self, source: &'static str, service: &str, spec: EndpointSpec) -> bool {
        self.apply(source, vec![(service.to_string(), vec![spec], vec![])], None)
    }

    /// Removes one instance if `source` registered it.
    pub fn remove(&self, source: &'static str, service: &str, address: SocketAddr) -> bool {
        self.apply(source, vec![(service.to_string(), vec![], vec![address])], None)
    }

    /// Makes `source`'s instances exactly `now` (by service key), as one version.
    pub fn replace_source(&self, source: &'static str, now: BTreeMap<String, Vec<EndpointSpec>>) -> bool {
        self.replace_source_with_pods(source, now, None)
    }

    /// Like [`Catalog::replace_source`], for a cluster registry that also says which pod IPs
    /// each service has (whatever their readiness), in the same version: see merge.rs.
    pub fn replace_source_with_pods(
        &self,
        source: &'static str,
        mut now: BTreeMap<String, Vec<EndpointSpec>>,
        pods: Option<BTreeMap<String, BTreeSet<IpAddr>>>,
    ) -> bool {
        let mut changes = Vec::new();
        {
            let inner = lock(&self.inner);
            for (service, instances) in &inner.instances {
                let removed: Vec<SocketAddr> = instances
                    .iter()
                    .filter(|(addr, i)| {
                        i.sources().any(|s| s == source)
                            && !now.get(service).is_some_and(|list| list.iter().any(|e| e.address == **addr))
                    })
                    .map(|(addr, _)| *addr)
                    .collect();
                let upserts = now.remove(service).unwrap_or_default();
                if !removed.is_empty() || !upserts.is_empty() {
                    changes.push((service.clone(), upserts, removed));
                }
            }
            changes.extend(now.into_iter().map(|(service, upserts)| (service, upserts, vec![])));
        }
        self.apply(source, changes, pods)
    }

    /// Applies changes (and, from a cluster registry, the services' pod IPs) as one version;
    /// only real changes are published.
    fn apply(
        &self,
        source: &'static str,
        mut changes: Vec<(String, Vec<EndpointSpec>, Vec<SocketAddr>)>,
        pods: Option<BTreeMap<String, BTreeSet<IpAddr>>>,
    ) -> bool {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        if let Some(new) = &pods {
            // A service whose pods change is looked at even when none of its instances does.
            let old = &inner.pod_ips;
            let moved: BTreeSet<&String> =
                old.keys().chain(new.keys()).filter(|k| old.get(*k) != new.get(*k)).collect();
            for service in moved {
                if !changes.iter().any(|(s, _, _)| s == service) {
                    changes.push((service.clone(), vec![], vec![]));
                }
            }
        }
        let mut effective: Vec<EndpointChange> = Vec::new();
        let mut new_service = false;
        for (service, upserts, removes) in changes {
            let mut change = EndpointChange { service: service.clone(), ..EndpointChange::default() };
            let pods_after = match &pods {
                Some(new) => new.get(&service),
                None => inner.pod_ips.get(&service),
            };
            let merged = inner.pod_ips.contains_key(&service) || pods_after.is_some();
            let instances = inner.instances.entry(service.clone()).or_default();
            let before = merged.then(|| merge::effective(instances, inner.pod_ips.get(&service)));
            let mut delta_count: Vec<(&'static str, i64)> = Vec::new();
            for spec in upserts {
                let Some(entry) = instances.get_mut(&spec.address) else {
                    instances.insert(spec.address, Instance::new(source, spec.clone()));
                    delta_count.push((source, 1));
                    change.upsert.push(spec);
                    continue;
                };
                let before = entry.spec().clone();
                if entry.claim(source, spec) {
                    delta_count.push((source, 1));
                }
                if *entry.spec() != before {
                    change.upsert.push(entry.spec().clone());
                }
            }
            for addr in removes {
                let Some(entry) = instances.get_mut(&addr) else { continue };
                let before = entry.spec().clone();
                match entry.withdraw(source) {
                    Withdrawn::NotClaimed => {}
                    Withdrawn::Gone => {
                        instances.remove(&addr);
                        delta_count.push((source, -1));
                        change.remove.push(addr);
                    }
                    Withdrawn::Remains => {
                        delta_count.push((source, -1));
                        if *entry.spec() != before {
                            change.upsert.push(entry.spec().clone());
                        }
                    }
                }
            }
            if let Some(before) = before {
                let after = merge::effective(instances, pods_after);
                (change.upsert, change.remove) = merge::diff(&before, &after);
            }
            if instances.is_empty() {
                inner.instances.remove(&service);
            }
            for (src, d) in delta_count {
                *inner.per_source.entry(src).or_default() += d;
            }
            if !change.upsert.is_empty() || !change.remove.is_empty() {
                new_service |= inner.known.insert(service);
                effective.push(change);
            }
        }
        if let Some(new) = pods {
            inner.pod_ips = new;
        }
        if effective.is_empty() {
            return false;
        }
        for (src, n) in &inner.per_source {
            self.metrics.registry_instances.with_label_values(&[src]).set(*n);
        }
        let (version, published) = inner.bump();
        self.metrics.config_version.set(version as i64);
        if new_service {
            inner.rescope(false, &self.metrics);
        }
        let all_bytes = Bytes::from(WatchMessage::Delta(Delta { version, changes: effective.clone() }).to_line());
        for (sub, scope) in inner.subscribers.values() {
            let mine: Vec<&EndpointChange> = effective.iter().filter(|c| scope.contains(&c.service)).collect();
            if mine.is_empty() {
                continue;
            }
            let bytes = if mine.len() == effective.len() {
                all_bytes.clone()
            } else {
                let changes = mine.into_iter().cloned().collect();
                Bytes::from(WatchMessage::Delta(Delta { version, changes }).to_line())
            };
            match sub.tx.try_send(Item::Line { version, bytes, published }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.fell_behind.store(true, Ordering::Release);
                    if sub.request_resync() {
                        self.metrics.resyncs.with_label_values(&["overflow"]).inc();
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        true
    }

    /// Opens a stream for a proxy of `self_key`.
    pub fn subscribe(
        &self,
        self_key: String,
        name: String,
        address: Option<SocketAddr>,
    ) -> (Arc<Subscriber>, mpsc::Receiver<Item>) {
        self.subscribe_as(self_key, name, address, None)
    }

    /// Opens a stream for a proxy of `self_key` that proved `identity` with its certificate.
    pub fn subscribe_as(
        &self,
        self_key: String,
        name: String,
        address: Option<SocketAddr>,
        identity: Option<String>,
    ) -> (Arc<Subscriber>, mpsc::Receiver<Item>) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Subscriber {
            session: secret_session_id(),
            public_id: format!("{:x}-{id}", self.epoch),
            identity,
            self_key,
            name,
            address,
            tx,
            resync: AtomicBool::new(false),
            fell_behind: AtomicBool::new(false),
            progress: Mutex::new(Progress::default()),
            connected_at: Instant::now(),
        });
        let mut inner = lock(&self.inner);
        let scope = inner.scope(&sub.self_key);
        inner.subscribers.insert(sub.session.clone(), (sub.clone(), scope));
        self.metrics.proxies_connected.set(inner.subscribers.len() as i64);
        (sub, rx)
    }

    pub fn unsubscribe(&self, session: &str) {
        let mut inner = lock(&self.inner);
        inner.subscribers.remove(session);
        self.metrics.proxies_connected.set(inner.subscribers.len() as i64);
    }

    pub fn subscriber(&self, session: &str) -> Option<Arc<Subscriber>> {
        lock(&self.inner).subscribers.get(session).map(|(s, _)| s.clone())
    }

    /// A full snapshot for the stream, at the current version. `timed`: count the time from
    /// that version's publication to its ack as convergence (not for a stream's first one).
    pub fn snapshot_for(&self, sub: &Subscriber, timed: bool) -> Bytes {
        let (parts, published) = {
            let mut inner = lock(&self.inner);
            let scope = match inner.subscribers.get(&sub.session) {
                Some((_, scope)) => scope.clone(),
                None => inner.scope(&sub.self_key),
            };
            (SnapshotParts::take(&inner, scope), inner.last_published)
        };
        let snapshot = parts.finish(&sub.self_key, &sub.session);
        let version = snapshot.version;
        let mut p = lock(&sub.progress);
        p.sent = p.sent.max(version);
        p.push(version, timed.then_some(published));
        if timed && sub.fell_behind.swap(false, Ordering::AcqRel) {
            p.resyncs += 1;
        }
        drop(p);
        Bytes::from(WatchMessage::Snapshot(snapshot).to_line())
    }

    /// What a proxy of `self_key` would receive now (for the admin dump).
    pub fn preview(&self, self_key: &str) -> Snapshot {
        let parts = {
            let mut inner = lock(&self.inner);
            let scope = inner.scope(self_key);
            SnapshotParts::take(&inner, scope)
        };
        parts.finish(self_key, "preview")
    }

    /// Keeps a traffic report of `sub` (reports older than the window are let go).
    pub fn report(&self, sub: &Subscriber, report: weft_api::discovery::TrafficReport) {
        let now = Instant::now();
        let mut p = lock(&sub.progress);
        p.reports.push_back((now, report.stats));
        while p.reports.len() > 2 && p.reports.front().is_some_and(|(at, _)| now.duration_since(*at) > traffic::WINDOW)
        {
            p.reports.pop_front();
        }
        p.proxy_version = Some(report.proxy_version).filter(|v| !v.is_empty());
        p.mtls = Some(report.mtls).filter(|v| !v.is_empty());
    }

    /// Records an ack; false when the session is unknown (the stream closed or belongs to
    /// an earlier run of the control plane).
    pub fn ack(&self, session: &str, version: u64, cert_not_after: Option<u64>) -> bool {
        let Some(sub) = self.subscriber(session) else { return false };
        let now = Instant::now();
        let mut p = lock(&sub.progress);
        p.acked = p.acked.max(version);
        if cert_not_after.is_some() {
            p.cert_not_after = cert_not_after;
        }
        while let Some((v, published)) = p.unacked.front().copied() {
            if v > version {
                break;
            }
            p.unacked.pop_front();
            if let Some(at) = published {
                self.metrics.convergence.observe(now.duration_since(at).as_secs_f64());
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str) -> EndpointSpec {
        EndpointSpec { address: addr.parse().unwrap(), weight: 1, identity: None }
    }

    fn line(item: Item) -> WatchMessage {
        match item {
            Item::Line { bytes, .. } => serde_json::from_slice(&bytes).unwrap(),
            Item::Resync => panic!("expected a line, got a resync"),
        }
    }

    #[test]
    fn one_endpoint_change_is_one_delta_of_that_endpoint() {
        let catalog = Catalog::new(Duration::ZERO);
        catalog.upsert("test", "payments.default", ep("127.0.0.1:9001"));
        let (_sub, mut rx) = catalog.subscribe("frontend.default".into(), "f".into(), None);
        let v0 = catalog.version();
        assert!(catalog.upsert("test", "payments.default", ep("127.0.0.1:9002")));
        assert!(!catalog.upsert("test", "payments.default", ep("127.0.0.1:9002")), "no change, no version");
        let WatchMessage::Delta(d) = line(rx.try_recv().unwrap()) else { panic!("not a delta") };
        assert_eq!(d.version, v0 + 1);
        assert_eq!(
            d.changes,
            vec![EndpointChange {
                service: "payments.default".into(),
                upsert: vec![ep("127.0.0.1:9002")],
                remove: vec![]
            }]
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn only_the_registering_source_removes_an_instance() {
        let catalog = Catalog::new(Duration::ZERO);
        catalog.upsert("a", "s.default", ep("127.0.0.1:1"));
        assert!(!catalog.remove("b", "s.default", "127.0.0.1:1".parse().unwrap()));
        assert!(catalog.remove("a", "s.default", "127.0.0.1:1".parse().unwrap()));
    }

    #[test]
    fn an_address_two_sources_report_stays_until_both_withdraw_it() {
        let catalog = Catalog::new(Duration::ZERO);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        catalog.upsert("yaml", "s.default", ep("127.0.0.1:1"));
        let (_sub, mut rx) = catalog.subscribe("c.default".into(), "c".into(), None);
        let weighted = EndpointSpec { weight: 5, ..ep("127.0.0.1:1") };
        assert!(!catalog.upsert("self", "s.default", weighted.clone()), "the first claim stays in effect");
        let status = catalog.status();
        assert_eq!(status.services[0].instances, BTreeMap::from([("self".into(), 1), ("yaml".into(), 1)]));

        assert!(catalog.remove("yaml", "s.default", addr));
        let WatchMessage::Delta(d) = line(rx.try_recv().unwrap()) else { panic!("not a delta") };
        assert_eq!((d.changes[0].upsert.clone(), d.changes[0].remove.clone()), (vec![weighted], vec![]));

        assert!(catalog.remove("self", "s.default", addr));
        let WatchMessage::Delta(d) = line(rx.try_recv().unwrap()) else { panic!("not a delta") };
        assert_eq!(d.changes[0].remove, vec![addr], "the address goes when its last source withdraws it");
        assert!(catalog.status().services[0].instances.is_empty());
    }

    #[test]
    fn a_meshed_pod_reported_by_the_cluster_and_its_proxy_is_published_once_with_mtls() {
        let id = "spiffe://cluster.local/ns/default/sa/s";
        let meshed = |addr: &str| EndpointSpec { identity: Some(id.into()), ..ep(addr) };
        let pods = |ips: &[&str]| {
            Some(BTreeMap::from([("s.default".to_string(), ips.iter().map(|i| i.parse().unwrap()).collect())]))
        };
        let catalog = Catalog::new(Duration::ZERO);
        let k8s = |list: Vec<EndpointSpec>| BTreeMap::from([("s.default".to_string(), list)]);
        catalog.replace_source_with_pods("kubernetes", k8s(vec![ep("10.1.0.1:8080")]), pods(&["10.1.0.1"]));
        let (_sub, mut rx) = catalog.subscribe("c.default".into(), "c".into(), None);
        // The pod's proxy registers: the slice's endpoint gains its identity, and the
        // registration itself is not a second endpoint.
        assert!(catalog.upsert(merge::MESHED, "s.default", meshed("10.1.0.1:4143")));
        let WatchMessage::Delta(d) = line(rx.try_recv().unwrap()) else { panic!("not a delta") };
        assert_eq!((d.changes[0].upsert.clone(), d.changes[0].remove.clone()), (vec![meshed("10.1.0.1:8080")], vec![]));
        let snap = catalog.preview("c.default");
        assert_eq!(snap.endpoints["s.default"], [meshed("10.1.0.1:8080")]);
        // The cluster takes the pod out (not ready, no longer in the endpoints): its proxy's
        // registration does not bring it back.
        catalog.replace_source_with_pods("kubernetes", k8s(vec![]), pods(&["10.1.0.1"]));
        let WatchMessage::Delta(d) = line(rx.try_recv().unwrap()) else { panic!("not a delta") };
        assert_eq!(d.changes[0].remove, ["10.1.0.1:8080".parse::<SocketAddr>().unwrap()]);
        assert!(d.changes[0].upsert.is_empty(), "{d:?}");
        // A proxy the cluster does not list (a VM) is published as it registered.
        assert!(catalog.upsert(merge::MESHED, "s.default", meshed("192.168.1.9:4143")));
        let WatchMessage::Delta(d) = line(rx.try_recv().unwrap()) else { panic!("not a delta") };
        assert_eq!(d.changes[0].upsert, [meshed("192.168.1.9:4143")]);
        // The pod is deleted: its lingering registration is an ordinary instance again.
        catalog.replace_source_with_pods("kubernetes", k8s(vec![]), pods(&[]));
        let WatchMessage::Delta(d) = line(rx.try_recv().unwrap()) else { panic!("not a delta") };
        assert_eq!(d.changes[0].upsert, [meshed("10.1.0.1:4143")]);
    }

    #[test]
    fn replace_source_sends_the_difference() {
        let catalog = Catalog::new(Duration::ZERO);
        catalog
            .replace_source("yaml", BTreeMap::from([("s.default".into(), vec![ep("127.0.0.1:1"), ep("127.0.0.1:2")])]));
        let (_sub, mut rx) = catalog.subscribe("c.default".into(), "c".into(), None);
        catalog
            .replace_source("yaml", BTreeMap::from([("s.default".into(), vec![ep("127.0.0.1:2"), ep("127.0.0.1:3")])]));
        let WatchMessage::Delta(d) = line(rx.try_recv().unwrap()) else { panic!("not a delta") };
        assert_eq!(d.changes[0].upsert, vec![ep("127.0.0.1:3")], "unchanged instances are not resent");
        assert_eq!(d.changes[0].remove, vec!["127.0.0.1:1".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn a_full_queue_turns_into_a_resync_without_blocking() {
        let catalog = Catalog::new(Duration::ZERO);
        catalog.upsert("t", "s.default", ep("127.0.0.1:1"));
        let (sub, mut rx) = catalog.subscribe("c.default".into(), "c".into(), None);
        for port in 2..(STREAM_BUFFER as u16 + 10) {
            catalog.upsert("t", "s.default", ep(&format!("127.0.0.1:{port}")));
        }
        assert!(sub.take_resync(), "the stream is marked for a resync");
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, STREAM_BUFFER, "the queue stays bounded");
        let WatchMessage::Snapshot(s) = serde_json::from_slice(&catalog.snapshot_for(&sub, true)).unwrap() else {
            panic!("not a snapshot")
        };
        assert_eq!(s.version, catalog.version());
        assert_eq!(s.endpoints["s.default"].len(), STREAM_BUFFER + 9);
        assert!(!sub.accept(s.version - 1, None), "deltas older than the snapshot are skipped");
        assert_eq!(catalog.status().proxies[0].resyncs, 1, "falling behind is a resync to show");
        // A policy or scope change also sends a fresh snapshot: that is no trouble to report.
        catalog.snapshot_for(&sub, true);
        assert_eq!(catalog.status().proxies[0].resyncs, 1);
    }

    #[test]
    fn acks_feed_convergence_and_clear_lag() {
        let catalog = Catalog::new(Duration::ZERO);
        let (sub, mut rx) = catalog.subscribe("c.default".into(), "c".into(), None);
        catalog.snapshot_for(&sub, false);
        catalog.upsert("t", "c.default", ep("127.0.0.1:1"));
        let Item::Line { version, published, .. } = rx.try_recv().unwrap() else { panic!("no line") };
        assert!(sub.accept(version, Some(published)));
        assert_eq!(catalog.status().proxies[0].acked_version, 0);
        assert!(catalog.ack(&sub.session, version, None));
        assert_eq!(catalog.metrics.convergence.get_sample_count(), 1, "the untimed first snapshot is not counted");
        let status = catalog.status();
        assert_eq!(status.proxies[0].acked_version, version);
        assert_eq!(status.proxies[0].lag_seconds, 0.0);
        assert!(!catalog.ack("nope", 1, None));
        assert_eq!(status.proxies[0].cert_expires_in_seconds, None, "no certificate reported");
    }

    #[test]
    fn acks_report_the_certificate_expiry_and_an_overdue_renewal() {
        let catalog = Catalog::new(Duration::ZERO);
        catalog.set_cert_ttl(Duration::from_secs(3600));
        let (sub, _rx) = catalog.subscribe("c.default".into(), "c".into(), None);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(catalog.ack(&sub.session, 1, Some(now + 3000)));
        let p = &catalog.status().proxies[0];
        let left = p.cert_expires_in_seconds.unwrap();
        assert!((2990.0..=3000.0).contains(&left), "{left}");
        assert!(!p.cert_near_expiry);
        // Under a fifth of the hour left: the proxy should have renewed at 70 %.
        assert!(catalog.ack(&sub.session, 1, Some(now + 600)));
        assert!(catalog.status().proxies[0].cert_near_expiry);
        // An ack without a certificate (a config ack from an older proxy) keeps the last one.
        assert!(catalog.ack(&sub.session, 2, None));
        assert!(catalog.status().proxies[0].cert_expires_in_seconds.is_some());
    }
}
