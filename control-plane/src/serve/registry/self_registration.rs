//! Proxy self-registration: an instance is present while its proxy's watch stream is open,
//! and for a grace period (the TTL) after it closes, so a proxy that reconnects (or a control
//! plane restart) does not make its endpoint flap. A draining proxy leaves at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_api::EndpointSpec;

use super::Registry;
use crate::serve::catalog::Catalog;

pub const SOURCE: &str = "self-registration";

pub struct SelfRegistration {
    catalog: Arc<Catalog>,
    ttl: Duration,
    leases: Mutex<HashMap<(String, SocketAddr), Lease>>,
}

#[derive(Default)]
struct Lease {
    /// Open streams registering this instance.
    streams: u32,
    /// When the instance goes, once no stream holds it.
    expires: Option<Instant>,
}

/// Held by a watch stream; dropping it starts the instance's grace period.
pub struct Registration {
    owner: Arc<SelfRegistration>,
    key: (String, SocketAddr),
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut leases = self.owner.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lease) = leases.get_mut(&self.key) {
            lease.streams = lease.streams.saturating_sub(1);
            if lease.streams == 0 {
                lease.expires = Some(Instant::now() + self.owner.ttl);
            }
        }
    }
}

impl SelfRegistration {
    pub fn new(catalog: Arc<Catalog>, ttl: Duration) -> Arc<SelfRegistration> {
        Arc::new(SelfRegistration { catalog, ttl, leases: Mutex::new(HashMap::new()) })
    }

    /// Registers `spec` as an instance of `service` for as long as the returned guard lives.
    pub fn register(self: &Arc<Self>, service: &str, spec: EndpointSpec) -> Registration {
        let key = (service.to_string(), spec.address);
        {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            let lease = leases.entry(key.clone()).or_default();
            lease.streams += 1;
            lease.expires = None;
        }
        self.catalog.upsert(SOURCE, service, spec);
        Registration { owner: self.clone(), key }
    }

    /// Withdraws an instance now (its proxy is draining).
    pub fn leave(&self, service: &str, address: SocketAddr) {
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).remove(&(service.to_string(), address));
        self.catalog.remove(SOURCE, service, address);
    }

    /// Removes instances whose grace period is over.
    fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<(String, SocketAddr)> = {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<_> =
                leases.iter().filter(|(_, l)| l.expires.is_some_and(|t| t <= now)).map(|(k, _)| k.clone()).collect();
            for k in &gone {
                leases.remove(k);
            }
            gone
        };
        for (service, addr) in expired {
            tracing::info!(service, %addr, "registration expired (its proxy's stream closed)");
            self.catalog.remove(SOURCE, &service, addr);
        }
    }
}

impl Registry for SelfRegistration {
    fn source(&self) -> &'static str {
        SOURCE
    }

    fn start(self: Arc<Self>) -> Result<(), String> {
        let period = (self.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                self.sweep();
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_outlives_its_stream_by_the_ttl_only() {
        let catalog = Catalog::new(Duration::ZERO);
        let reg = SelfRegistration::new(catalog.clone(), Duration::from_millis(30));
        let addr: SocketAddr = "127.0.0.1:4143".parse().unwrap();
        let guard = reg.register("a.default", EndpointSpec { address: addr, weight: 1, identity: None });
        let count = || catalog.status().services.iter().map(|s| s.instances.values().sum::<usize>()).sum::<usize>();
        assert_eq!(count(), 1);
        drop(guard);
        reg.sweep();
        assert_eq!(count(), 1, "still inside the grace period");
        // A reconnect inside the grace period keeps the instance without a change.
        let v = catalog.version();
        let again = reg.register("a.default", EndpointSpec { address: addr, weight: 1, identity: None });
        assert_eq!(catalog.version(), v);
        drop(again);
        let deadline = Instant::now() + Duration::from_secs(5);
        while count() == 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            reg.sweep();
        }
        assert_eq!(count(), 0);
    }
}
