//! openraft's network over our gRPC `Peer` service. Raft messages travel as JSON (the serde form
//! of the pinned openraft types) inside `RaftMessage.payload`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::RPCTypes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::types::TypeConfig;
use crate::agent::group::{MemberNode, NodeId};
use crate::agent::proto::{RaftMessage, peer_client::PeerClient};
use crate::agent::transport::{self, TlsClientConfig, TransportError};

/// Test-only fault injection: peers this node pretends it cannot reach (both directions), and
/// peers it cannot dial but still hears from (one way, like a DNS name that does not resolve yet).
#[derive(Debug, Default)]
pub struct Faults {
    isolated: RwLock<BTreeSet<NodeId>>,
    unreachable: RwLock<BTreeSet<NodeId>>,
}

impl Faults {
    pub fn set_isolated(&self, ids: BTreeSet<NodeId>) {
        *self.isolated.write().unwrap_or_else(|p| p.into_inner()) = ids;
    }

    pub fn set_unreachable(&self, ids: BTreeSet<NodeId>) {
        *self.unreachable.write().unwrap_or_else(|p| p.into_inner()) = ids;
    }

    /// Traffic from and to `id` is dropped.
    pub fn is_isolated(&self, id: NodeId) -> bool {
        self.isolated
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// This node cannot dial `id` (isolated, or unreachable one way).
    pub fn cannot_dial(&self, id: NodeId) -> bool {
        self.is_isolated(id)
            || self
                .unreachable
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
    }
}

/// Connections to peers, by advertised address (created lazily, reused).
pub struct Peers {
    self_id: NodeId,
    tls: Option<TlsClientConfig>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Calls timed out in a row, by address.
    timeouts: Mutex<HashMap<String, u32>>,
    faults: Arc<Faults>,
}

/// Timeouts in a row after which a peer's connection is dropped and dialled again.
const TIMEOUTS_BEFORE_REDIAL: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0} is isolated by fault injection")]
    Isolated(NodeId),
    #[error("refusing to dial this node itself ({0})")]
    SelfDial(NodeId),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl Peers {
    pub fn new(self_id: NodeId, tls: Option<TlsClientConfig>, faults: Arc<Faults>) -> Self {
        Self {
            self_id,
            tls,
            channels: Mutex::new(HashMap::new()),
            timeouts: Mutex::new(HashMap::new()),
            faults,
        }
    }

    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// A channel to peer `id` at `address`. Never to this node itself: local calls are
    /// short-circuited by the callers.
    pub fn channel(&self, id: NodeId, address: &str) -> Result<Channel, PeerError> {
        if id == self.self_id {
            return Err(PeerError::SelfDial(id));
        }
        if self.faults.cannot_dial(id) {
            return Err(PeerError::Isolated(id));
        }
        self.channel_to_address(address)
    }

    /// A call to `address` timed out. The second in a row (no answer between) drops the
    /// connection: the next call dials again and resolves the name again. A pod deleted without
    /// a goodbye leaves its peers an HTTP/2 connection to an address that no longer exists; every
    /// call on it hung until the keep-alive gave up (5–10 s), while the pod was back at a new
    /// address within a second or two (`make bench-workloads` saw a leader's replication to a
    /// restarted follower, and so its quorum, stall that long). One slow answer under load is not
    /// worth a new connection (and its TLS handshake).
    pub fn timed_out(&self, address: &str) {
        let mut timeouts = self.timeouts.lock().unwrap_or_else(|p| p.into_inner());
        let count = timeouts.entry(address.to_owned()).or_insert(0);
        *count += 1;
        if *count >= TIMEOUTS_BEFORE_REDIAL {
            timeouts.remove(address);
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            channels.remove(address);
        }
    }

    /// A call to `address` was answered (see [`Peers::timed_out`]).
    pub fn answered(&self, address: &str) {
        let mut timeouts = self.timeouts.lock().unwrap_or_else(|p| p.into_inner());
        if !timeouts.is_empty() {
            timeouts.remove(address);
        }
    }

    /// A channel by address only (bootstrap checks of members that have no id yet).
    pub fn channel_to_address(&self, address: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let c = transport::channel(address, self.tls.as_ref())?;
        channels.insert(address.to_string(), c.clone());
        Ok(c)
    }
}

pub struct NetworkFactory {
    pub peers: Arc<Peers>,
    /// openraft's heartbeat interval: the first retry after an unreachable peer.
    pub heartbeat_millis: u64,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        PeerConnection {
            target,
            address: node.address.clone(),
            peers: self.peers.clone(),
            heartbeat_millis: self.heartbeat_millis,
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    address: String,
    peers: Arc<Peers>,
    heartbeat_millis: u64,
}

/// One pre-vote request (see `agent::election`) to `target`; the reply's JSON payload.
pub async fn pre_vote(
    peers: &Peers,
    target: NodeId,
    address: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let channel = peers.channel(target, address).map_err(|e| e.to_string())?;
    let mut client = PeerClient::new(channel);
    let message = RaftMessage {
        from_id: peers.self_id(),
        payload,
        to_id: target,
    };
    match tokio::time::timeout(timeout, client.pre_vote(message)).await {
        Err(_) => {
            peers.timed_out(address);
            Err(format!("{address}: no answer within {timeout:?}"))
        }
        Ok(Err(status)) => Err(format!("{address}: {status}")),
        Ok(Ok(reply)) => {
            peers.answered(address);
            Ok(reply.into_inner().payload)
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WireError(String);

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .peers
            .channel(self.target, &self.address)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let payload =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = RaftMessage {
            from_id: self.peers.self_id(),
            payload,
            to_id: self.target,
        };
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(crate::agent::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::agent::MAX_MESSAGE_BYTES);
        let fut = async {
            match method {
                Method::Append => client.append_entries(message).await,
                Method::Vote => client.vote(message).await,
                Method::Snapshot => client.install_snapshot(message).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, fut).await {
            // A slow answer is not an unreachable peer: openraft backs off from unreachable
            // peers (no heartbeats for a while, so the follower would soon campaign), but simply
            // retries after a timeout.
            Err(_) => {
                self.peers.timed_out(&self.address);
                return Err(RPCError::Timeout(Timeout {
                    action: match method {
                        Method::Append => RPCTypes::AppendEntries,
                        Method::Vote => RPCTypes::Vote,
                        Method::Snapshot => RPCTypes::InstallSnapshot,
                    },
                    id: self.peers.self_id(),
                    target: self.target,
                    timeout,
                }));
            }
            Ok(Err(status)) => {
                let e = WireError(format!("{}: {status}", self.address));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
            Ok(Ok(r)) => {
                self.peers.answered(&self.address);
                r.into_inner()
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| {
                let e = WireError(format!("{}: malformed reply: {e}", self.address));
                RPCError::Network(NetworkError::new(&e))
            })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    /// After an unreachable error (connection refused, a name that does not resolve): retry
    /// after one heartbeat interval, doubling up to four. openraft's default (a constant 500 ms)
    /// would keep a peer that just came back without heartbeats for half a lease.
    fn backoff(&self) -> Backoff {
        let first = self.heartbeat_millis.max(1);
        Backoff::new(
            std::iter::successors(Some(first), move |d| Some((d * 2).min(first * 4)))
                .map(Duration::from_millis),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        self.call(Method::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Method::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_dialled_again_after_two_timeouts_in_a_row() {
        let peers = Peers::new(1, None, Arc::new(Faults::default()));
        let cached = |p: &Peers| p.channels.lock().unwrap().len();
        let a = "db-1.db-peers.ns.svc:7470";
        peers.channel(2, a).unwrap();
        peers.channel(2, a).unwrap();
        peers.channel(3, "db-2.db-peers.ns.svc:7470").unwrap();
        assert_eq!(cached(&peers), 2);
        // One slow answer, then an answer: the connection stays.
        peers.timed_out(a);
        peers.answered(a);
        peers.timed_out(a);
        assert_eq!(cached(&peers), 2);
        // Two in a row: dropped, and the next call dials again.
        peers.timed_out(a);
        assert_eq!(cached(&peers), 1);
        peers.channel(2, a).unwrap();
        assert_eq!(cached(&peers), 2);
        peers.timed_out(a);
        assert_eq!(
            cached(&peers),
            2,
            "the count starts again with the new connection"
        );
    }
}
