//! Load balancing and endpoint guards: which endpoint gets the next request, and which are out.
//!
//! A service's endpoints live in an [`EndpointSet`], rebuilt on each config version around the
//! same [`Endpoint`]s. The request path asks the set for an index ([`EndpointSet::pick`]),
//! holds an [`InFlight`] guard while the try runs, and hands the guard back with the outcome
//! ([`EndpointSet::on_success`] / [`EndpointSet::on_failure`]), which feeds latency estimates
//! and outlier ejection. [`ConcurrencyLimit`] caps a whole service. Nothing here locks or
//! allocates per request.

mod endpoint;
mod ewma;
mod limits;
mod outlier;
mod pick;
mod set;

pub use endpoint::{Endpoint, EndpointStatus, InFlight};
pub use limits::{ConcurrencyLimit, Permit};
pub use outlier::OutlierConfig;
pub use set::{EndpointSet, PickError};
pub use weft_api::LoadBalancer;
