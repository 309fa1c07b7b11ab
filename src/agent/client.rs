//! The client the operator (and tests, and kubectl-quorate) use to talk to an agent.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::transport::Channel;

use super::proto::{self, agent_client::AgentClient as GrpcClient};
use super::server::COORDINATOR_METADATA;
pub use super::transport::TlsClientConfig;
use super::transport::{self, TransportError};

pub use super::proto::{
    FailoverReason, FailoverRecord, GroupConfig, GroupState, LeaseState, Member, MemberRef,
    MemberStatus, MembershipReply, Mode, NodeInfo, Role, SwitchoverReply,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid agent address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("connecting to agent {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("agent {address}: {code:?}: {message}")]
    Rpc {
        address: String,
        code: tonic::Code,
        message: String,
    },
}

impl ClientError {
    /// The gRPC status code, for RPC errors (`FailedPrecondition`, `Unavailable`, …).
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection to one agent. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AgentClient {
    address: String,
    channel: Channel,
    timeout: Duration,
    /// Kept to follow a member's pointer to the coordinator.
    tls: Option<TlsClientConfig>,
}

impl AgentClient {
    /// Connects to `address` (`host:port`), with mTLS when `tls` is given.
    pub async fn connect(address: &str, tls: Option<TlsClientConfig>) -> Result<Self, ClientError> {
        Self::connect_at(address, None, tls).await
    }

    /// Connects to the agent named by `address`, dialing `dial` when given (see
    /// [`transport::channel_at`]).
    pub async fn connect_at(
        address: &str,
        dial: Option<std::net::IpAddr>,
        tls: Option<TlsClientConfig>,
    ) -> Result<Self, ClientError> {
        let channel = transport::channel_at(address, dial, tls.as_ref()).map_err(|e| match e {
            TransportError::Address { reason, .. } => ClientError::Address {
                address: address.to_string(),
                reason,
            },
            other => ClientError::Connect {
                address: address.to_string(),
                reason: other.to_string(),
            },
        })?;
        let mut client = Self {
            address: address.to_string(),
            channel,
            timeout: Duration::from_secs(10),
            tls,
        };
        // Fail fast when nothing answers there.
        client.status().await.map_err(|e| match e {
            ClientError::Rpc { message, .. } => ClientError::Connect {
                address: address.to_string(),
                reason: message,
            },
            other => other,
        })?;
        client.timeout = Duration::from_secs(30);
        Ok(client)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Deadline of unary calls (Switchover and AddMember wait for the group; keep it generous).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn grpc(&self) -> GrpcClient<Channel> {
        GrpcClient::new(self.channel.clone()).max_decoding_message_size(super::MAX_MESSAGE_BYTES)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.timeout);
        r
    }

    fn error(&self, status: tonic::Status) -> ClientError {
        ClientError::Rpc {
            address: self.address.clone(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// Runs an admin call on this agent; when it answers that another member is the
    /// coordinator (members refuse admin calls rather than forward them, see
    /// `server::COORDINATOR_METADATA`), runs it once more there.
    async fn on_coordinator<M, T, F, Fut>(&self, message: M, call: F) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(GrpcClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let refusal = match call(self.grpc(), self.request(message.clone())).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => s,
        };
        let coordinator = refusal
            .metadata()
            .get(COORDINATOR_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|a| *a != self.address)
            .map(str::to_owned);
        let Some(address) = coordinator else {
            return Err(self.error(refusal));
        };
        let Ok(channel) = transport::channel(&address, self.tls.as_ref()) else {
            return Err(self.error(refusal));
        };
        let there = Self {
            address,
            channel,
            timeout: self.timeout,
            tls: self.tls.clone(),
        };
        call(there.grpc(), there.request(message))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| there.error(s))
    }

    pub async fn status(&self) -> Result<GroupState, ClientError> {
        let mut c = self.grpc();
        c.status(self.request(proto::StatusRequest {}))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.error(s))
    }

    /// The current state at once, then every change, and a heartbeat at least every second.
    pub fn watch(&self) -> impl Stream<Item = Result<GroupState, ClientError>> + Send + 'static {
        self.watch_every(Duration::ZERO)
    }

    /// Like `watch`, with a re-send at least every `heartbeat` (zero = the agent's default, 1 s).
    /// The operator asks for a fraction of the lease so that the lease time it sees stays fresh.
    pub fn watch_every(
        &self,
        heartbeat: Duration,
    ) -> impl Stream<Item = Result<GroupState, ClientError>> + Send + 'static {
        let mut c = self.grpc();
        let me = self.clone();
        let heartbeat_millis = u32::try_from(heartbeat.as_millis()).unwrap_or(u32::MAX);
        async_stream_from(async move {
            match c.watch(proto::WatchRequest { heartbeat_millis }).await {
                Ok(r) => {
                    let me2 = me.clone();
                    Ok(r.into_inner()
                        .map(move |item| item.map_err(|s| me2.error(s))))
                }
                Err(s) => Err(me.error(s)),
            }
        })
    }

    pub async fn bootstrap(&self, members: Vec<Member>) -> Result<u64, ClientError> {
        let mut c = self.grpc();
        c.bootstrap(self.request(proto::BootstrapRequest { members }))
            .await
            .map(|r| r.into_inner().initialized_by)
            .map_err(|s| self.error(s))
    }

    pub async fn add_member(&self, member: Member) -> Result<MembershipReply, ClientError> {
        self.on_coordinator(member, |mut c, r| async move { c.add_member(r).await })
            .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<MembershipReply, ClientError> {
        self.on_coordinator(proto::RemoveMemberRequest { id }, |mut c, r| async move {
            c.remove_member(r).await
        })
        .await
    }

    /// `target`: member name or decimal id; empty = best candidate.
    pub async fn switchover(&self, target: &str) -> Result<SwitchoverReply, ClientError> {
        let request = proto::SwitchoverRequest {
            target: target.to_string(),
        };
        self.on_coordinator(request, |mut c, r| async move { c.switchover(r).await })
            .await
    }

    pub async fn pause(&self) -> Result<u64, ClientError> {
        self.on_coordinator(proto::PauseRequest {}, |mut c, r| async move {
            c.pause(r).await
        })
        .await
        .map(|r| r.log_index)
    }

    pub async fn resume(&self) -> Result<u64, ClientError> {
        self.on_coordinator(proto::ResumeRequest {}, |mut c, r| async move {
            c.resume(r).await
        })
        .await
        .map(|r| r.log_index)
    }

    /// Fences `member` (never appointed, no traffic) or unfences it; 0 when nothing changed.
    pub async fn fence(&self, member: &str, fenced: bool) -> Result<u64, ClientError> {
        let request = proto::FenceRequest {
            member: member.to_owned(),
            fenced,
        };
        self.on_coordinator(request, |mut c, r| async move { c.fence(r).await })
            .await
            .map(|r| r.log_index)
    }

    /// One replicated no-op write (a commit round trip).
    pub async fn touch(&self) -> Result<u64, ClientError> {
        self.on_coordinator(proto::TouchRequest {}, |mut c, r| async move {
            c.touch(r).await
        })
        .await
        .map(|r| r.log_index)
    }

    /// Test-only fault injection (the agent must run with `--enable-fault-injection`).
    pub async fn isolate_from(&self, ids: Vec<u64>) -> Result<(), ClientError> {
        self.inject_faults(ids, Vec::new()).await
    }

    /// Test-only fault injection: `isolate_from` both ways, and `unreachable` one way (this node
    /// cannot dial them, they can still reach it). Replaces the previous faults; empty = heal.
    pub async fn inject_faults(
        &self,
        isolate_from: Vec<u64>,
        unreachable: Vec<u64>,
    ) -> Result<(), ClientError> {
        let mut c = super::proto::peer_client::PeerClient::new(self.channel.clone());
        c.inject_fault(self.request(proto::FaultRequest {
            isolate_from,
            unreachable,
        }))
        .await
        .map(|_| ())
        .map_err(|s| self.error(s))
    }
}

/// Turns a future that yields a stream (or an error) into one stream.
fn async_stream_from<S, F>(
    fut: F,
) -> impl Stream<Item = Result<GroupState, ClientError>> + Send + 'static
where
    S: Stream<Item = Result<GroupState, ClientError>> + Send + 'static,
    F: std::future::Future<Output = Result<S, ClientError>> + Send + 'static,
{
    futures::stream::once(fut).flat_map(|r| match r {
        Ok(s) => s.left_stream(),
        Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
    })
}
