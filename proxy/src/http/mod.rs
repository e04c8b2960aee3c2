//! HTTP pieces that both sides of the proxy share and that depend on nothing above them:
//! request bodies, HTTP/2 bodies both ways, HTTP/1.1 wire helpers, header hygiene and request
//! paths in normal form. The server loop is `server`, what goes back to clients `response`.

pub(crate) mod body;
pub(crate) mod h1;
pub(crate) mod h2body;
pub mod headers;
pub(crate) mod path;
