//! Who holds the endpoint's connections: a connection that has not logged
//! in within the login time is closed (it holds one of the endpoint's slots
//! and a task), and no tenant holds more than its share of the slots, so one
//! tenant's connection pool cannot lock the others out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// One connection, by its peer address (unique while it is open).
#[derive(Default)]
struct Entry {
    /// Told when the connection has logged in.
    login: Option<oneshot::Sender<()>>,
    tenant: Option<String>,
}

#[derive(Default)]
struct Inner {
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
        self.inner().open.insert(
            peer,
            Entry {
                login: Some(tell),
                tenant: None,
            },
        );
        (
            Open {
                registry: self.clone(),
                peer,
            },
            told,
        )
    }

    /// Records that `peer` logged in as `tenant`, unless the tenant already
    /// holds its share: then `Err` with the share.
    pub fn logged_in(&self, peer: SocketAddr, tenant: &str) -> Result<(), usize> {
        let mut inner = self.inner();
        let held = inner.per_tenant.get(tenant).copied().unwrap_or(0);
        if held >= self.max_per_tenant {
            return Err(self.max_per_tenant);
        }
        let Some(entry) = inner.open.get_mut(&peer) else {
            // Not served by `serve` (a test calling the handlers directly).
            return Ok(());
        };
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

/// A registered connection; dropping it forgets the connection.
pub struct Open {
    registry: Arc<Registry>,
    peer: SocketAddr,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut inner = self.registry.inner();
        if let Some(Entry {
            tenant: Some(tenant),
            ..
        }) = inner.open.remove(&self.peer)
            && let Some(held) = inner.per_tenant.get_mut(&tenant)
        {
            *held -= 1;
            if *held == 0 {
                inner.per_tenant.remove(&tenant);
            }
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
    async fn a_connection_that_never_logs_in_is_never_told() {
        let registry = Arc::new(Registry::new(2));
        let (open, told) = registry.open(peer(1));
        drop(open);
        assert!(told.await.is_err());
        assert_eq!(registry.held_by("acme"), 0);
    }
}
