//! How many watch streams one client may hold open: each stream costs the control plane a
//! connection, a queue and (with an address) a registered instance, so a client that opens
//! them in a loop is refused past a limit instead of growing memory and the registry.
//!
//! A client is its peer IP and, over TLS, the SPIFFE id of its certificate: replicas of one
//! service share an id but not an address, and a proxy holds one stream (two for a moment
//! while it reconnects). Plaintext from loopback is not limited (see `Discovery::watch`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Default of `weft serve --max-watches-per-client`: far above what a proxy needs, low enough
/// that a flood stays a few megabytes (see docs/testing.md for the measured cost per stream).
pub const DEFAULT_MAX_WATCHES_PER_CLIENT: usize = 100;

/// Who holds a stream, as far as the limit is concerned.
pub type ClientKey = (IpAddr, Option<String>);

/// Open streams per client, shared by every connection of the discovery listener.
#[derive(Debug)]
pub struct WatchLimit {
    max: usize,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

/// One open stream's place in the count; dropping it (the stream closed) frees the place.
#[derive(Debug)]
pub struct WatchPermit {
    key: ClientKey,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

impl WatchLimit {
    pub fn new(max: usize) -> WatchLimit {
        WatchLimit { max, open: Arc::default() }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more stream of `key`, or `None` when it already holds the maximum.
    pub fn acquire(&self, key: ClientKey) -> Option<WatchPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key.clone()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(WatchPermit { key, open: self.open.clone() })
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, id: Option<&str>) -> ClientKey {
        (ip.parse().unwrap(), id.map(String::from))
    }

    #[test]
    fn each_client_gets_up_to_the_limit_and_a_closed_stream_frees_its_place() {
        let limit = WatchLimit::new(2);
        let alice = key("10.0.0.1", Some("spiffe://cluster.local/ns/default/sa/alice"));
        let first = limit.acquire(alice.clone()).unwrap();
        let second = limit.acquire(alice.clone()).unwrap();
        assert!(limit.acquire(alice.clone()).is_none(), "a third stream of one client");
        // Another replica of alice (another address), or a plaintext client at alice's address.
        assert!(limit.acquire(key("10.0.0.2", Some("spiffe://cluster.local/ns/default/sa/alice"))).is_some());
        assert!(limit.acquire(key("10.0.0.1", None)).is_some());
        drop(first);
        assert!(limit.acquire(alice).is_some(), "the closed stream's place is free again");
        drop(second);
        assert!(limit.open.lock().unwrap().is_empty(), "nothing is left once every stream closed");
    }
}
