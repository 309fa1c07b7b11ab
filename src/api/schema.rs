//! Schema pieces the derive macros cannot express on their own.

use kube::core::{Rule, cel::Message};
use schemars::{Schema, SchemaGenerator, json_schema};

use super::spec::MAX_REPLICAS;

/// A map from member name to a bounded integer (weights, priorities). The bound is stated twice
/// on purpose: as OpenAPI bounds (shown by `kubectl explain`) and as a CEL rule whose message
/// names the field, so that the error a user sees says what is allowed. `maxProperties` also
/// keeps the API server's CEL cost estimate bounded.
pub(crate) fn map_of_bounded_ints(
    _: &mut SchemaGenerator,
    min: i64,
    max: i64,
    message: &str,
) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_REPLICAS,
        "additionalProperties": {"type": "integer", "format": "int32", "minimum": min, "maximum": max},
        "x-kubernetes-validations": [{
            "rule": format!("self.all(k, self[k] >= {min} && self[k] <= {max})"),
            "message": message,
        }],
    })
}

/// A root-level rule: every key of the member map at `spec.<path>` names an existing member,
/// `<metadata.name>-<ordinal>` with ordinal below `spec.replicas`. It sits at the root because
/// only there can CEL see `metadata.name`.
pub(crate) fn member_key_rule(path: &str) -> Rule {
    member_name_rule(path, "key")
}

/// Like [`member_key_rule`], for a list of member names (each `entry`).
pub(crate) fn member_list_rule(path: &str) -> Rule {
    member_name_rule(path, "entry")
}

fn member_name_rule(path: &str, what: &str) -> Rule {
    let (parent, field) = path.rsplit_once('.').unwrap_or(("", path));
    let parent = if parent.is_empty() {
        "self.spec".to_owned()
    } else {
        format!("self.spec.{parent}")
    };
    let map = format!("{parent}.{field}");
    let ordinal = "k.substring(size(self.metadata.name) + 1)";
    Rule::new(format!(
        "!has({parent}) || !has({map}) || {map}.all(k, k.startsWith(self.metadata.name + '-') \
         && {ordinal}.matches('^(0|[1-9][0-9]?)$') && int({ordinal}) < self.spec.replicas)"
    ))
    .message(Message::Message(format!(
        "spec.{path}: every {what} must name an existing member: the group's name, a dash and an ordinal below \
         spec.replicas (for a group cache with 3 replicas: cache-0, cache-1 or cache-2)"
    )))
    .field_path(format!(".spec.{path}"))
}
