//! Client-side validation of a ReplicaGroup manifest against the generated CRD schema, the way
//! the API server does it: the OpenAPI part (types, enums, bounds, lengths, required and unknown
//! fields) and then the CEL `x-kubernetes-validations` rules (through kube's CEL evaluator).
//! Messages use the API server's wording, so one table of invalid manifests with expected
//! messages holds for both this check and a real API server. `kubectl quorate validate` uses it
//! for offline checks.

use std::fmt;
use std::sync::LazyLock;

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::Value;

/// One problem with a manifest, worded like the API server's field errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, for example `spec.ports[1].port`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The `openAPIV3Schema` of the ReplicaGroup CRD as JSON (generated once: it is large).
pub fn openapi_schema() -> &'static Value {
    static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
        let crd = super::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        serde_json::to_value(schema).unwrap_or(Value::Null)
    });
    &SCHEMA
}

/// The CEL rules of the schema, compiled once.
fn compiled_rules() -> &'static CompiledSchema {
    static COMPILED: LazyLock<CompiledSchema> = LazyLock::new(|| compile_schema(openapi_schema()));
    &COMPILED
}

/// Validates a manifest (as JSON) like the API server would on create (`old` = None) or update.
/// Returns every problem found; empty means valid.
pub fn validate_manifest(object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let schema = openapi_schema();
    let mut errors = Vec::new();
    // Like the API server: metadata is validated by its own rules, not by the CRD schema.
    if let Some(obj) = object.as_object() {
        for (key, value) in obj {
            if key == "metadata" || key == "apiVersion" || key == "kind" {
                continue;
            }
            match schema.pointer(&format!("/properties/{key}")) {
                Some(s) => check(value, s, key, &mut errors),
                None => errors.push(unknown(key)),
            }
        }
    }
    // The API server skips CEL when the structure is wrong (rules would see the wrong types).
    if errors
        .iter()
        .any(|e| e.message.contains("must be of type") || e.message.starts_with("unknown field"))
    {
        return errors;
    }
    if let Err(cel_errors) = Validator::new().validate_compiled(compiled_rules(), object, old) {
        for e in cel_errors.iter() {
            errors.push(FieldError {
                path: e.field_path.trim_start_matches('.').to_owned(),
                message: e.message.clone(),
            });
        }
    }
    errors
}

fn unknown(path: &str) -> FieldError {
    FieldError {
        path: String::new(),
        message: format!("unknown field \"{path}\""),
    }
}

fn err(path: &str, message: String) -> FieldError {
    FieldError {
        path: path.to_owned(),
        message,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A bound as the API server prints it: integral bounds without a fraction.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn check(value: &Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let flag = |k: &str| schema.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("x-kubernetes-int-or-string") {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(err(
                path,
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type int-or-string: \"{}\"",
                    type_name(value),
                    type_name(value)
                ),
            ));
        }
        return;
    }
    if value.is_null() && flag("nullable") {
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let have = type_name(value);
        let ok = have == want || (want == "number" && have == "integer");
        if !ok {
            errors.push(err(
                path,
                format!(
                    "Invalid value: \"{have}\": {path} in body must be of type {want}: \"{have}\""
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(show).collect();
        errors.push(err(
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                list.join(", ")
            ),
        ));
    }
    if let Some(n) = value.as_f64() {
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errors.push(err(
                path,
                format!(
                    "Invalid value: {value}: {path} in body should be less than or equal to {}",
                    number(max)
                ),
            ));
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errors.push(err(
                path,
                format!(
                    "Invalid value: {value}: {path} in body should be greater than or equal to {}",
                    number(min)
                ),
            ));
        }
    }
    if let Some(s) = value.as_str() {
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && s.len() as u64 > max
        {
            errors.push(err(
                path,
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && (s.len() as u64) < min
        {
            errors.push(err(
                path,
                format!("Invalid value: {s:?}: {path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(s))
        {
            errors.push(err(
                path,
                format!("Invalid value: {s:?}: {path} in body should match '{pattern}'"),
            ));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            errors.push(err(
                path,
                format!("Too many: {}: must have at most {max} items", items.len()),
            ));
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            errors.push(err(
                path,
                format!(
                    "Invalid value: {}: {path} in body should have at least {min} items",
                    items.len()
                ),
            ));
        }
        // A set: the API server refuses the second of two equal items.
        if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errors.push(err(
                        &format!("{path}[{i}]"),
                        format!("Duplicate value: {item}"),
                    ));
                }
            }
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item, item_schema, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && fields.len() as u64 > max
        {
            errors.push(err(
                path,
                format!("Too many: {}: must have at most {max} items", fields.len()),
            ));
        }
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !fields.contains_key(name) {
                errors.push(err(&format!("{path}.{name}"), "Required value".to_owned()));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties").filter(|s| s.is_object());
        let preserve = flag("x-kubernetes-preserve-unknown-fields");
        for (name, field) in fields {
            let field_path = format!("{path}.{name}");
            match (properties.and_then(|p| p.get(name)), additional) {
                (Some(s), _) | (None, Some(s)) => check(field, s, &field_path, errors),
                (None, None) if !preserve && properties.is_some() => {
                    errors.push(unknown(&field_path))
                }
                (None, None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group(spec: Value) -> Value {
        json!({"apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup", "metadata": {"name": "cache"}, "spec": spec})
    }

    fn template() -> Value {
        json!({"spec": {"containers": [{"name": "app", "image": "redis:7"}]}})
    }

    #[test]
    fn a_minimal_primary_backup_group_is_valid() {
        let g = group(json!({"mode": "PrimaryBackup", "replicas": 3, "template": template()}));
        assert_eq!(validate_manifest(&g, None), vec![]);
    }

    #[test]
    fn type_errors_stop_before_cel() {
        let g =
            group(json!({"mode": "PrimaryBackup", "replicas": "three", "template": template()}));
        let errors = validate_manifest(&g, None);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
        );
    }

    #[test]
    fn host_paths_over_the_kubelets_pod_volumes_are_refused_and_others_kept() {
        let with_host_path = |path: &str| {
            group(
                json!({"mode": "PrimaryBackup", "replicas": 3, "template": {"spec": {
                "containers": [{"name": "app", "image": "redis:7"}],
                "volumes": [{"name": "h", "hostPath": {"path": path}}]}}}),
            )
        };
        for allowed in [
            "/var/log",
            "/var/lib/docker",
            "/var/lib/kubelet-plugins",
            "/srv/data",
        ] {
            assert_eq!(
                validate_manifest(&with_host_path(allowed), None),
                vec![],
                "{allowed}"
            );
        }
        for refused in [
            "/",
            "/var",
            "/var/lib/",
            "/var/lib/kubelet",
            "//var//lib/kubelet/pods",
            "/var/log/../lib/kubelet",
            "/srv/./x",
        ] {
            let errors = validate_manifest(&with_host_path(refused), None);
            assert!(
                errors.iter().any(|e| e
                    .message
                    .contains("hostPath.path: the node's /var/lib/kubelet")),
                "{refused}: {errors:?}"
            );
        }
    }

    #[test]
    fn weights_name_the_existing_members() {
        let g = group(
            json!({"mode": "ActiveActive", "replicas": 2, "template": template(),
            "traffic": {"policy": "Static", "weights": {"cache-0": 1, "cache-2": 1}}}),
        );
        let errors = validate_manifest(&g, None);
        assert!(
            errors.iter().any(|e| e
                .message
                .contains("spec.traffic.weights: every key must name an existing member")),
            "{errors:?}"
        );
    }
}
