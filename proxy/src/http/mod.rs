//! HTTP plumbing shared by the inbound and outbound sides: bodies, proxy-made errors, the
//! server loop for client connections, header hygiene, request paths in normal form and the
//! access log.

pub mod access;
pub mod body;
pub mod errors;
#[cfg(test)]
mod h1_properties;
pub mod h1server;
pub mod h2server;
pub mod headers;
pub mod path;
pub mod server;
mod spares;
pub mod timeouts;
