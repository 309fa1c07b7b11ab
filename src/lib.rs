//! Quorate: replicated groups of pods on Kubernetes.
pub mod api;
