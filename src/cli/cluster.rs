//! The Kubernetes API calls of the plugin: a client from the kubeconfig (like kubectl's
//! `--kubeconfig`, `--context`, `-n`), and get, list and merge-patch of ReplicaGroups with
//! errors worded for users (a missing group, a missing CRD, RBAC).

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::LogParams;

use super::CliError;
use super::args::{ClusterArgs, LogsOf};
use super::format::GroupEvent;
use super::logs::Source;
use crate::api::ReplicaGroup;
use crate::api::names::{AGENT_CONTAINER, AGENT_HTTP_PORT, GROUP_LABEL};

/// The field manager of the plugin's patches (shown in managedFields).
pub const FIELD_MANAGER: &str = "kubectl-quorate";

/// A client and the namespace the command works in.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

/// Loads the kubeconfig like kubectl: `--kubeconfig`, else `$KUBECONFIG`, else
/// `~/.kube/config` (else the in-cluster service account); `--context` picks the context;
/// the namespace is `-n`, else the context's, else `default`.
pub async fn connect(args: &ClusterArgs) -> Result<Cluster, CliError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        cluster: None,
        user: None,
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| CliError::Kubeconfig(Box::new(e)))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| CliError::Kubeconfig(Box::new(e)))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| CliError::Kubeconfig(Box::new(e)))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| CliError::Kubeconfig(Box::new(e)))?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(CliError::Client)?;
    Ok(Cluster { client, namespace })
}

/// The HTTP status of an API error, if the API server answered.
fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

impl Cluster {
    fn api(&self) -> Api<ReplicaGroup> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Reads one group.
    pub async fn get(&self, name: &str) -> Result<ReplicaGroup, CliError> {
        match self.api().get(name).await {
            Ok(group) => Ok(group),
            Err(e) => Err(self
                .explain(
                    e,
                    format!(
                        "get replicagroup \"{name}\" in namespace \"{}\"",
                        self.namespace
                    ),
                    Some(name),
                )
                .await),
        }
    }

    /// Lists the groups of the namespace, or of all namespaces, sorted by namespace and name.
    pub async fn list(&self, all_namespaces: bool) -> Result<Vec<ReplicaGroup>, CliError> {
        let (api, scope) = if all_namespaces {
            (Api::all(self.client.clone()), "all namespaces".to_owned())
        } else {
            (self.api(), format!("namespace \"{}\"", self.namespace))
        };
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let mut groups = list.items;
                groups.sort_by(|a, b| {
                    (&a.metadata.namespace, &a.metadata.name)
                        .cmp(&(&b.metadata.namespace, &b.metadata.name))
                });
                Ok(groups)
            }
            Err(e) => Err(self
                .explain(e, format!("list replicagroups in {scope}"), None)
                .await),
        }
    }

    /// The Events about a group (any age the API server still keeps, about an hour by default).
    pub async fn events(&self, name: &str) -> Result<Vec<GroupEvent>, CliError> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = ListParams::default().fields(&format!(
            "involvedObject.kind=ReplicaGroup,involvedObject.name={name}"
        ));
        match api.list(&params).await {
            Ok(list) => Ok(list.items.iter().map(group_event).collect()),
            Err(e) => Err(self
                .explain(
                    e,
                    format!(
                        "list the events of replicagroup \"{name}\" in namespace \"{}\"",
                        self.namespace
                    ),
                    None,
                )
                .await),
        }
    }

    /// Watches one group (`Some(name)`) or the groups of the namespace or of all namespaces:
    /// yields whenever one of them changed (and once at the start).
    pub fn changes(
        &self,
        name: Option<&str>,
        all_namespaces: bool,
    ) -> impl futures::Stream<Item = Result<(), CliError>> + use<> {
        use futures::StreamExt;
        let api: Api<ReplicaGroup> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.api()
        };
        let mut config = kube::runtime::watcher::Config::default();
        if let Some(name) = name {
            config = config.fields(&format!("metadata.name={name}"));
        }
        kube::runtime::watcher(api, config).filter_map(|event| async move {
            use kube::runtime::watcher::Event as Change;
            match event {
                // One yield per change, and one after the initial list.
                Ok(Change::Apply(_) | Change::Delete(_) | Change::InitDone) => Some(Ok(())),
                Ok(Change::Init | Change::InitApply(_)) => None,
                Err(e) => Some(Err(CliError::Watch(e.to_string()))),
            }
        })
    }

    /// The containers whose logs `logs` reads: every pod of the group (members and witnesses),
    /// its agent and/or its workload containers, by pod and container name.
    pub async fn log_sources(&self, name: &str, of: LogsOf) -> Result<Vec<Source>, CliError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = ListParams::default().labels(&format!("{GROUP_LABEL}={name}"));
        let pods = match api.list(&params).await {
            Ok(list) => list.items,
            Err(e) => {
                return Err(self
                    .explain(
                        e,
                        format!(
                            "list the pods of replicagroup \"{name}\" in namespace \"{}\"",
                            self.namespace
                        ),
                        None,
                    )
                    .await);
            }
        };
        let mut sources = Vec::new();
        for pod in &pods {
            let Some(spec) = &pod.spec else { continue };
            // The agent is a native sidecar (an init container) in members, a container in
            // witnesses; other init containers (the supervisor's installer) are left out.
            let agent = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .filter(|c| c.name == AGENT_CONTAINER)
                .map(|c| c.name.clone());
            let workload = spec
                .containers
                .iter()
                .filter(|c| c.name != AGENT_CONTAINER)
                .map(|c| c.name.clone());
            let containers: Vec<String> = match of {
                LogsOf::Agent => agent.collect(),
                LogsOf::Workload => workload.collect(),
                LogsOf::All => agent.chain(workload).collect(),
            };
            sources.extend(containers.into_iter().map(|container| Source {
                pod: pod.name_any(),
                container,
            }));
        }
        sources.sort();
        Ok(sources)
    }

    /// A container's log since `since` (with the kubelet's timestamps), or why it has none.
    pub async fn log(&self, source: &Source, since: Timestamp) -> Result<String, String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        api.logs(&source.pod, &log_params(source, since, false))
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            })
    }

    /// A container's log from `since` on, as it is written, line by line.
    pub async fn follow(
        &self,
        source: &Source,
        since: Timestamp,
    ) -> Result<impl futures::Stream<Item = std::io::Result<String>> + use<>, String> {
        use futures::AsyncBufReadExt;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        match api
            .log_stream(&source.pod, &log_params(source, since, true))
            .await
        {
            Ok(read) => Ok(read.lines()),
            Err(kube::Error::Api(status)) => Err(status.message.clone()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every object of a group (by its label) that a report holds, as the API server returns
    /// them: Secrets as metadata only (their data is never read). A kind that cannot be listed
    /// (no right, or the Gateway API not installed) is a note, not a failure.
    pub async fn group_objects(&self, name: &str) -> (Vec<Value>, Vec<String>) {
        use k8s_openapi::api::apps::v1::StatefulSet;
        use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        use k8s_openapi::api::policy::v1::PodDisruptionBudget;
        let params = ListParams::default().labels(&format!("{GROUP_LABEL}={name}"));
        let (mut objects, mut notes) = (Vec::new(), Vec::new());
        let mut add = |kind: &str, listed: Result<Vec<Value>, kube::Error>| match listed {
            Ok(items) => objects.extend(items),
            Err(e) => notes.push(format!("{kind}: not listed: {e}")),
        };
        add(
            "StatefulSets",
            self.list_values::<StatefulSet>(&params).await,
        );
        add("Pods", self.list_values::<Pod>(&params).await);
        add("Services", self.list_values::<Service>(&params).await);
        add(
            "EndpointSlices",
            self.list_values::<EndpointSlice>(&params).await,
        );
        add(
            "PodDisruptionBudgets",
            self.list_values::<PodDisruptionBudget>(&params).await,
        );
        add(
            "PersistentVolumeClaims",
            self.list_values::<PersistentVolumeClaim>(&params).await,
        );
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        add(
            "Secrets",
            secrets.list_metadata(&params).await.map(|list| {
                list.items
                    .into_iter()
                    .map(|m| {
                        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": m.metadata})
                    })
                    .collect()
            }),
        );
        let routes: Api<kube::api::DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &crate::operator::http_route_resource(),
        );
        match routes.list(&params).await {
            Ok(list) => objects.extend(
                list.items
                    .iter()
                    .filter_map(|o| serde_json::to_value(o).ok()),
            ),
            // No Gateway API in this cluster: nothing to report.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => notes.push(format!("HTTPRoutes: not listed: {e}")),
        }
        (objects, notes)
    }

    async fn list_values<K>(&self, params: &ListParams) -> Result<Vec<Value>, kube::Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = api.list(params).await?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| {
                let mut v = serde_json::to_value(o).ok()?;
                // Items of a list come without their type.
                v["apiVersion"] = K::api_version(&()).into_owned().into();
                v["kind"] = K::kind(&()).into_owned().into();
                Some(v)
            })
            .collect())
    }

    /// The namespace's Events about the group and its objects (whose names are the group's or
    /// start with it), as `KIND/NAME` and the event.
    pub async fn events_about(&self, name: &str) -> Result<Vec<(String, GroupEvent)>, CliError> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.list(&ListParams::default()).await {
            Ok(list) => Ok(list
                .items
                .iter()
                .filter(|e| {
                    e.involved_object
                        .name
                        .as_deref()
                        .is_some_and(|n| n == name || n.starts_with(&format!("{name}-")))
                })
                .map(|e| {
                    let object = format!(
                        "{}/{}",
                        e.involved_object.kind.as_deref().unwrap_or("?"),
                        e.involved_object.name.as_deref().unwrap_or("?")
                    );
                    (object, group_event(e))
                })
                .collect()),
            Err(e) => Err(self
                .explain(
                    e,
                    format!("list the events of namespace \"{}\"", self.namespace),
                    None,
                )
                .await),
        }
    }

    /// What a pod's agent says of itself (`GET /role` on its HTTP port, through the API
    /// server's pod proxy), or why it cannot be read.
    pub async fn agent_role(&self, pod: &str) -> Result<String, String> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{pod}:{AGENT_HTTP_PORT}/proxy/role",
            self.namespace
        );
        let request = hyper::Request::get(path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request_text(request)
            .await
            .map_err(|e| e.to_string())
    }

    /// Applies a JSON merge patch to a group and returns the result.
    pub async fn merge_patch(&self, name: &str, patch: &Value) -> Result<ReplicaGroup, CliError> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match self.api().patch(name, &params, &Patch::Merge(patch)).await {
            Ok(group) => Ok(group),
            Err(e) => Err(self
                .explain(
                    e,
                    format!(
                        "patch replicagroup \"{name}\" in namespace \"{}\"",
                        self.namespace
                    ),
                    Some(name),
                )
                .await),
        }
    }

    /// Turns an API error into what the user needs to know. A 404 is either the group or the
    /// whole resource type: discovery of `quorate.dev/v1alpha1` tells which.
    async fn explain(&self, error: kube::Error, action: String, name: Option<&str>) -> CliError {
        let message = match &error {
            kube::Error::Api(status) => status.message.clone(),
            _ => String::new(),
        };
        match api_code(&error) {
            Some(404) => {
                let served = self
                    .client
                    .list_api_group_resources("quorate.dev/v1alpha1")
                    .await
                    .map(|list| list.resources.iter().any(|r| r.name == "replicagroups"));
                match (served, name) {
                    (Ok(true), Some(name)) => CliError::NotFound {
                        name: name.to_owned(),
                        namespace: self.namespace.clone(),
                    },
                    (Err(e), _) if api_code(&e) != Some(404) => CliError::Api {
                        action,
                        source: error,
                    },
                    (Ok(true), None) => CliError::Api {
                        action,
                        source: error,
                    },
                    _ => CliError::CrdNotInstalled,
                }
            }
            Some(403) => CliError::Forbidden { action, message },
            Some(401) => CliError::Unauthorized { action, message },
            _ => CliError::Api {
                action,
                source: error,
            },
        }
    }
}

/// An Event as `status` shows it: its latest timestamp (a series' last observation, the last
/// timestamp, or the event time) and its count.
fn group_event(e: &Event) -> GroupEvent {
    let series = e.series.as_ref();
    let at = [
        series
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0),
        e.last_timestamp.as_ref().map(|t| t.0),
        e.event_time.as_ref().map(|t| t.0),
        e.first_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max();
    GroupEvent {
        at,
        warning: e.type_.as_deref() == Some("Warning"),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
        count: series.and_then(|s| s.count).or(e.count).unwrap_or(1).max(1),
    }
}

fn log_params(source: &Source, since: Timestamp, follow: bool) -> LogParams {
    LogParams {
        container: Some(source.container.clone()),
        follow,
        since_time: Some(since),
        timestamps: true,
        ..LogParams::default()
    }
}
