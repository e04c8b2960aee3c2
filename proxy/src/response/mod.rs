//! What goes back to the client: response bodies and what is counted when they end
//! (`body`), the one table of answers the proxy makes itself (`errors`), and the access log
//! that wraps a forwarded body while it is on (`access`).

pub(crate) mod access;
pub(crate) mod body;
pub(crate) mod errors;
