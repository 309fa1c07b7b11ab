//! Prints the ReplicaGroup CRD as YAML (`make crds` writes it to crds/ and the chart).
fn main() -> anyhow::Result<()> {
    print!("{}", quorate::api::crd_yaml()?);
    Ok(())
}
