//! `weft serve`: the control plane's server. This first piece serves only the CA's
//! CSR-signing route (see `ca_endpoint`).

pub mod ca_endpoint;
