//! `quorate-agent`: the Raft-based agent in every member pod (DESIGN.md §3).
//!
//! Pure decision logic lives in [`group`] (replicated state), [`coordinator`] (the Raft leader's
//! decisions), [`lease`] (the primary's self-fencing) and [`election`] (when a member may
//! campaign: pre-vote and leader stickiness); everything else is IO around them.

pub mod client;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod election;
pub mod group;
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
pub mod timing;
pub mod transport;

pub use client::{AgentClient, ClientError};

/// Largest gRPC message accepted or sent (snapshots of the group state are far smaller).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
