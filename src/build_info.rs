//! `quorate_build_info`: which build a process runs, for dashboards and upgrade checks (the
//! Prometheus convention: an info metric whose labels carry the facts and whose value is 1).

use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Registers `quorate_build_info{component, version}` on `registry` (which has no prefix).
pub fn register(registry: &mut Registry, component: &str) {
    registry.register(
        "quorate_build",
        "The build this process runs",
        Info::new(vec![
            ("component".to_owned(), component.to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ]),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_is_an_info_metric_with_component_and_version() {
        let mut registry = prometheus_client::registry::Registry::default();
        super::register(&mut registry, "agent");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(&format!(
                "quorate_build_info{{component=\"agent\",version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }
}
