//! Test support: start real weft binaries and real backend servers on loopback.
//!
//! Everything here talks over real sockets on 127.0.0.1: backends are in-process hyper servers,
//! the proxy is the real `weft-proxy` binary in a child process. Each test builds its own world
//! (ports, temp dir, processes) so tests can run in parallel threads without sharing state.

pub mod backend;
pub mod bad_upstream;
pub mod binaries;
pub mod churn;
pub mod client;
pub mod config;
pub mod control_plane;
pub mod h2raw;
pub mod kube_api;
pub mod load;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod tcp_echo;
pub mod tempdir;
pub mod tls;
pub mod wait;
pub mod watch;

pub use backend::Backend;
pub use bad_upstream::{BadUpstream, Misbehaviour};
pub use binaries::bin;
pub use client::{H1Conn, H2Conn, Req, Resp};
pub use config::{catch_all_route, document, service, service_weighted, traffic_policy};
pub use control_plane::ControlPlane;
pub use load::{Limit, LoadReport, run_load, run_load_timed};
pub use metrics::metric_sum;
pub use proxy::{Launch, Proxy, ProxyConfig};
pub use tcp_echo::TcpEcho;
pub use tempdir::TempDir;
pub use wait::eventually;

/// The error type of client helpers: any failure, with a message fit for an assertion.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
