//! `quorate-agent`: the Raft-based agent in every member pod (docs/agent.md).
//!
//! Pure decision logic lives in [`group`] (replicated state), [`coordinator`] (the Raft leader's
//! decisions), [`lease`] (the primary's self-fencing) and [`election`] (when a member may
//! campaign: pre-vote and leader stickiness). [`core`] owns the coordinator and the member side
//! as one sans-IO state machine; [`node`] is the one task that drives it; `server` (gRPC) and
//! `http` talk to that task through a handle and never share its state. [`wire`] is the one
//! edge to the protobuf messages, [`snapshot`] the pure assembly of the group state.

pub mod authz;
pub mod client;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod core;
pub mod election;
pub mod group;
mod handle;
pub mod health;
mod http;
pub mod lease;
pub mod metrics;
pub mod node;
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    //! Generated from `proto/quorate/agent/v1/agent.proto`.
    tonic::include_proto!("quorate.agent.v1");
}
pub mod raft;
pub mod role;
mod server;
pub mod snapshot;
pub mod timing;
pub mod transport;
pub mod wire;

pub use client::{AgentClient, ClientError};

/// Largest gRPC message accepted or sent (snapshots of the group state are far smaller).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
