//! weft-control: the control plane (registry, policy, discovery, CA) and the `weft` CLI.
#![forbid(unsafe_code)]

pub mod ca;
pub mod check;
pub mod cli;
pub mod crds;
pub mod demo;
pub mod inject;
pub mod serve;
pub mod status;
