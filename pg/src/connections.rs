//! Who holds the endpoint's connections: a connection that has not logged
//! in within the login time is closed (it holds one of the endpoint's slots
//! and a task), and no tenant holds more than its share of the slots, so one
//! tenant's connection pool cannot lock the others out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// One connection, by its peer address (unique while it is open; a new
/// connection from an address whose old one is still winding down replaces
/// it, and the generation tells the two apart).
#[derive(Default)]
struct Entry {
    generation: u64,
    /// Told when the connection has logged in.
    login: Option<oneshot::Sender<()>>,
    tenant: Option<String>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    open: HashMap<SocketAddr, Entry>,
    per_tenant: HashMap<String, usize>,
}

/// The open connections and how many each tenant holds.
pub struct Registry {
    max_per_tenant: usize,
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new(max_per_tenant: usize) -> Self {
        Self {
            max_per_tenant,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the connection from `peer`; the receiver hears when it
    /// has logged in. It is forgotten when the returned guard drops.
    pub fn open(self: &Arc<Self>, peer: SocketAddr) -> (Open, oneshot::Receiver<()>) {
        let (tell, told) = oneshot::channel();
        let mut inner = self.inner();
        inner.generation += 1;
        let generation = inner.generation;
        let entry = Entry {
            generation,
            login: Some(tell),
            tenant: None,
        };
        if let Some(stale) = inner.open.insert(peer, entry) {
            inner.release(stale);
        }
        (
            Open {
                registry: self.clone(),
                peer,
                generation,
            },
            told,
        )
    }

    /// Records that `peer` logged in as `tenant`, unless the tenant already
    /// holds its share: then `Err` with the share (also for a peer `open`
    /// never registered, whose slot nothing would give back).
    pub fn logged_in(&self, peer: SocketAddr, tenant: &str) -> Result<(), usize> {
        let mut inner = self.inner();
        let held = inner.per_tenant.get(tenant).copied().unwrap_or(0);
        if held >= self.max_per_tenant {
            return Err(self.max_per_tenant);
        }
        let Some(entry) = inner.open.get_mut(&peer) else {
            // Not registered by `serve`: nothing would give the slot back.
            return Err(self.max_per_tenant);
        };
        if entry.tenant.is_some() {
            // Counted already.
            return Ok(());
        }
        entry.tenant = Some(tenant.to_string());
        if let Some(tell) = entry.login.take() {
            let _ = tell.send(());
        }
        *inner.per_tenant.entry(tenant.to_string()).or_default() += 1;
        Ok(())
    }

    /// Connections `tenant` holds.
    #[cfg(test)]
    pub fn held_by(&self, tenant: &str) -> usize {
        self.inner().per_tenant.get(tenant).copied().unwrap_or(0)
    }
}

impl Inner {
    /// Gives back the tenant's count of a connection that is gone.
    fn release(&mut self, entry: Entry) {
        if let Some(tenant) = entry.tenant
            && let Some(held) = self.per_tenant.get_mut(&tenant)
        {
            *held -= 1;
            if *held == 0 {
                self.per_tenant.remove(&tenant);
            }
        }
    }
}

/// A registered connection; dropping it forgets the connection (unless a
/// newer one from the same address replaced it).
pub struct Open {
    registry: Arc<Registry>,
    peer: SocketAddr,
    generation: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut inner = self.registry.inner();
        if inner
            .open
            .get(&self.peer)
            .is_some_and(|e| e.generation == self.generation)
            && let Some(entry) = inner.open.remove(&self.peer)
        {
            inner.release(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_tenant_holds_at_most_its_share_and_gets_slots_back() {
        let registry = Arc::new(Registry::new(2));
        let (a, told_a) = registry.open(peer(1));
        let (_b, _) = registry.open(peer(2));
        let (_c, _) = registry.open(peer(3));
        let (_d, _) = registry.open(peer(4));
        assert_eq!(registry.logged_in(peer(1), "acme"), Ok(()));
        // Told twice, counted once.
        assert_eq!(registry.logged_in(peer(1), "acme"), Ok(()));
        assert_eq!(registry.held_by("acme"), 1);
        told_a.await.unwrap();
        assert_eq!(registry.logged_in(peer(2), "acme"), Ok(()));
        assert_eq!(registry.logged_in(peer(3), "acme"), Err(2));
        // Another tenant is not held back by acme.
        assert_eq!(registry.logged_in(peer(4), "globex"), Ok(()));
        assert_eq!(registry.held_by("acme"), 2);
        drop(a);
        assert_eq!(registry.held_by("acme"), 1);
        assert_eq!(registry.logged_in(peer(3), "acme"), Ok(()));
    }

    #[tokio::test]
    async fn a_reused_address_keeps_each_connection_counted_once() {
        let registry = Arc::new(Registry::new(2));
        let (old, _) = registry.open(peer(1));
        assert_eq!(registry.logged_in(peer(1), "acme"), Ok(()));
        // The address comes back before the old connection's task ended.
        let (new, told) = registry.open(peer(1));
        assert_eq!(registry.held_by("acme"), 0);
        assert_eq!(registry.logged_in(peer(1), "acme"), Ok(()));
        told.await.unwrap();
        drop(old);
        assert_eq!(
            registry.held_by("acme"),
            1,
            "the old guard left the new entry alone"
        );
        drop(new);
        assert_eq!(registry.held_by("acme"), 0);
        // Not registered: refused, since nothing would give the slot back.
        assert_eq!(registry.logged_in(peer(9), "acme"), Err(2));
    }

    #[tokio::test]
    async fn a_connection_that_never_logs_in_is_never_told() {
        let registry = Arc::new(Registry::new(2));
        let (open, told) = registry.open(peer(1));
        drop(open);
        assert!(told.await.is_err());
        assert_eq!(registry.held_by("acme"), 0);
    }
}
