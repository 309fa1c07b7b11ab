//! What the gRPC and HTTP layers get from the runtime: a read-only copy of the core, refreshed
//! after every input, and a channel to the one task that owns the core. They never share
//! mutable state with it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::config::AgentSettings;
use super::coordinator::{MemberReport, ReportDecision};
use super::core::AgentCore;
use super::group::NodeId;
use super::metrics::Metrics;
use super::raft::{Peers, RaftNode};
use super::snapshot::{self, RaftFacts};
use super::{clock, proto};
use crate::supervisor::protocol::WorkloadReport;

/// A request for the core task that needs an answer.
pub(crate) enum Request {
    Report {
        from: NodeId,
        report: MemberReport,
        answer: oneshot::Sender<ReportDecision>,
    },
    Demote {
        epoch: u64,
        answer: oneshot::Sender<()>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// The supervisor's report (no answer).
    Workload(WorkloadReport),
}

/// The core task stopped (the agent is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the agent is stopping")]
pub struct Stopped;

#[derive(Clone)]
pub(crate) struct AgentHandle {
    pub settings: Arc<AgentSettings>,
    pub id: NodeId,
    pub raft: RaftNode,
    pub peers: Arc<Peers>,
    pub metrics: Arc<Metrics>,
    pub requests: mpsc::Sender<Request>,
    /// The core as of its last input.
    pub view: watch::Receiver<Arc<AgentCore>>,
    /// Bumped when the group state may have changed (drives Watch streams).
    pub changes: watch::Receiver<u64>,
    pub stopping: watch::Receiver<bool>,
}

impl AgentHandle {
    pub fn core(&self) -> Arc<AgentCore> {
        self.view.borrow().clone()
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(request(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// A member's report, decided by the core.
    pub async fn report(
        &self,
        from: NodeId,
        report: MemberReport,
    ) -> Result<ReportDecision, Stopped> {
        self.ask(|answer| Request::Report {
            from,
            report,
            answer,
        })
        .await
    }

    /// Gives back the lease of `epoch`; returns once the workload was told.
    pub async fn demote(&self, epoch: u64) -> Result<(), Stopped> {
        self.ask(|answer| Request::Demote { epoch, answer }).await
    }

    /// Hands the supervisor's report to the core.
    pub async fn workload(&self, report: WorkloadReport) -> Result<(), Stopped> {
        self.requests
            .send(Request::Workload(report))
            .await
            .map_err(|_| Stopped)
    }

    pub async fn shutdown(&self) -> Result<(), Stopped> {
        self.ask(|done| Request::Shutdown { done }).await
    }

    /// The group state as this member sees it now.
    pub async fn group_state(&self) -> proto::GroupState {
        let initialized = self.raft.is_initialized().await.unwrap_or(false);
        let commit_index = if initialized {
            self.raft.committed_index().await
        } else {
            0
        };
        snapshot::group_state(
            &self.core(),
            RaftFacts {
                initialized,
                commit_index,
            },
            clock::monotonic_millis(),
        )
    }
}
