//! `quorate-run`: the small static supervisor the workload runs under (docs/workloads.md).
//!
//! An init container copies it from the Quorate image into the pod (`/run/quorate/bin`); the
//! workload's command is `quorate-run -- <the workload>`. It starts the workload (after the
//! `join` hook), follows the local agent over loopback, runs the declared hooks inside the
//! workload's container with its tools, reports health, position and hook outcomes back to the
//! agent, and fences the workload when the primary's lease ends without renewal — on its own
//! clock, so also when the agent is frozen or gone.
//!
//! [`core`] holds the decisions (pure), [`protocol`] the JSON the agent and the supervisor
//! exchange, [`run`] the process and HTTP edges.

pub mod config;
pub mod core;
pub mod protocol;
pub mod run;
