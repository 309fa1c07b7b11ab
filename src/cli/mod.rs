//! `kubectl quorate`: the kubectl plugin for ReplicaGroups (`src/bin/kubectl-quorate.rs` is its
//! thin main). It talks only to the Kubernetes API: `status` reads (and `--watch` watches) a
//! group and its Events, `logs` reads its pods' logs, `switchover` sets the
//! `quorate.dev/switchover-to` annotation, `pause`/`resume` patch `spec.paused`; the operator
//! does the rest. `validate` checks manifests offline with the CRD's own schema and CEL rules.
//!
//! The parts that decide or format are pure and tested without a cluster: [`format`] (the
//! status views), [`logs`] (interleaving by time), [`switchover`] (the `--to` checks, the patches and the wait condition) and
//! [`validate`] (manifest checks). [`cluster`] holds the few API calls and [`run`] wires them.

pub mod args;
pub mod cluster;
pub mod fence;
pub mod format;
pub mod logs;
pub mod report;
pub mod restart;
pub mod switchover;
pub mod validate;

mod run;

use std::time::Duration;

pub use args::Cli;
pub use run::run;

/// The annotation that asks the operator for a planned switchover: the target member's name, or
/// the empty string for "the best candidate". The operator removes it once it acted on it.
pub const SWITCHOVER_ANNOTATION: &str = "quorate.dev/switchover-to";

/// How to install the CRD, for the error shown when it is missing.
pub const CRD_INSTALL_HINT: &str = "install the operator with Helm, which installs the CRD too: \
`helm install quorate charts/quorate --namespace quorate-system --create-namespace`; \
or apply the CRD alone: `kubectl apply --server-side -f crds/` (in the Quorate repository)";

/// Everything that can go wrong in a `kubectl quorate` command, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("replicagroup \"{name}\" not found in namespace \"{namespace}\"")]
    NotFound { name: String, namespace: String },

    #[error(
        "the ReplicaGroup CRD (replicagroups.quorate.dev, version v1alpha1) is not installed in this cluster; {CRD_INSTALL_HINT}"
    )]
    CrdNotInstalled,

    #[error("not allowed to {action}: {message}")]
    Forbidden { action: String, message: String },

    #[error(
        "the API server did not accept the credentials of the current kubeconfig user while trying to {action}: {message}"
    )]
    Unauthorized { action: String, message: String },

    /// Any other API failure; the cause (kube's error) follows in the error chain.
    #[error("failed to {action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("cannot load the kubeconfig (use --kubeconfig, $KUBECONFIG or ~/.kube/config)")]
    Kubeconfig(#[source] Box<dyn std::error::Error + Send + Sync>),

    #[error("cannot create a Kubernetes client")]
    Client(#[source] kube::Error),

    /// `switchover --to` names no member that could become primary.
    #[error("--to {target:?}: {reason}")]
    InvalidTarget { target: String, reason: String },

    /// A switchover on a group that has no primary.
    #[error(
        "replicagroup \"{name}\" is ActiveActive: it has no primary to switch over (switchover applies to PrimaryBackup groups)"
    )]
    NoPrimaryMode { name: String },

    #[error("timed out after {}s waiting for the switchover of replicagroup \"{name}\": {seen}", waited.as_secs_f64())]
    SwitchoverTimeout {
        name: String,
        waited: Duration,
        seen: String,
    },

    /// The group appointed another member than the one asked for.
    #[error(
        "replicagroup \"{name}\" appointed {primary} (epoch {epoch}), not the requested {requested}"
    )]
    OtherPrimary {
        name: String,
        requested: String,
        primary: String,
        epoch: i64,
    },

    #[error(
        "replicagroup \"{name}\" in namespace \"{namespace}\" was deleted while waiting for {waiting_for}"
    )]
    DeletedWhileWaiting {
        name: String,
        namespace: String,
        waiting_for: &'static str,
    },

    /// The watch of `status --watch` failed (it retries on its own; this is what it said).
    #[error("watching replicagroups: {0}")]
    Watch(String),

    /// `restart` of a group that is not Ready.
    #[error(
        "replicagroup \"{name}\" is not Ready ({why}): a restart could cost it its majority; wait until it is Ready"
    )]
    NotReady { name: String, why: String },

    /// What a command waits for did not happen in time (a restarted pod back, a fence shown).
    #[error("timed out after {}s waiting for {what}", waited.as_secs_f64())]
    WaitTimeout { what: String, waited: Duration },

    /// `fence`/`unfence` of a name that is not a member of the group.
    #[error(
        "replicagroup \"{name}\" in namespace \"{namespace}\" has no member {member:?}: its members are {members}"
    )]
    NoSuchMember {
        name: String,
        namespace: String,
        member: String,
        members: String,
    },

    /// `fence` that would leave the group nobody to take over.
    #[error("replicagroup \"{name}\" in namespace \"{namespace}\": {why}")]
    FenceRefused {
        name: String,
        namespace: String,
        why: String,
    },

    /// `report` could not write its bundle.
    #[error("cannot write the report to {path}: {source}")]
    ReportWrite {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot format the output as {format}: {message}")]
    Output {
        format: &'static str,
        message: String,
    },
}
