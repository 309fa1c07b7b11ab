//! Agent groups as real processes on loopback: election, failover, fencing, restarts.

mod agent_support;

use std::time::Duration;

use agent_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_elect_and_appoint_a_primary() -> TestResult {
    let mut c = Cluster::start(ClusterOptions {
        members: 3,
        testapp: true,
        ..Default::default()
    })?;
    c.bootstrap().await?;
    let s = c
        .wait_state(Duration::from_secs(20), "a primary with a live lease", |s| {
            s.primary.is_some() && s.primary_lease == quorate::agent::client::LeaseState::Live as i32
        })
        .await?;
    assert_eq!(s.epoch, 1);
    assert_eq!(s.members.len(), 3);
    let p = c.index_of(s.primary.as_ref().map(|p| p.id).unwrap_or(0)).ok_or("unknown primary")?;
    // The primary serves /primary, the others /backup; the role file and the workload agree.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _) = http_get(&c.nodes[p].http(), "/primary").await?;
        let role = read_role(&c.nodes[p].role_file());
        let (_, app) = http_get(&c.nodes[p].app_addr(), "/").await?;
        if code == 200 && role.as_ref().is_some_and(|r| r.role == "Primary" && r.epoch == 1) && app.contains(r#""role":"Primary""#) {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(err(format!("primary not published: {code} {role:?} {app}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, n) in c.nodes.iter().enumerate() {
        if i != p {
            assert_eq!(http_get(&n.http(), "/primary").await?.0, 503);
            assert_eq!(http_get(&n.http(), "/backup").await?.0, 200);
        }
    }
    c.check_invariants()?;
    Ok(())
}
