//! The operator's link to the groups' agents: one Watch stream per group (to the coordinator
//! when it can, to whichever member answers otherwise), the latest state with its arrival time,
//! reconcile triggers on every meaningful change and when a lease would run out unrenewed, plus
//! one-off calls (Status probes of single members, membership changes, switchovers).
//!
//! Parts: `pool` (connections and pod IPs), `follow` (whom a stream follows, pure), `change`
//! (which states are worth a reconcile, pure) and `stream` (the task that ties them together).

mod change;
mod follow;
mod pool;
mod stream;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};
use tracing::info;

use self::pool::{CONNECT_TIMEOUT, ClientPool};
use super::metrics::Metrics;
use crate::agent::ClientError;
use crate::agent::client::{FailoverReason, GroupState, LeaseState, Member, TlsClientConfig};
use crate::api::ReplicaGroup;
use crate::plan::{
    AgentAction, AgentsObserved, FailoverView, GroupView, LeaseView, MemberView, NodeProbe,
};

type GroupRef = ObjectRef<DeserializeGuard<ReplicaGroup>>;
type Key = (String, String);

/// How to reach a group's agents.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Every member's and witness's agent address, in order of preference.
    pub addresses: Vec<String>,
    pub tls: Option<TlsClientConfig>,
    pub lease: Duration,
    /// LeastLoaded/LatencyAware groups reconcile on load changes too.
    pub load_sensitive: bool,
    /// Identifies the TLS material, so that a rotation restarts the stream.
    pub tls_hash: String,
}

impl StreamConfig {
    fn same(&self, other: &StreamConfig) -> bool {
        self.addresses == other.addresses
            && self.lease == other.lease
            && self.load_sensitive == other.load_sensitive
            && self.tls_hash == other.tls_hash
    }
}

#[derive(Debug, Default)]
struct Shared {
    latest: Option<(GroupState, Instant)>,
    /// Set while no agent answers: (since, unix ms; last error).
    unreachable: Option<(i64, String)>,
}

struct Entry {
    shared: Arc<Mutex<Shared>>,
    config: watch::Sender<StreamConfig>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
pub struct AgentHub {
    groups: Arc<Mutex<HashMap<Key, Entry>>>,
    pool: Arc<ClientPool>,
    trigger: mpsc::UnboundedSender<GroupRef>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map inconsistent (single assignments).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl AgentHub {
    pub fn new(metrics: Arc<Metrics>) -> (Self, impl Stream<Item = GroupRef> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = AgentHub {
            groups: Arc::default(),
            pool: Arc::default(),
            trigger: tx,
            metrics,
        };
        (
            hub,
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )
    }

    /// Starts (or re-targets) the group's state stream.
    pub fn ensure(&self, namespace: &str, name: &str, config: StreamConfig) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut groups = lock(&self.groups);
        if let Some(entry) = groups.get(&key)
            && !entry.task.is_finished()
        {
            if !entry.config.borrow().same(&config) {
                let _ = entry.config.send(config);
            }
            return;
        }
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (config_tx, config_rx) = watch::channel(config);
        let target = ObjectRef::new(name).within(namespace);
        let stream = stream::Stream {
            target,
            config: config_rx,
            shared: shared.clone(),
            pool: self.pool.clone(),
            trigger: self.trigger.clone(),
            metrics: self.metrics.clone(),
        };
        let task = tokio::spawn(stream.run());
        groups.insert(
            key,
            Entry {
                shared,
                config: config_tx,
                task,
            },
        );
        self.metrics.agent_streams.set(groups.len() as i64);
    }

    /// What the operator knows of the group's agents right now.
    pub fn observe(&self, namespace: &str, name: &str) -> AgentsObserved {
        let groups = lock(&self.groups);
        let Some(entry) = groups.get(&(namespace.to_owned(), name.to_owned())) else {
            return AgentsObserved::Connecting;
        };
        let shared = lock(&entry.shared);
        match (&shared.unreachable, &shared.latest) {
            (Some((since_ms, error)), _) => AgentsObserved::Unreachable {
                since_ms: *since_ms,
                error: error.clone(),
            },
            (None, Some((state, at))) => AgentsObserved::Connected {
                view: view_of(state),
                age_ms: at.elapsed().as_millis() as u64,
            },
            (None, None) => AgentsObserved::Connecting,
        }
    }

    /// The coordinator's address, when the latest state names one.
    pub fn leader_address(&self, namespace: &str, name: &str) -> Option<String> {
        let groups = lock(&self.groups);
        let entry = groups.get(&(namespace.to_owned(), name.to_owned()))?;
        let shared = lock(&entry.shared);
        shared
            .latest
            .as_ref()
            .and_then(|(s, _)| s.leader.as_ref())
            .map(|l| l.address.clone())
            .filter(|a| !a.is_empty())
    }

    /// Stops following groups that no longer exist.
    pub fn forget_deleted_groups(&self, store: Store<DeserializeGuard<ReplicaGroup>>) {
        let groups = self.groups.clone();
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                if store.is_empty()
                    && !lock(&groups).is_empty()
                    && store.wait_until_ready().await.is_err()
                {
                    continue;
                }
                let mut map = lock(&groups);
                let mut deleted = Vec::new();
                map.retain(|(ns, name), entry| {
                    let keep = store.get(&ObjectRef::new(name).within(ns)).is_some();
                    if !keep {
                        info!(namespace = %ns, group = %name, "group deleted; closing its state stream");
                        entry.task.abort();
                        metrics.forget_group(ns, name);
                        deleted.push(format!(".{name}-peers.{ns}."));
                    }
                    keep
                });
                metrics.agent_streams.set(map.len() as i64);
                // Its agents' addresses (`<pod>.<group>-peers.<namespace>.svc…`) go too.
                let of_deleted =
                    |address: &str| deleted.iter().any(|d| address.contains(d.as_str()));
                pool.forget_addresses(of_deleted);
            }
        });
    }

    /// The member pods' current IPs by agent address, as the API server reports them (`None`:
    /// the pod has no running IP now; its name is dialed through DNS).
    pub fn learn_pod_ips(&self, ips: impl IntoIterator<Item = (String, Option<IpAddr>)>) {
        self.pool.learn_pod_ips(ips);
    }

    /// Asks one member directly who it is (used before it joins the group).
    pub async fn probe(
        &self,
        address: &str,
        tls: Option<TlsClientConfig>,
    ) -> Result<NodeProbe, ClientError> {
        let client = self.pool.client(address, tls).await?;
        let state = tokio::time::timeout(CONNECT_TIMEOUT, client.status())
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Connect {
                    address: address.to_owned(),
                    reason: "no answer".into(),
                })
            })
            .inspect_err(|e| self.pool.forget_client(address, e))?;
        let node = state.answered_by.unwrap_or_default();
        Ok(NodeProbe {
            id: node.id,
            initialized: node.initialized,
        })
    }

    /// Performs one planned action against the group; returns a summary for logs and events.
    pub async fn execute(
        &self,
        namespace: &str,
        name: &str,
        action: &AgentAction,
        addresses: &[String],
        tls: Option<TlsClientConfig>,
    ) -> Result<String, ClientError> {
        if let AgentAction::Bootstrap { via, members } = action {
            let address = addresses
                .iter()
                .find(|a| a.starts_with(&format!("{via}.")))
                .cloned()
                .unwrap_or_else(|| via.clone());
            let client = self
                .pool
                .client(&address, tls)
                .await?
                .with_timeout(Duration::from_secs(30));
            let members = members
                .iter()
                .map(|m| Member {
                    id: m.id,
                    name: m.name.clone(),
                    address: m.address.clone(),
                    witness: m.witness,
                })
                .collect();
            let by = client
                .bootstrap(members)
                .await
                .inspect_err(|e| self.pool.forget_client(&address, e))?;
            return Ok(format!("initialized the group on node {by}"));
        }
        // Membership and switchover calls go to the coordinator (any member would forward or
        // refuse; going straight there saves a hop and a failure mode).
        let mut candidates: Vec<String> =
            self.leader_address(namespace, name).into_iter().collect();
        candidates.extend(addresses.iter().cloned());
        let mut last = None;
        for address in candidates {
            let client = match self.pool.client(&address, tls.clone()).await {
                Ok(c) => c.with_timeout(Duration::from_secs(30)),
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let result = match action {
                AgentAction::AddMember(m) => client
                    .add_member(Member {
                        id: m.id,
                        name: m.name.clone(),
                        address: m.address.clone(),
                        witness: m.witness,
                    })
                    .await
                    .map(|r| format!("added {} (id {}); voters {:?}", m.name, m.id, r.voters)),
                AgentAction::RemoveMember { id, name, .. } => client
                    .remove_member(*id)
                    .await
                    .map(|r| format!("removed {name} (id {id}); voters {:?}", r.voters)),
                AgentAction::Switchover { target, .. } => client
                    .switchover(target.as_deref().unwrap_or(""))
                    .await
                    .map(|r| {
                        format!(
                            "switched over to {} at epoch {}",
                            r.primary.map(|p| p.name).unwrap_or_default(),
                            r.epoch
                        )
                    }),
                AgentAction::Pause => client
                    .pause()
                    .await
                    .map(|_| "paused automatic failover".to_owned()),
                AgentAction::Resume => client
                    .resume()
                    .await
                    .map(|_| "resumed automatic failover".to_owned()),
                AgentAction::SetFenced { member, fenced } => {
                    client.fence(member, *fenced).await.map(|_| {
                        if *fenced {
                            format!("fenced {member}: it is never appointed and gets no traffic")
                        } else {
                            format!("unfenced {member}")
                        }
                    })
                }
                AgentAction::Bootstrap { .. } => unreachable_bootstrap(),
            };
            match result {
                Ok(summary) => return Ok(summary),
                // The answer of the group itself (refused, not allowed): final.
                Err(e)
                    if matches!(
                        e.code(),
                        Some(
                            tonic::Code::FailedPrecondition
                                | tonic::Code::InvalidArgument
                                | tonic::Code::NotFound
                        )
                    ) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    self.pool.forget_client(&address, &e);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect {
            address: name.to_owned(),
            reason: "no agent address known".into(),
        }))
    }
}

fn unreachable_bootstrap() -> Result<String, ClientError> {
    Err(ClientError::Connect {
        address: String::new(),
        reason: "bootstrap is handled above".into(),
    })
}

/// The agents' state in the plan's terms.
pub fn view_of(state: &GroupState) -> GroupView {
    GroupView {
        from_coordinator: state.from_coordinator,
        initialized: state.answered_by.as_ref().is_some_and(|n| n.initialized),
        epoch: state.epoch,
        primary: state.primary.as_ref().map(|p| p.name.clone()),
        lease: match LeaseState::try_from(state.primary_lease) {
            Ok(LeaseState::Live) => LeaseView::Live,
            Ok(LeaseState::Expired) => LeaseView::Expired,
            Ok(LeaseState::Released) => LeaseView::Released,
            _ => LeaseView::None,
        },
        lease_remaining_ms: state.primary_lease_remaining_millis,
        leader: state.leader.as_ref().map(|l| l.name.clone()),
        paused: state.paused,
        flap_guard_tripped: state.flap_guard_tripped,
        switchover_pending: state.switchover_pending,
        members: state
            .members
            .iter()
            .map(|m| MemberView {
                id: m.id,
                name: m.name.clone(),
                voter: m.voter,
                witness: m.witness,
                role: crate::agent::wire::role(m.role),
                healthy: m.healthy,
                load: m.load,
                latency_ms: m.latency_ms,
                position: m.workload_position,
                message: m.workload_message.clone(),
                hooks: crate::agent::wire::hook_outcomes(&m.hooks),
                fenced: m.fenced,
            })
            .collect(),
        failovers: state
            .failovers
            .iter()
            .map(|f| FailoverView {
                from: f.from.as_ref().map(|m| m.name.clone()),
                to: f.to.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
                epoch: f.epoch,
                reason: match FailoverReason::try_from(f.reason) {
                    Ok(FailoverReason::LeaseExpired) => "LeaseExpired",
                    Ok(FailoverReason::Released) => "Released",
                    Ok(FailoverReason::WorkloadUnhealthy) => "WorkloadUnhealthy",
                    Ok(FailoverReason::Switchover) => "Switchover",
                    _ => "Unknown",
                }
                .to_owned(),
                detected_at_ms: f.detected_at_unix_millis,
                appointed_at_ms: f.appointed_at_unix_millis,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::client::MemberStatus;
    use crate::agent::proto::HookOutcome;
    use crate::api::HookKind;

    #[test]
    fn the_view_carries_each_members_workload_report() {
        let state = GroupState {
            members: vec![MemberStatus {
                id: 1,
                name: "g-0".into(),
                workload_position: Some(42),
                workload_message: "the workload's health check fails".into(),
                hooks: vec![
                    HookOutcome {
                        hook: "promote".into(),
                        epoch: 4,
                        ok: false,
                        exit_code: Some(1),
                        duration_millis: 30,
                        message: "exited with code 1".into(),
                        output: "boom".into(),
                    },
                    // A hook this operator does not know is dropped.
                    HookOutcome {
                        hook: "teleport".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let view = view_of(&state);
        let m = &view.members[0];
        assert_eq!(m.position, Some(42));
        assert_eq!(m.message, "the workload's health check fails");
        let hooks: Vec<_> = m
            .hooks
            .iter()
            .map(|h| (h.hook, h.epoch, h.ok, h.output.as_str()))
            .collect();
        assert_eq!(hooks, [(HookKind::Promote, 4, false, "boom")]);
    }
}
