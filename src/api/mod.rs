//! The `ReplicaGroup` API (group `quorate.dev`, version `v1alpha1`) and the names, labels and
//! annotations the operator puts on what it creates. Types and constants only; no IO.

pub mod names;
mod schema;
pub mod spec;
pub mod status;
pub mod validation;

pub use spec::*;
pub use status::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

/// Longest group name: the witnesses' StatefulSet `NAME-witness` must leave room for the
/// StatefulSet's pod and revision names within Kubernetes' 63-character label limit.
pub const MAX_NAME_LENGTH: i64 = 44;

/// The ReplicaGroup CustomResourceDefinition: the derived one, plus a bound on `metadata.name`
/// (which the derive leaves open; the API server's CEL cost estimate needs it for the root rules
/// that read the name).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = ReplicaGroup::crd();
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let properties = root.properties.get_or_insert_with(Default::default);
        let metadata = properties
            .entry("metadata".to_owned())
            .or_insert_with(|| JSONSchemaProps {
                type_: Some("object".into()),
                ..Default::default()
            });
        metadata
            .properties
            .get_or_insert_with(Default::default)
            .insert(
                "name".to_owned(),
                JSONSchemaProps {
                    type_: Some("string".into()),
                    max_length: Some(MAX_NAME_LENGTH),
                    ..Default::default()
                },
            );
    }
    // Doc comments are wrapped at 100 columns in the source; `kubectl explain` wraps again, so
    // keep only paragraph breaks.
    let mut value = serde_json::to_value(&crd).unwrap_or_default();
    unwrap_descriptions(&mut value);
    bound_template_lists(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Upper bounds on the pod template's lists the reserved-name rules walk. Kubernetes' own pod
/// schema leaves them unbounded, and the API server refuses CEL rules whose estimated cost has
/// no bound; no real pod comes near these.
pub const MAX_TEMPLATE_CONTAINERS: i64 = 32;
pub const MAX_TEMPLATE_VOLUMES: i64 = 128;
pub const MAX_CONTAINER_MOUNTS: i64 = 128;
/// Longest `hostPath.path` of a template volume: Linux's PATH_MAX.
pub const MAX_HOST_PATH: i64 = 4096;
pub const MAX_CLAIM_TEMPLATE_NAME: i64 = 63;

fn bound_template_lists(crd: &mut serde_json::Value) {
    let Some(versions) = crd
        .pointer_mut("/spec/versions")
        .and_then(|v| v.as_array_mut())
    else {
        return;
    };
    for version in versions {
        // A claim template's name becomes part of every member's claim name: a DNS label.
        if let Some(name) = version.pointer_mut(
            "/schema/openAPIV3Schema/properties/spec/properties/volumeClaimTemplates/items/properties/metadata/properties/name",
        ) {
            name["maxLength"] = MAX_CLAIM_TEMPLATE_NAME.into();
        }
        let Some(pod) = version.pointer_mut(
            "/schema/openAPIV3Schema/properties/spec/properties/template/properties/spec/properties",
        ) else {
            continue;
        };
        for (list, max) in [
            ("containers", MAX_TEMPLATE_CONTAINERS),
            ("initContainers", MAX_TEMPLATE_CONTAINERS),
            ("volumes", MAX_TEMPLATE_VOLUMES),
        ] {
            if let Some(schema) = pod.get_mut(list) {
                schema["maxItems"] = max.into();
                if let Some(mounts) = schema.pointer_mut("/items/properties/volumeMounts") {
                    mounts["maxItems"] = MAX_CONTAINER_MOUNTS.into();
                }
                // The hostPath rule reads the path (PATH_MAX): its cost needs a bound.
                if let Some(path) = schema.pointer_mut("/items/properties/hostPath/properties/path")
                {
                    path["maxLength"] = MAX_HOST_PATH.into();
                }
            }
        }
    }
}

fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// The CustomResourceDefinition as YAML, exactly as committed under `crds/` and
/// `charts/quorate/files/crds/` (`make crds` writes it; a test fails on drift).
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let header = "# Generated by `make crds` from src/api (crdgen). Do not edit by hand.\n";
    Ok(format!("{header}{}", serde_saphyr::to_string(&crd())?))
}
