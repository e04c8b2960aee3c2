//! HTTP plumbing shared by the inbound and outbound sides: bodies, proxy-made errors, the
//! server loop for client connections, header hygiene and request paths in normal form.

pub mod body;
pub mod errors;
pub mod h1server;
pub mod h2server;
pub mod headers;
pub mod path;
pub mod server;
pub mod timeouts;
