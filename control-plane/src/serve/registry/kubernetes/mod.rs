//! The Kubernetes registry (issue 23): Services and EndpointSlices watched through kube-rs and
//! fed to the catalog under the source `kubernetes`. The translation of what the cluster says
//! into endpoints and Service documents is here; the watchers that feed it come next.

pub mod translate;
