//! Quorate: replicated groups of pods on Kubernetes.
pub mod api;
pub mod plan;
pub mod operator;
pub mod traffic;
pub mod agent;
pub mod pki;
pub mod testapp;
pub mod cli;
