//! `kubectl quorate report`: a diagnostics bundle of one group, safe to attach to a bug report.
//! Pure parts: what is redacted, and how objects are written.

use serde_json::Value;

/// What replaces a redacted value.
pub const REDACTED: &str = "<redacted>";

/// Removes what may be secret from an object as the API server returned it: a Secret keeps its
/// metadata, type and key names only; every literal environment variable value (in pod specs,
/// templates, the group's own template) is replaced; `managedFields` are dropped (noise).
/// Everything else stays, so that the bundle shows how the group was configured.
pub fn redact(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        // `kubectl apply` keeps the whole applied object here, literal env values included.
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if object.get("kind").and_then(Value::as_str) == Some("Secret") {
        for field in ["data", "stringData"] {
            if let Some(data) = object.get_mut(field).and_then(Value::as_object_mut) {
                for value in data.values_mut() {
                    *value = Value::String(REDACTED.to_owned());
                }
            }
        }
    }
    redact_env(object);
}

/// Every `env: [{name, value}]` anywhere below `value`.
fn redact_env(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "env"
                    && let Value::Array(vars) = child
                {
                    for var in vars.iter_mut() {
                        if let Some(v) = var.get_mut("value") {
                            *v = Value::String(REDACTED.to_owned());
                        }
                    }
                } else {
                    redact_env(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_env),
        _ => {}
    }
}

/// Objects as one multi-document YAML file, each redacted.
pub fn yaml_documents(mut objects: Vec<Value>) -> Result<String, String> {
    let mut out = String::new();
    for object in &mut objects {
        redact(object);
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(object).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The name of a file for `pod/container` (no path separators).
pub fn log_file_name(pod: &str, container: &str) -> String {
    format!("{pod}_{container}.log")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_keep_only_their_key_names_and_env_values_are_redacted_everywhere() {
        let mut secret = json!({"kind": "Secret", "metadata": {"name": "db-ca", "managedFields": [{}]},
            "type": "Opaque", "data": {"ca.key": "c2VjcmV0", "ca.crt": "Y2VydA=="}});
        redact(&mut secret);
        assert_eq!(
            secret,
            json!({"kind": "Secret", "metadata": {"name": "db-ca"}, "type": "Opaque",
                "data": {"ca.key": REDACTED, "ca.crt": REDACTED}})
        );
        let mut group = json!({"kind": "ReplicaGroup", "metadata": {"name": "db", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"password\": \"x\"}", "keep": "me"}},
            "spec": {"template": {"spec": {"containers": [{"name": "app",
                "env": [{"name": "PASSWORD", "value": "hunter2"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}}});
        redact(&mut group);
        assert_eq!(
            group["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "PASSWORD", "value": REDACTED},
                   {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])
        );
        assert_eq!(group["metadata"]["annotations"], json!({"keep": "me"}));
        let text = yaml_documents(vec![group, secret]).expect("yaml");
        assert!(
            !text.contains("hunter2") && !text.contains("c2VjcmV0"),
            "{text}"
        );
        assert_eq!(text.matches("---\n").count(), 2);
    }
}
