//! weft-proxy: the per-pod data plane. Follow a request by module name:
//! `listeners` → `http` (server side) → `outbound`/`inbound` → `routing` → `retry` →
//! `balance` → `connect` (pools) → the peer. `admin`, `metrics` and `config` sit beside.
#![forbid(unsafe_code)]

pub mod balance;
pub mod clock;
pub mod retry;
