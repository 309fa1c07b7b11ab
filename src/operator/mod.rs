//! The operator: a kube-runtime controller on ReplicaGroup. Each reconcile is
//! observe (reads, and the agents' state stream) -> plan (pure, `crate::plan`) -> apply
//! (server-side apply, one field manager) -> status. Only the elected leader (a Lease) runs
//! the controller; a standby keeps its watches cold and takes over when the lease frees.

mod applied;
mod apply;
mod hub;
mod leader;
pub mod metrics;
mod observe;
pub use observe::http_route_resource;
mod reconcile;
mod stores;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tracing::{info, warn};

use crate::api::ReplicaGroup;
use crate::plan::OperatorSettings;

pub use hub::AgentHub;
pub use metrics::Metrics;

/// Errors of one reconcile; the reason label of the error metric comes from `reason()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("agent call {action} failed: {source}")]
    Agent {
        action: String,
        #[source]
        source: crate::agent::ClientError,
    },
    #[error("group certificates: {0}")]
    Tls(String),
    #[error("invalid ReplicaGroup {name}: {message}")]
    InvalidObject { name: String, message: String },
    #[error("the watch of {what} has not listed them yet")]
    StoreNotReady { what: String },
    #[error("{}", .0.message())]
    NameConflict(crate::plan::NameConflict),
    /// The group CA's Secret is gone or unusable while the members still trust it.
    #[error("{0}")]
    CaLost(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube {
                source: kube::Error::Api(e),
                ..
            } if e.code == 403 && e.message.contains("being terminated") => "namespace_terminating",
            Error::Kube {
                source: kube::Error::Api(e),
                ..
            } if e.code == 409 => "conflict",
            Error::Kube { .. } => "kube_api",
            Error::Agent { .. } => "agent",
            Error::Tls(_) => "tls",
            Error::InvalidObject { .. } => "invalid_object",
            Error::StoreNotReady { .. } => "store_not_ready",
            Error::NameConflict(_) => "name_conflict",
            Error::CaLost(_) => "ca_lost",
        }
    }
}

/// Adds what went wrong where to a kube error.
pub(crate) trait KubeContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> KubeContext<T> for Result<T, kube::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            context: what(),
            source,
        })
    }
}

/// The operator's settings (flags of `quorate-operator run`).
#[derive(Clone, Debug)]
pub struct Config {
    pub metrics_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub settings: OperatorSettings,
    /// Lease name for leader election (in the operator's namespace); None = no election.
    pub leader_election_lease: Option<String>,
    pub namespace: String,
    pub pod_name: String,
    /// How long the groups' Secrets as read are used before they are read again.
    pub secret_reread: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: OperatorSettings,
    pub hub: AgentHub,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    pub recorder: kube::runtime::events::Recorder,
    pub applied: Arc<applied::AppliedCache>,
    pub backoff: reconcile::Backoff,
    pub gateway_api: observe::GatewayApiProbe,
    pub tls: Arc<tls::TlsCache>,
    /// Pods, EndpointSlices, HTTPRoutes and Gateways as the watches last saw them.
    pub stores: Arc<stores::Stores>,
}

/// Runs the operator until SIGTERM: serves metrics and health, waits for the CRD, then runs the
/// controller, behind the leader election when there is one.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    metrics::serve(
        config.metrics_addr,
        config.health_addr,
        metrics.clone(),
        ready.clone(),
    )
    .await?;

    wait_for_crd(&client).await;
    // Standby replicas are ready too: readiness says the process works, not that it leads.
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut shutdown = std::pin::pin!(shutdown_signal());

    let Some(lease) = &config.leader_election_lease else {
        metrics.leader.set(1);
        return tokio::select! {
            r = run_controller(client, config, metrics) => r,
            _ = &mut shutdown => Ok(()),
        };
    };
    let candidate = leader::Candidate {
        client: client.clone(),
        namespace: config.namespace.clone(),
        lease: lease.clone(),
        identity: config.pod_name.clone(),
    };
    loop {
        let Some(mut leadership) = candidate.lead(&mut shutdown).await? else {
            return Ok(());
        };
        info!("leading: starting the controller");
        metrics.leader.set(1);
        let mut term = LeaderTerm::start(config.clone(), metrics.clone())?;
        let (lost, result) = tokio::select! {
            _ = leadership.lost() => (true, Ok(())),
            r = term.finished() => (false, r),
            _ = &mut shutdown => {
                info!("shutting down; releasing the lease");
                (false, Ok(()))
            }
        };
        term.stop();
        metrics.leader.set(0);
        metrics.forget_all_groups();
        leadership.stop().await;
        if !lost {
            return result;
        }
        // Standing by again in the same process: an exit would put the pod in the kubelet's
        // restart back-off (10 s, 20 s, 40 s, ...), and a replica that lost its lease after a
        // partition or a freeze would then be missing when the next leader's node is lost.
        warn!("lost leadership: the controller stopped; standing by");
    }
}

/// One term as leader: the controller on a runtime of its own, so that ending the term ends
/// every task it spawned (watches, agent streams, in-flight requests) at once. It gets its own
/// API client, whose connections live on that runtime too. Writes that were already sent may
/// still land; the ones that say what is routed are conditional (docs/operations.md).
struct LeaderTerm {
    runtime: tokio::runtime::Runtime,
    controller: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LeaderTerm {
    fn start(config: Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("controller")
            .enable_all()
            .build()
            .context("starting the controller's runtime")?;
        let controller = runtime.spawn(async move {
            let client = Client::try_default().await?;
            run_controller(client, config, metrics).await
        });
        Ok(Self {
            runtime,
            controller,
        })
    }

    /// Returns when the controller ends by itself (an error, or a panic).
    async fn finished(&mut self) -> anyhow::Result<()> {
        (&mut self.controller)
            .await
            .context("the controller task")?
    }

    fn stop(self) {
        self.controller.abort();
        self.runtime.shutdown_background();
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The controller starts only once the CRD is served (a fresh install may apply it after us).
async fn wait_for_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut delay = Duration::from_millis(200);
    loop {
        match crds.get_opt("replicagroups.quorate.dev").await {
            Ok(Some(crd)) if crd_established(&crd) => return,
            Ok(_) => info!(
                "waiting for the ReplicaGroup CRD (replicagroups.quorate.dev) to be installed"
            ),
            Err(e) => warn!(error = %e, "checking for the ReplicaGroup CRD"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn crd_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

async fn run_controller(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let reporter = Reporter {
        controller: "quorate-operator".into(),
        instance: Some(config.pod_name.clone()),
    };
    let (hub, agent_triggers) = AgentHub::new(metrics.clone());
    let groups: Api<kube::core::DeserializeGuard<ReplicaGroup>> = Api::all(client.clone());
    let applied = Arc::new(applied::AppliedCache::default());
    let tls = Arc::new(tls::TlsCache::new(config.secret_reread));
    // The owned kinds' watches also tell the cache of what was applied about changes.
    // The groups' store without their managedFields: nobody reads them, and at 1000 groups they
    // were a large part of the operator's memory.
    let group_store = kube::runtime::reflector::store::Writer::default();
    let group_reader = group_store.as_reader();
    let group_changes = watcher(groups, watcher::Config::default().any_semantic())
        .modify(|g| g.meta_mut().managed_fields = None)
        .reflect(group_store)
        .applied_objects();
    let controller = Controller::for_stream(group_changes, group_reader)
        .with_config(ControllerConfig::default().concurrency(16))
        .owns_stream(stores::owned_changes::<StatefulSet>(
            client.clone(),
            applied.clone(),
        ))
        .owns_stream(stores::owned_changes::<PodDisruptionBudget>(
            client.clone(),
            applied.clone(),
        ))
        .owns_stream(stores::owned_changes::<NetworkPolicy>(
            client.clone(),
            applied.clone(),
        ))
        // The group's own state stream: a new primary triggers a reconcile within milliseconds.
        .reconcile_on(agent_triggers);
    // Member pods, EndpointSlices, HTTPRoutes and Gateways: their watches fill the stores that
    // observe reads and trigger the groups they belong to.
    let (stores, store_triggers) =
        stores::Stores::start(client.clone(), controller.store(), applied.clone());
    let controller = controller.reconcile_on(store_triggers);
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: config.settings.clone(),
        hub: hub.clone(),
        metrics,
        recorder: kube::runtime::events::Recorder::new(client.clone(), reporter.clone()),
        reporter,
        applied,
        backoff: reconcile::Backoff::default(),
        gateway_api: observe::GatewayApiProbe::default(),
        tls,
        stores,
    });
    hub.forget_deleted_groups(controller.store());
    controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        })
        .await;
    Ok(())
}
