//! The mesh CA: a root (made here or the operator's), certificates issued by hand
//! (`weft ca issue`), and the CSR signing that `weft serve` offers to proxies.

mod authority;
pub mod cli;
mod error;
pub mod http;
mod issuer;

pub use authority::{Authority, CA_CERT_FILE, CA_KEY_FILE, Issued, TRUST_BUNDLE_FILE, pem_block, pem_certificates};
pub use error::CaError;
pub use issuer::{Issuer, JoinTokens};
