//! weft-proxy: the per-pod data plane. Follow a request by module name:
//! `listeners` → `http::server` → `outbound`/`inbound` → `routing` → `forward` (retries,
//! timeouts) → `balance` → `connect` (pools) → the peer. `tcp` carries opaque streams;
//! `admin`, `metrics`, `config`, `discovery` (the control plane's stream) and `runtime` sit
//! beside the path.
#![forbid(unsafe_code)]

pub mod admin;
pub mod await_cmd;
pub mod balance;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connect;
pub mod discovery;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod inbound;
pub mod init;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod retry;
pub mod routing;
pub mod runtime;
pub mod state;
pub mod target;
pub mod tcp;
#[cfg(test)]
mod test_support;
pub mod tls;
