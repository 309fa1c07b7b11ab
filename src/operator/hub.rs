//! The operator's link to the groups' agents: one Watch stream per group (to the coordinator
//! when it can, to whichever member answers otherwise), the latest state with its arrival time,
//! reconcile triggers on every meaningful change and when a lease would run out unrenewed, plus
//! one-off calls (Status probes of single members, membership changes, switchovers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use super::metrics::Metrics;
use crate::agent::client::{FailoverReason, GroupState, LeaseState, Member, Role, TlsClientConfig};
use crate::agent::{AgentClient, ClientError};
use crate::api::ReplicaGroup;
use crate::plan::{AgentAction, AgentsObserved, FailoverView, GroupView, LeaseView, MemberView, NodeProbe};

type GroupRef = ObjectRef<DeserializeGuard<ReplicaGroup>>;
/// Agent address (DNS name) → the member pod's current IP. A replaced pod's name keeps
/// resolving to its old IP, or to nothing, for as long as cluster DNS caches it (5–30 s); the
/// operator learns the new IP from the API server at once and dials it, verifying TLS against
/// the name.
type PodIps = Arc<Mutex<HashMap<String, IpAddr>>>;
type Key = (String, String);
/// A reused connection and the pod IP it was dialed at (`None`: through DNS).
type CachedClient = (AgentClient, Option<IpAddr>);

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
    /// Connections for one-off calls, reused: a failover's switchover should not pay for a TLS
    /// handshake. Dropped on the first transport error, or when the pod's IP changed.
    clients: Arc<Mutex<HashMap<String, CachedClient>>>,
    /// Agent address (DNS name) → the pod IP the API server reports for it.
    pod_ips: PodIps,
    trigger: mpsc::UnboundedSender<GroupRef>,
    metrics: Arc<Metrics>,
}

/// Calls to a single agent give up after this (a dead pod's IP may not even refuse).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
        let hub = AgentHub { groups: Arc::default(), clients: Arc::default(), pod_ips: Arc::default(), trigger: tx, metrics };
        (hub, tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
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
        let task = tokio::spawn(stream_group(target, config_rx, shared.clone(), self.pod_ips.clone(), self.trigger.clone(), self.metrics.clone()));
        groups.insert(key, Entry { shared, config: config_tx, task });
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
            (Some((since_ms, error)), _) => AgentsObserved::Unreachable { since_ms: *since_ms, error: error.clone() },
            (None, Some((state, at))) => AgentsObserved::Connected { view: view_of(state), age_ms: at.elapsed().as_millis() as u64 },
            (None, None) => AgentsObserved::Connecting,
        }
    }

    /// The coordinator's address, when the latest state names one.
    pub fn leader_address(&self, namespace: &str, name: &str) -> Option<String> {
        let groups = lock(&self.groups);
        let entry = groups.get(&(namespace.to_owned(), name.to_owned()))?;
        let shared = lock(&entry.shared);
        shared.latest.as_ref().and_then(|(s, _)| s.leader.as_ref()).map(|l| l.address.clone()).filter(|a| !a.is_empty())
    }

    /// Stops following groups that no longer exist.
    pub fn forget_deleted_groups(&self, store: Store<DeserializeGuard<ReplicaGroup>>) {
        let groups = self.groups.clone();
        let pod_ips = self.pod_ips.clone();
        let clients = self.clients.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                if store.is_empty() && !lock(&groups).is_empty() && store.wait_until_ready().await.is_err() {
                    continue;
                }
                let mut map = lock(&groups);
                let mut deleted = Vec::new();
                map.retain(|(ns, name), entry| {
                    let keep = store.get(&ObjectRef::new(name).within(ns)).is_some();
                    if !keep {
                        info!(namespace = %ns, group = %name, "group deleted; closing its state stream");
                        entry.task.abort();
                        deleted.push(format!(".{name}-peers.{ns}."));
                    }
                    keep
                });
                metrics.agent_streams.set(map.len() as i64);
                // Its agents' addresses (`<pod>.<group>-peers.<namespace>.svc…`) go too.
                let of_deleted = |address: &str| deleted.iter().any(|d| address.contains(d.as_str()));
                lock(&pod_ips).retain(|address, _| !of_deleted(address));
                lock(&clients).retain(|address, _| !of_deleted(address));
            }
        });
    }

    async fn client(&self, address: &str, tls: Option<TlsClientConfig>) -> Result<AgentClient, ClientError> {
        let ip = lock(&self.pod_ips).get(address).copied();
        if let Some((c, at)) = lock(&self.clients).get(address)
            && *at == ip
        {
            return Ok(c.clone());
        }
        let c = connect(address, ip, tls).await?;
        lock(&self.clients).insert(address.to_owned(), (c.clone(), ip));
        Ok(c)
    }

    /// The member pods' current IPs by agent address, as the API server reports them (`None`:
    /// the pod has no running IP now; its name is dialed through DNS).
    pub fn learn_pod_ips(&self, ips: impl IntoIterator<Item = (String, Option<IpAddr>)>) {
        let mut known = lock(&self.pod_ips);
        for (address, ip) in ips {
            match ip {
                Some(ip) => known.insert(address, ip),
                None => known.remove(&address),
            };
        }
    }

    /// A call failed for a reason other than the group's answer: reconnect next time.
    fn forget_client(&self, address: &str, error: &ClientError) {
        let transport = !matches!(
            error.code(),
            Some(tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::AlreadyExists)
        );
        if transport {
            lock(&self.clients).remove(address);
        }
    }

    /// Asks one member directly who it is (used before it joins the group).
    pub async fn probe(&self, address: &str, tls: Option<TlsClientConfig>) -> Result<NodeProbe, ClientError> {
        let client = self.client(address, tls).await?;
        let state = tokio::time::timeout(CONNECT_TIMEOUT, client.status())
            .await
            .unwrap_or_else(|_| Err(ClientError::Connect { address: address.to_owned(), reason: "no answer".into() }))
            .inspect_err(|e| self.forget_client(address, e))?;
        let node = state.answered_by.unwrap_or_default();
        Ok(NodeProbe { id: node.id, initialized: node.initialized })
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
            let address = addresses.iter().find(|a| a.starts_with(&format!("{via}."))).cloned().unwrap_or_else(|| via.clone());
            let client = self.client(&address, tls).await?.with_timeout(Duration::from_secs(30));
            let members = members
                .iter()
                .map(|m| Member { id: m.id, name: m.name.clone(), address: m.address.clone(), witness: m.witness })
                .collect();
            let by = client.bootstrap(members).await.inspect_err(|e| self.forget_client(&address, e))?;
            return Ok(format!("initialized the group on node {by}"));
        }
        // Membership and switchover calls go to the coordinator (any member would forward or
        // refuse; going straight there saves a hop and a failure mode).
        let mut candidates: Vec<String> = self.leader_address(namespace, name).into_iter().collect();
        candidates.extend(addresses.iter().cloned());
        let mut last = None;
        for address in candidates {
            let client = match self.client(&address, tls.clone()).await {
                Ok(c) => c.with_timeout(Duration::from_secs(30)),
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let result = match action {
                AgentAction::AddMember(m) => client
                    .add_member(Member { id: m.id, name: m.name.clone(), address: m.address.clone(), witness: m.witness })
                    .await
                    .map(|r| format!("added {} (id {}); voters {:?}", m.name, m.id, r.voters)),
                AgentAction::RemoveMember { id, name, .. } => {
                    client.remove_member(*id).await.map(|r| format!("removed {name} (id {id}); voters {:?}", r.voters))
                }
                AgentAction::Switchover { target, .. } => client.switchover(target.as_deref().unwrap_or("")).await.map(|r| {
                    format!("switched over to {} at epoch {}", r.primary.map(|p| p.name).unwrap_or_default(), r.epoch)
                }),
                AgentAction::Pause => client.pause().await.map(|_| "paused automatic failover".to_owned()),
                AgentAction::Resume => client.resume().await.map(|_| "resumed automatic failover".to_owned()),
                AgentAction::Bootstrap { .. } => unreachable_bootstrap(),
            };
            match result {
                Ok(summary) => return Ok(summary),
                // The answer of the group itself (refused, not allowed): final.
                Err(e) if matches!(e.code(), Some(tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument | tonic::Code::NotFound)) => {
                    return Err(e);
                }
                Err(e) => {
                    self.forget_client(&address, &e);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect { address: name.to_owned(), reason: "no agent address known".into() }))
    }
}

fn unreachable_bootstrap() -> Result<String, ClientError> {
    Err(ClientError::Connect { address: String::new(), reason: "bootstrap is handled above".into() })
}

async fn connect(address: &str, ip: Option<IpAddr>, tls: Option<TlsClientConfig>) -> Result<AgentClient, ClientError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AgentClient::connect_at(address, ip, tls)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Connect { address: address.to_owned(), reason: format!("no answer within {CONNECT_TIMEOUT:?}") }),
    }
}

/// What makes a new state worth a reconcile (heartbeats that only refresh the lease time are not).
fn digest(state: &GroupState, load_sensitive: bool) -> String {
    let mut d = format!(
        "{}|{:?}|{}|{:?}|{}|{}|{}|{}|{}|{}",
        state.epoch,
        state.primary.as_ref().map(|p| p.id),
        state.primary_lease,
        state.leader.as_ref().map(|l| l.id),
        state.paused,
        state.flap_guard_tripped,
        state.switchover_pending,
        state.from_coordinator,
        state.answered_by.as_ref().is_some_and(|n| n.initialized),
        state.failovers.len(),
    );
    for m in &state.members {
        d.push_str(&format!("|{}:{}:{}:{}:{}", m.id, m.name, m.voter, m.role, m.healthy));
        if load_sensitive {
            // Two significant digits: the traffic policy's hysteresis judges what matters.
            d.push_str(&format!(":{:.1e}:{:.1e}", m.load.unwrap_or(-1.0), m.latency_ms.unwrap_or(-1.0)));
        }
    }
    d
}

/// How long a coordinator the hub could not reach is left alone before it is tried again.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);

async fn stream_group(
    target: GroupRef,
    mut config: watch::Receiver<StreamConfig>,
    shared: Arc<Mutex<Shared>>,
    pod_ips: PodIps,
    trigger: mpsc::UnboundedSender<GroupRef>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut preferred: Option<String> = None;
    // The coordinator we last tried to follow and could not reach (a restarted pod whose name
    // does not resolve yet): its relayed state is used meanwhile instead of dialing it again at
    // once, which spun in a tight loop between relay and coordinator during failovers.
    let mut unreachable_leader: Option<(String, Instant)> = None;
    let mut last_digest = String::new();
    loop {
        let cfg = config.borrow_and_update().clone();
        // Re-sends every quarter lease keep the operator's view of the lease fresh.
        let heartbeat = (cfg.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let first: Vec<String> = preferred.take().into_iter().collect();
        let candidates: Vec<String> = first.iter().cloned().chain(cfg.addresses.iter().filter(|a| !first.contains(a)).cloned()).collect();
        let mut last_error = String::from("no agent address");
        let mut answered = false;
        'candidates: for address in candidates {
            let ip = lock(&pod_ips).get(&address).copied();
            let client = match connect(&address, ip, cfg.tls.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    last_error = e.to_string();
                    if first.contains(&address) {
                        unreachable_leader = Some((address.clone(), Instant::now()));
                    }
                    continue;
                }
            };
            let mut stream = Box::pin(client.watch_every(heartbeat));
            loop {
                // Wake up when the lease in the latest state would run out without a renewal.
                let lease_left = {
                    let s = lock(&shared);
                    s.latest.as_ref().and_then(|(st, at)| {
                        (st.primary_lease == LeaseState::Live as i32)
                            .then(|| Duration::from_millis(st.primary_lease_remaining_millis).saturating_sub(at.elapsed()))
                    })
                };
                let silence = heartbeat * 4;
                let wait = lease_left.map_or(silence, |l| l.min(silence)) + Duration::from_millis(5);
                tokio::select! {
                    changed = config.changed() => {
                        if changed.is_err() { return; }
                        if !config.borrow().same(&cfg) { break 'candidates; }
                    }
                    next = tokio::time::timeout(wait, stream.next()) => match next {
                        Ok(Some(Ok(state))) => {
                            answered = true;
                            backoff = Duration::from_millis(100);
                            let d = digest(&state, cfg.load_sensitive);
                            let leader = state.leader.as_ref().map(|l| l.address.clone()).filter(|a| !a.is_empty() && *a != address);
                            let relayed = !state.from_coordinator;
                            {
                                let mut s = lock(&shared);
                                s.latest = Some((state, Instant::now()));
                                s.unreachable = None;
                            }
                            if d != last_digest {
                                last_digest = d;
                                metrics.agent_state_changes.inc();
                                let _ = trigger.send(target.clone());
                            }
                            // Only the coordinator's own word carries a trustworthy lease.
                            let recently_unreachable = unreachable_leader
                                .as_ref()
                                .is_some_and(|(a, at)| leader.as_ref() == Some(a) && at.elapsed() < FOLLOW_RETRY);
                            if relayed && leader.is_some() && !recently_unreachable {
                                debug!(group = %target.name, from = %address, to = ?leader, "following the coordinator");
                                preferred = leader;
                                break 'candidates;
                            }
                        }
                        Ok(Some(Err(e))) => { last_error = e.to_string(); break; }
                        Ok(None) => { last_error = format!("{address} closed the state stream"); break; }
                        Err(_) => {
                            // A lease ran out unrenewed, or the stream went silent: look again now.
                            let _ = trigger.send(target.clone());
                            if lease_left.is_none_or(|l| l >= silence) {
                                last_error = format!("{address} sent nothing for {silence:?}");
                                break;
                            }
                        }
                    }
                }
            }
        }
        if !answered {
            let first = {
                let mut s = lock(&shared);
                let first = s.unreachable.is_none();
                let since = s.unreachable.as_ref().map_or_else(now_ms, |(since, _)| *since);
                s.unreachable = Some((since, last_error.clone()));
                first
            };
            if first {
                info!(group = %target.name, namespace = ?target.namespace, error = %last_error, "no agent of the group answers");
                let _ = trigger.send(target.clone());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn role(r: i32) -> crate::api::MemberRole {
    use crate::api::MemberRole;
    match Role::try_from(r) {
        Ok(Role::Primary) => MemberRole::Primary,
        Ok(Role::Backup) => MemberRole::Backup,
        Ok(Role::Active) => MemberRole::Active,
        Ok(Role::Witness) => MemberRole::Witness,
        _ => MemberRole::Unknown,
    }
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
                role: role(m.role),
                healthy: m.healthy,
                load: m.load,
                latency_ms: m.latency_ms,
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
