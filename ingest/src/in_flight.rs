//! The bound on ingest requests in flight, fair between tenants: a global
//! limit (past it: 503, the edge is full) and a smaller one per tenant (past
//! it: 429 for that tenant only), so one tenant's slow or abusive clients
//! cannot take the slots every other tenant needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// This tenant has its share in flight.
    Tenant,
    /// The edge as a whole is full.
    Global,
}

/// Counts requests in flight, globally and per tenant.
#[derive(Debug)]
pub struct InFlight {
    global: Arc<Semaphore>,
    per_tenant: usize,
    tenants: Arc<Mutex<HashMap<String, usize>>>,
}

/// A request's slot; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _global: OwnedSemaphorePermit,
    tenant: String,
    tenants: Arc<Mutex<HashMap<String, usize>>>,
}

impl InFlight {
    pub fn new(global: usize, per_tenant: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global)),
            per_tenant,
            tenants: Arc::default(),
        }
    }

    /// A slot for one request of `tenant`, without waiting.
    pub fn try_acquire(&self, tenant: &str) -> Result<Slot, Shed> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let held = tenants.get(tenant).copied().unwrap_or(0);
        if held >= self.per_tenant {
            return Err(Shed::Tenant);
        }
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Shed::Global)?;
        tenants.insert(tenant.to_string(), held + 1);
        Ok(Slot {
            _global: global,
            tenant: tenant.to_string(),
            tenants: self.tenants.clone(),
        })
    }

    /// Requests of `tenant` in flight now.
    pub fn held_by(&self, tenant: &str) -> usize {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants.get(tenant).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = tenants.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                // No entry per tenant ever seen: the map stays as small as
                // the set of tenants with requests in flight.
                tenants.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_share_is_shed_and_others_are_not() {
        let in_flight = InFlight::new(3, 2);
        let a1 = in_flight.try_acquire("a").unwrap();
        let _a2 = in_flight.try_acquire("a").unwrap();
        assert_eq!(in_flight.try_acquire("a").unwrap_err(), Shed::Tenant);
        let b1 = in_flight.try_acquire("b").unwrap();
        assert_eq!(in_flight.try_acquire("c").unwrap_err(), Shed::Global);
        drop(a1);
        assert_eq!(in_flight.held_by("a"), 1);
        let _c = in_flight.try_acquire("c").unwrap();
        drop(b1);
        assert_eq!(in_flight.held_by("b"), 0);
        assert!(in_flight.tenants.lock().unwrap().get("b").is_none());
    }
}
