//! Leader election: one Lease (kube-lease-manager) decides which operator replica runs the
//! controller. A standby waits here, watching the lease; the leader keeps the campaign until it
//! loses the lease or shuts down, and then releases it.

use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::{debug, info};

type LeaseWatch = (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
);

/// Seconds a lease lasts without renewal, and the grace before its expiry that the holder
/// renews within (so it renews every second). Short because routing waits for a leader: when
/// the node of the leader and of a group's primary is lost, the agents appoint a new primary
/// within one group lease, and `NAME-rw` follows only once the standby holds this lease
/// (docs/operations.md, *Operator high availability*). A renewal is one small write a second;
/// the grace stays 2 s so that a renewal slowed by a busy API server does not lose the lease.
const LEASE_SECONDS: u64 = 3;
const GRACE_SECONDS: u64 = 2;
/// How long ending a campaign may take (the manager's task releases the lease meanwhile).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Who campaigns for which lease.
#[derive(Clone)]
pub struct Candidate {
    pub client: Client,
    /// The lease's namespace (the operator's own).
    pub namespace: String,
    pub lease: String,
    /// This replica's identity (its pod name).
    pub identity: String,
}

/// A campaign this replica has won: it leads until `lost()` returns.
pub struct Leadership {
    campaign: LeaseWatch,
}

impl Candidate {
    /// Campaigns for the lease; the receiver says whether this replica holds it.
    async fn campaign(&self) -> anyhow::Result<LeaseWatch> {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(self.client.clone(), &self.lease)
                .with_namespace(&self.namespace)
                .with_identity(&self.identity)
                .with_duration(LEASE_SECONDS)
                .with_grace(GRACE_SECONDS)
                .with_field_manager(field_manager(&self.identity))
                .build()
                .await?;
        Ok(manager.watch().await)
    }

    /// Waits until this replica holds the lease. `None`: `shutdown` completed first, and the
    /// campaign was ended.
    pub async fn lead(
        &self,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> anyhow::Result<Option<Leadership>> {
        let (mut leading, mut task) = self.campaign().await?;
        info!(lease = %self.lease, identity = %self.identity, "waiting for leadership");
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        // kube-lease-manager sleeps until the holder's lease would expire, even when the holder
        // released it on shutdown; watching the lease lets a standby take over a rollout's
        // released lease at once instead of up to a lease later (and costs no request per second,
        // as looking at it every second did).
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.lease));
        let mut changes =
            std::pin::pin!(watcher(leases, config).default_backoff().applied_objects());
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("the leader election task ended");
                    }
                }
                change = changes.next() => match change {
                    Some(Ok(lease)) if released(&lease) => {
                        info!("the lease was released: trying for it now");
                        drop(leading);
                        let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
                        (leading, task) = self.campaign().await?;
                    }
                    Some(Ok(_)) => {}
                    // The watcher retries with backoff; the campaign goes on meanwhile.
                    Some(Err(e)) => debug!(error = %e, "watching the lease"),
                    None => anyhow::bail!("the lease watch ended"),
                },
                // A standby must stop on SIGTERM too: one that lingers through its grace period
                // can win the lease its leader just released in the same rollout, lead for a few
                // seconds, and be killed without releasing it.
                _ = &mut *shutdown => {
                    info!("shutting down before leading");
                    stop_campaigning((leading, task)).await;
                    return Ok(None);
                }
            }
        }
        Ok(Some(Leadership {
            campaign: (leading, task),
        }))
    }
}

impl Leadership {
    /// Returns when this replica no longer holds the lease (or the election task ended).
    pub async fn lost(&mut self) {
        let leading = &mut self.campaign.0;
        while *leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                break;
            }
        }
    }

    /// Ends the campaign, releasing the lease if this replica still holds it.
    pub async fn stop(self) {
        stop_campaigning(self.campaign).await;
    }
}

/// One field manager per candidate: the library's lock is a server-side apply that must
/// conflict with the other candidate's (a shared manager name lets both win).
fn field_manager(identity: &str) -> String {
    format!("quorate-operator-lease-{identity}")
}

/// A lease without a holder: its last holder released it (or nobody ever held it).
fn released(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

/// Ends the campaign: closing the receiver makes the manager's task release the lease if it
/// holds it; released once more here in case the task ended otherwise.
async fn stop_campaigning((leading, task): LeaseWatch) {
    drop(leading);
    if let Ok(Ok(Ok(manager))) = tokio::time::timeout(STOP_TIMEOUT, task).await {
        let _ = manager.release().await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    use super::*;

    fn lease(holder: Option<&str>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_without_a_holder_is_released() {
        assert!(released(&lease(None)));
        assert!(released(&lease(Some(""))));
        assert!(released(&Lease::default()));
        assert!(!released(&lease(Some("quorate-operator-0"))));
    }

    #[test]
    fn candidates_use_distinct_field_managers() {
        assert_ne!(
            field_manager("quorate-operator-7d9f-a"),
            field_manager("quorate-operator-7d9f-b")
        );
    }
}
