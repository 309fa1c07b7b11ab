//! Quorate: replicated groups of pods on Kubernetes.
pub mod agent;
pub mod api;
pub mod build_info;
pub mod cli;
pub mod operator;
pub mod pki;
pub mod plan;
pub mod supervisor;
pub mod testapp;
pub mod traffic;
