//! Every invalid manifest of the table is rejected client-side with its expected message, by
//! the same schema and CEL rules the API server enforces (see `quorate::api::validation`).

mod common;

use common::manifests::invalid_cases;
use quorate::api::validation::validate_manifest;

#[test]
fn the_table_has_at_least_twenty_cases() {
    assert!(
        invalid_cases().len() >= 20,
        "tests/invalid must hold at least 20 manifests"
    );
}

#[test]
fn every_invalid_manifest_is_rejected_with_its_message() {
    let mut failures = Vec::new();
    for case in invalid_cases() {
        if let Some(old) = &case.old {
            let errors = validate_manifest(old, None);
            assert!(
                errors.is_empty(),
                "{}: the existing object of an update case must be valid: {errors:?}",
                case.name
            );
        }
        let errors = validate_manifest(&case.object, case.old.as_ref());
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for expect in &case.expects {
            if !text.iter().any(|e| e.contains(expect.as_str())) {
                failures.push(format!(
                    "{}: expected an error containing {expect:?}, got {text:?}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
