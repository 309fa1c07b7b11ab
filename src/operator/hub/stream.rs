//! The task that keeps one group's Watch stream open: it dials whom `Follower` says, stores each
//! state with its arrival time, and triggers a reconcile on a relevant change, when the lease
//! would run out unrenewed, and when the group's agents stop answering.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use super::change::ChangeDetector;
use super::follow::{self, Follower, Step};
use super::pool::{ClientPool, connect};
use super::{GroupRef, Shared, StreamConfig, lock, now_ms};
use crate::agent::client::LeaseState;
use crate::operator::metrics::Metrics;

/// How long a stream with no member pod to dial waits before it looks again anyway.
const NO_PODS_RECHECK: Duration = Duration::from_secs(30);

pub(super) struct Stream {
    pub target: GroupRef,
    pub config: watch::Receiver<StreamConfig>,
    pub shared: Arc<Mutex<Shared>>,
    pub pool: Arc<ClientPool>,
    pub trigger: mpsc::UnboundedSender<GroupRef>,
    pub metrics: Arc<Metrics>,
}

impl Stream {
    pub async fn run(mut self) {
        let mut follower = Follower::default();
        let mut changes = ChangeDetector::default();
        loop {
            let cfg = self.config.borrow_and_update().clone();
            let heartbeat = follow::heartbeat(cfg.lease);
            let mut last_error = String::from("no agent address");
            // Registered before the IPs are looked at, so that one learned meanwhile wakes it.
            let ips_changed = self.pool.ips_changed.notified();
            let mut ips_changed = std::pin::pin!(ips_changed);
            ips_changed.as_mut().enable();
            let mut dialed = false;
            'candidates: for address in follower.start_round(&cfg.addresses) {
                // Only members with a running pod: its IP comes from the pod store (the reconcile
                // that started this stream learns them next). Without a pod there is nobody to
                // dial, and looking the name up in DNS every round would be all the work a group
                // whose pods cannot be created (a quota, nothing schedulable) costs.
                let Some(ip) = self.pool.pod_ip(&address) else {
                    last_error = format!("{address} has no running pod");
                    follower.dial_failed(&address, Instant::now());
                    continue;
                };
                dialed = true;
                let client = match connect(&address, Some(ip), cfg.tls.clone()).await {
                    Ok(c) => c,
                    Err(e) => {
                        last_error = e.to_string();
                        follower.dial_failed(&address, Instant::now());
                        continue;
                    }
                };
                let mut stream = Box::pin(client.watch_every(heartbeat));
                let mut last_state = Instant::now();
                loop {
                    let lease_left = self.lease_left();
                    tokio::select! {
                        changed = self.config.changed() => {
                            if changed.is_err() { return; }
                            if !self.config.borrow().same(&cfg) { break 'candidates; }
                        }
                        next = tokio::time::timeout(follow::next_wait(heartbeat, last_state.elapsed(), lease_left), stream.next()) => match next {
                            Ok(Some(Ok(state))) => {
                                last_state = Instant::now();
                                let leader = state.leader.as_ref().map(|l| l.address.clone());
                                let step = follower.state(&address, leader.as_deref(), state.from_coordinator, Instant::now());
                                let changed = changes.changed(&state, cfg.load_sensitive);
                                {
                                    let mut s = lock(&self.shared);
                                    s.latest = Some((state, Instant::now()));
                                    s.unreachable = None;
                                }
                                if changed {
                                    self.metrics.agent_state_changes.inc();
                                    let _ = self.trigger.send(self.target.clone());
                                }
                                if let Step::Follow(to) = step {
                                    debug!(group = %self.target.name, from = %address, %to, "following the coordinator");
                                    break 'candidates;
                                }
                            }
                            Ok(Some(Err(e))) => {
                                last_error = e.to_string();
                                follower.gave_up(&address, Instant::now());
                                break;
                            }
                            Ok(None) => {
                                last_error = format!("{address} closed the state stream");
                                follower.gave_up(&address, Instant::now());
                                break;
                            }
                            Err(_) => {
                                // A lease ran out unrenewed, or the stream went silent: look again now.
                                let _ = self.trigger.send(self.target.clone());
                                if follow::went_silent(heartbeat, last_state.elapsed()) {
                                    last_error = format!("{address} sent nothing for {:?}", follow::silence(heartbeat));
                                    follower.gave_up(&address, Instant::now());
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            if !follower.answered() {
                self.mark_unreachable(&last_error);
            }
            let wait = follower.end_round();
            if !dialed {
                // No member has a running pod: nothing to dial until the pod store says one
                // has (or the configuration changes); a long timeout as a safety net only.
                tokio::select! {
                    _ = ips_changed => {}
                    changed = self.config.changed() => {
                        if changed.is_err() { return; }
                    }
                    _ = tokio::time::sleep(NO_PODS_RECHECK) => {}
                }
            } else if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Time left on the live lease of the latest state, counted from its arrival.
    fn lease_left(&self) -> Option<Duration> {
        let s = lock(&self.shared);
        s.latest.as_ref().and_then(|(st, at)| {
            (st.primary_lease == LeaseState::Live as i32).then(|| {
                Duration::from_millis(st.primary_lease_remaining_millis)
                    .saturating_sub(at.elapsed())
            })
        })
    }

    /// No agent answered in a round: record since when, and reconcile once when it starts.
    fn mark_unreachable(&self, error: &str) {
        let first = {
            let mut s = lock(&self.shared);
            let first = s.unreachable.is_none();
            let since = s
                .unreachable
                .as_ref()
                .map_or_else(now_ms, |(since, _)| *since);
            s.unreachable = Some((since, error.to_owned()));
            first
        };
        if first {
            info!(group = %self.target.name, namespace = ?self.target.namespace, error = %error, "no agent of the group answers");
            let _ = self.trigger.send(self.target.clone());
        }
    }
}
