//! Agent connections: the member pods' IPs as the API server reports them, and clients for
//! one-off calls cached by agent address.
//!
//! A replaced pod's name keeps resolving to its old IP, or to nothing, for as long as cluster
//! DNS caches it (5–30 s); the operator learns the new IP from the API server at once and dials
//! it, verifying TLS against the name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::lock;
use crate::agent::client::TlsClientConfig;
use crate::agent::{AgentClient, ClientError};

/// Calls to a single agent give up after this (a dead pod's IP may not even refuse).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A reused connection and the pod IP it was dialed at (`None`: through DNS).
type CachedClient = (AgentClient, Option<IpAddr>);

#[derive(Default)]
pub struct ClientPool {
    /// Connections for one-off calls, reused: a failover's switchover should not pay for a TLS
    /// handshake. Dropped on the first transport error, or when the pod's IP changed.
    clients: Mutex<HashMap<String, CachedClient>>,
    /// Agent address (DNS name) → the pod IP the API server reports for it.
    pod_ips: Mutex<HashMap<String, IpAddr>>,
    /// Woken when a pod IP is learned, changed or forgotten: the state stream of a group
    /// without running pods waits for this instead of polling.
    pub ips_changed: tokio::sync::Notify,
}

impl ClientPool {
    /// The IP to dial `address` at (`None`: through DNS).
    pub fn pod_ip(&self, address: &str) -> Option<IpAddr> {
        lock(&self.pod_ips).get(address).copied()
    }

    /// The member pods' current IPs by agent address (`None`: the pod has no running IP now;
    /// the state stream does not dial it, a probe dials its name through DNS).
    pub fn learn_pod_ips(&self, ips: impl IntoIterator<Item = (String, Option<IpAddr>)>) {
        let mut changed = false;
        let mut known = lock(&self.pod_ips);
        for (address, ip) in ips {
            let before = match ip {
                Some(ip) => known.insert(address, ip),
                None => known.remove(&address),
            };
            changed |= before != ip;
        }
        drop(known);
        if changed {
            self.ips_changed.notify_waiters();
        }
    }

    /// A client for `address`: the cached one while it was dialed at the pod's current IP.
    pub async fn client(
        &self,
        address: &str,
        tls: Option<TlsClientConfig>,
    ) -> Result<AgentClient, ClientError> {
        let ip = self.pod_ip(address);
        if let Some((c, at)) = lock(&self.clients).get(address)
            && *at == ip
        {
            return Ok(c.clone());
        }
        let c = connect(address, ip, tls).await?;
        lock(&self.clients).insert(address.to_owned(), (c.clone(), ip));
        Ok(c)
    }

    /// A call failed for a reason other than the group's answer: reconnect next time.
    pub fn forget_client(&self, address: &str, error: &ClientError) {
        if is_transport(error) {
            lock(&self.clients).remove(address);
        }
    }

    /// Forgets the IPs and clients of addresses `of_deleted` says belong to a deleted group.
    pub fn forget_addresses(&self, of_deleted: impl Fn(&str) -> bool) {
        lock(&self.pod_ips).retain(|address, _| !of_deleted(address));
        lock(&self.clients).retain(|address, _| !of_deleted(address));
    }
}

/// Whether an error says the connection is bad (rather than being the group's answer).
fn is_transport(error: &ClientError) -> bool {
    !matches!(
        error.code(),
        Some(
            tonic::Code::FailedPrecondition
                | tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::AlreadyExists
        )
    )
}

/// Dials `address` (at `ip` when known), giving up after `CONNECT_TIMEOUT`.
pub async fn connect(
    address: &str,
    ip: Option<IpAddr>,
    tls: Option<TlsClientConfig>,
) -> Result<AgentClient, ClientError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AgentClient::connect_at(address, ip, tls)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Connect {
            address: address.to_owned(),
            reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_groups_answers_keep_the_connection() {
        let rpc = |code| ClientError::Rpc {
            address: "a".into(),
            code,
            message: String::new(),
        };
        assert!(!is_transport(&rpc(tonic::Code::FailedPrecondition)));
        assert!(!is_transport(&rpc(tonic::Code::NotFound)));
        assert!(is_transport(&rpc(tonic::Code::Unavailable)));
        assert!(is_transport(&ClientError::Connect {
            address: "a".into(),
            reason: "refused".into()
        }));
    }

    #[test]
    fn pod_ips_follow_the_api_server_and_deleted_groups_are_forgotten() {
        let pool = ClientPool::default();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        pool.learn_pod_ips([
            ("g-0.g-peers.ns.svc".to_owned(), Some(ip)),
            ("h-0.h-peers.ns.svc".to_owned(), Some(ip)),
        ]);
        assert_eq!(pool.pod_ip("g-0.g-peers.ns.svc"), Some(ip));
        // A pod without a running IP is dialed through DNS again.
        pool.learn_pod_ips([("g-0.g-peers.ns.svc".to_owned(), None)]);
        assert_eq!(pool.pod_ip("g-0.g-peers.ns.svc"), None);
        pool.forget_addresses(|a| a.contains(".h-peers.ns."));
        assert_eq!(pool.pod_ip("h-0.h-peers.ns.svc"), None);
    }
}
