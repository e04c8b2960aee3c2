//! weft-proxy: the per-pod data plane.
//!
//! The modules, in the order a request meets them. Each depends only on those below it
//! (`tests/module_graph.rs` fails on a cycle), so a module can be read knowing only what sits
//! under it.
//!
//! | module | what it does |
//! |---|---|
//! | `runtime` | process shape: a current-thread runtime per worker, the control thread, reloads (`runtime::reload`), drain |
//! | `admin` | the admin port: `/ready`, `/metrics`, `/explain`, `/shutdown` |
//! | `discovery` | the control plane's watch stream, applied on top of the file (`config::layer`), persisted |
//! | `listeners` | accept loops, and the one dispatcher of connection kinds: HTTP, opaque TCP, inbound mTLS |
//! | `tcp` | opaque TCP relays (inbound to the app, outbound to a service) |
//! | `server` | one client connection, HTTP/1.1 (`server::h1server`) or HTTP/2 (`server::h2server`), and the request `Handler` |
//! | `outbound`, `inbound` | which service a request is for: by Host or bound port, or the local app after authorization |
//! | `forward` | one request to a service: concurrency limit, replayable body, tries, retries, route timeout |
//! | `tls` | identity, certificates, the meshed-peer client pool (`tls::connect`), inbound admission (`tls::inbound`) |
//! | `response` | what goes back to the client: response bodies and their end-of-body accounting, the error table, the access log |
//! | `connect` | upstream connections: the HTTP/1.1 and HTTP/2 clients and the per-worker pool |
//! | `http` | wire pieces both sides share: request bodies, HTTP/2 bodies, HTTP/1.1 helpers, header hygiene, paths |
//! | `config`, `state` | the YAML compiled into snapshots read through arc-swap; process-wide state |
//! | `side`, `routing`, `authz`, `target`, `balance`, `retry` | leaves: listener kind, compiled routes and policy, clusters, load balancing, budgets |
//! | `metrics`, `clock`, `logging` | leaves: Prometheus handles, the cached clock, tracing setup |
//! | `cli`, `flags`, `init`, `await_cmd` | the command line: `weft-proxy`, `init` (traffic redirection), `await` |
#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs)]

pub(crate) mod admin;
pub(crate) mod authz;
pub(crate) mod await_cmd;
pub mod balance;
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub(crate) mod connect;
pub(crate) mod discovery;
pub mod flags;
pub(crate) mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub(crate) mod inbound;
pub(crate) mod init;
pub(crate) mod listeners;
pub mod logging;
pub mod metrics;
pub(crate) mod outbound;
pub(crate) mod response;
pub(crate) mod retry;
pub(crate) mod routing;
pub(crate) mod runtime;
pub(crate) mod server;
pub(crate) mod side;
pub(crate) mod state;
pub(crate) mod target;
pub(crate) mod tcp;
#[cfg(test)]
mod test_support;
pub mod tls;
