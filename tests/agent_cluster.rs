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
        .wait_state(
            Duration::from_secs(20),
            "a primary with a live lease",
            |s| {
                s.primary.is_some()
                    && s.primary_lease == quorate::agent::client::LeaseState::Live as i32
            },
        )
        .await?;
    assert_eq!(s.epoch, 1);
    assert_eq!(s.members.len(), 3);
    let p = c
        .index_of(s.primary.as_ref().map(|p| p.id).unwrap_or(0))
        .ok_or("unknown primary")?;
    // The primary serves /primary, the others /backup; the role file and the workload agree.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _) = http_get(&c.nodes[p].http(), "/primary").await?;
        let role = read_role(&c.nodes[p].role_file());
        let (_, app) = http_get(&c.nodes[p].app_addr(), "/").await?;
        if code == 200
            && role
                .as_ref()
                .is_some_and(|r| r.role == "Primary" && r.epoch == 1)
            && app.contains(r#""role":"Primary""#)
        {
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

use quorate::agent::client::{FailoverReason, LeaseState, Role};
use tokio_stream::StreamExt;

fn live(s: &quorate::agent::client::GroupState) -> bool {
    s.primary.is_some() && s.primary_lease == LeaseState::Live as i32
}

async fn started(
    opts: ClusterOptions,
) -> TestResult<(Cluster, quorate::agent::client::GroupState)> {
    let mut c = Cluster::start(opts)?;
    c.bootstrap().await?;
    let n = c.nodes.len();
    let s = c
        .wait_state(
            Duration::from_secs(20),
            "a first primary and every member healthy",
            |s| live(s) && s.members.iter().filter(|m| m.healthy).count() == n,
        )
        .await?;
    Ok((c, s))
}

fn primary_index(c: &Cluster, s: &quorate::agent::client::GroupState) -> TestResult<usize> {
    let id = s.primary.as_ref().map(|p| p.id).ok_or("no primary")?;
    c.index_of(id)
        .ok_or_else(|| err("primary is not a known node"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_appoints_a_new_one_with_the_next_epoch() -> TestResult {
    let (mut c, s1) = started(ClusterOptions {
        members: 3,
        ..Default::default()
    })
    .await?;
    let old = primary_index(&c, &s1)?;
    // Watch from a member that survives: the stream must show the hand-over.
    let observer = (old + 1) % 3;
    let client = c.client(observer).await?;
    let mut watch = Box::pin(client.watch());
    let first = watch.next().await.ok_or("watch ended")??;
    assert_eq!(first.epoch, s1.epoch);
    c.kill9(old);
    let s2 = c
        .wait_state(Duration::from_secs(15), "a new primary", |s| {
            live(s) && s.epoch == s1.epoch + 1
        })
        .await?;
    assert_ne!(primary_name(&s2), primary_name(&s1));
    let last = s2.failovers.last().ok_or("no failover recorded")?;
    assert_eq!(last.reason, FailoverReason::LeaseExpired as i32);
    assert!(last.appointed_at_unix_millis >= last.detected_at_unix_millis);
    // The watch stream saw the new epoch too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let item = tokio::time::timeout_at(deadline, watch.next())
            .await?
            .ok_or("watch ended")??;
        if item.epoch == s1.epoch + 1 {
            break;
        }
    }
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_is_replaced_only_after_its_lease_and_has_demoted_on_resume() -> TestResult
{
    let (c, s1) = started(ClusterOptions {
        members: 3,
        ..Default::default()
    })
    .await?;
    let old = primary_index(&c, &s1)?;
    c.nodes[old].proc.signal(libc::SIGSTOP);
    let s2 = c
        .wait_state(Duration::from_secs(15), "a replacement", |s| {
            live(s) && s.epoch == s1.epoch + 1
        })
        .await?;
    assert_ne!(primary_name(&s2), primary_name(&s1));
    // Still stopped: its last lease must be over before the new primary started.
    let lines = c.transitions();
    let intervals = primary_intervals(&lines);
    let old_end = intervals
        .iter()
        .filter(|(m, e, _, _)| *m == c.nodes[old].spec.name && *e == s1.epoch)
        .map(|(_, _, _, end)| *end)
        .max()
        .ok_or("the old primary never held a lease")?;
    let new_start = intervals
        .iter()
        .filter(|(_, e, _, _)| *e == s2.epoch)
        .map(|(_, _, start, _)| *start)
        .min()
        .ok_or("the new primary has no lease")?;
    assert!(
        new_start >= old_end,
        "new primary at {new_start} before the old lease ended at {old_end}"
    );
    c.nodes[old].proc.signal(libc::SIGCONT);
    // On resume the first answer of /primary is already 503: the lease is judged on the clock.
    let (code, body) = http_get(&c.nodes[old].http(), "/primary").await?;
    assert_eq!(code, 503, "{body}");
    // And it records its demotion for the old epoch.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let demoted = c.transitions().iter().any(|l| {
            l.member == c.nodes[old].spec.name && l.event == "demote" && l.epoch == s1.epoch
        });
        let role = read_role(&c.nodes[old].role_file());
        if demoted && role.is_some_and(|r| r.role == "Backup") {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(err(format!("old primary did not demote\n{}", c.logs(20))));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_demotes_and_the_majority_moves_on() -> TestResult {
    let (c, s1) = started(ClusterOptions {
        members: 3,
        ..Default::default()
    })
    .await?;
    let old = primary_index(&c, &s1)?;
    let others: Vec<u64> = c
        .nodes
        .iter()
        .filter(|n| n.id != c.nodes[old].id)
        .map(|n| n.id)
        .collect();
    c.client(old).await?.isolate_from(others.clone()).await?;
    for i in 0..c.nodes.len() {
        if i != old {
            c.client(i)
                .await?
                .isolate_from(vec![c.nodes[old].id])
                .await?;
        }
    }
    let s2 = c
        .wait_state(
            Duration::from_secs(15),
            "a primary on the majority side",
            |s| {
                live(s)
                    && s.epoch > s1.epoch
                    && s.primary.as_ref().map(|p| p.id) != Some(c.nodes[old].id)
            },
        )
        .await?;
    // The isolated old primary stops answering /primary on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while http_get(&c.nodes[old].http(), "/primary").await?.0 != 503 {
        if std::time::Instant::now() > deadline {
            return Err(err("isolated primary still claims the role"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Heal: the old primary rejoins as a backup, the new one stays.
    for i in 0..c.nodes.len() {
        c.client(i).await?.isolate_from(vec![]).await?;
    }
    let s3 = c
        .wait_state(Duration::from_secs(15), "the healed group", |s| {
            live(s) && s.members.iter().filter(|m| m.healthy).count() == 3
        })
        .await?;
    assert_eq!(s3.epoch, s2.epoch);
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_member_preserves_the_committed_state() -> TestResult {
    let (mut c, s1) = started(ClusterOptions {
        members: 3,
        ..Default::default()
    })
    .await?;
    let client = c.client(0).await?;
    for _ in 0..5 {
        client.touch().await?;
    }
    client.pause().await?;
    let before = c
        .wait_state(Duration::from_secs(5), "paused", |s| s.paused)
        .await?;
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.restart(i)?;
    }
    let after = c
        .wait_state(Duration::from_secs(20), "the restarted group", |s| {
            s.commit_index >= before.commit_index
        })
        .await?;
    assert!(after.epoch >= s1.epoch);
    assert!(after.paused, "the pause survived");
    let ids = |s: &quorate::agent::client::GroupState| {
        let mut v: Vec<u64> = s.members.iter().map(|m| m.id).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(ids(&after), ids(&before));
    // Paused: nobody is appointed automatically, but the committed primary may renew.
    // Member 1 forwards to the coordinator only once it has heard from it: a coordinator just
    // elected may not have reached it yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match c.client(1).await?.resume().await {
            Ok(_) => break,
            Err(e)
                if e.code() == Some(tonic::Code::Unavailable)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let s = c
        .wait_state(Duration::from_secs(15), "a primary after resume", live)
        .await?;
    assert!(s.epoch >= s1.epoch);
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_hands_over_without_two_primaries() -> TestResult {
    let (c, s1) = started(ClusterOptions {
        members: 3,
        testapp: true,
        ..Default::default()
    })
    .await?;
    let old = primary_index(&c, &s1)?;
    let target = (old + 1) % 3;
    let target_name = c.nodes[target].spec.name.clone();
    // Ask a member that is neither (it forwards to the coordinator when needed).
    let asker = (old + 2) % 3;
    let reply = c.client(asker).await?.switchover(&target_name).await?;
    assert_eq!(
        reply.primary.as_ref().map(|p| p.name.clone()),
        Some(target_name.clone())
    );
    assert_eq!(reply.epoch, s1.epoch + 1);
    let s2 = c
        .wait_state(
            Duration::from_secs(10),
            "the target with a live lease",
            |s| live(s) && primary_name(s).as_deref() == Some(target_name.as_str()),
        )
        .await?;
    assert_eq!(
        s2.failovers.last().map(|f| f.reason),
        Some(FailoverReason::Switchover as i32)
    );
    // Fencing in the workload: the old primary refuses writes, the new one refuses old epochs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (old_code, _) = http_request(
            "POST",
            &c.nodes[old].app_addr(),
            "/write",
            Some(r#"{"epoch":1,"value":"x"}"#),
        )
        .await?;
        let body = format!(r#"{{"epoch":{},"value":"y"}}"#, s2.epoch);
        let (new_code, _) =
            http_request("POST", &c.nodes[target].app_addr(), "/write", Some(&body)).await?;
        let (stale_code, _) = http_request(
            "POST",
            &c.nodes[target].app_addr(),
            "/write",
            Some(r#"{"epoch":1,"value":"z"}"#),
        )
        .await?;
        if old_code == 409 && new_code == 200 && stale_code == 409 {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(err(format!(
                "write fencing: old {old_code}, new {new_code}, stale {stale_code}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Unknown targets and witnesses are refused.
    let e = c
        .client(0)
        .await?
        .switchover("nobody")
        .await
        .err()
        .ok_or("accepted an unknown target")?;
    assert_eq!(e.code(), Some(tonic::Code::NotFound));
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_and_unhealthy_workload_hand_off_at_once() -> TestResult {
    let (mut c, s1) = started(ClusterOptions {
        members: 3,
        testapp: true,
        ..Default::default()
    })
    .await?;
    // Workload fails its check: the primary releases, a healthy backup takes over.
    let first = primary_index(&c, &s1)?;
    http_request(
        "POST",
        &c.nodes[first].app_addr(),
        "/admin/health?ok=false",
        None,
    )
    .await?;
    let s2 = c
        .wait_state(
            Duration::from_secs(10),
            "a hand-off from the unhealthy primary",
            |s| live(s) && s.epoch == s1.epoch + 1,
        )
        .await?;
    assert_eq!(
        s2.failovers.last().map(|f| f.reason),
        Some(FailoverReason::WorkloadUnhealthy as i32)
    );
    assert_ne!(primary_index(&c, &s2)?, first);
    // SIGTERM: the primary releases, the agent exits, the group moves on well within a lease.
    let second = primary_index(&c, &s2)?;
    let t = std::time::Instant::now();
    c.nodes[second].proc.signal(libc::SIGTERM);
    let s3 = c
        .wait_state(Duration::from_secs(10), "a hand-off after SIGTERM", |s| {
            live(s) && s.epoch == s2.epoch + 1
        })
        .await?;
    let took = t.elapsed();
    assert_eq!(
        s3.failovers.last().map(|f| f.reason),
        Some(FailoverReason::Released as i32)
    );
    assert!(
        took < Duration::from_millis(1000),
        "graceful hand-off took {took:?}"
    );
    assert!(
        c.nodes[second].proc.wait_exit(Duration::from_secs(5)),
        "agent did not exit"
    );
    let role = read_role(&c.nodes[second].role_file()).ok_or("no role file")?;
    assert_eq!(role.role, "Backup");
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_member_keeps_running_but_is_never_appointed() -> TestResult {
    let (mut c, s1) = started(ClusterOptions {
        members: 3,
        ..Default::default()
    })
    .await?;
    let first = primary_index(&c, &s1)?;
    let name = |c: &Cluster, i: usize| c.nodes[i].spec.name.clone();
    let (fenced, other) = match first {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let client = c.client(other).await?;
    // The primary is switched away first, not fenced.
    let refused = client
        .fence(&name(&c, first), true)
        .await
        .expect_err("fencing the primary");
    assert!(
        refused.to_string().contains("switch over first"),
        "{refused}"
    );
    client.fence(&name(&c, fenced), true).await?;
    let s2 = c
        .wait_state(Duration::from_secs(10), "the fence applied", |s| {
            s.members
                .iter()
                .any(|m| m.name == name(&c, fenced) && m.fenced)
        })
        .await?;
    // The primary dies: the fenced member, which runs and is healthy, is not appointed.
    c.kill9(first);
    let s3 = c
        .wait_state(Duration::from_secs(15), "a new primary", |s| {
            live(s) && s.epoch == s2.epoch + 1
        })
        .await?;
    assert_eq!(
        primary_name(&s3),
        Some(name(&c, other)),
        "the fenced member was appointed"
    );
    assert!(
        s3.members
            .iter()
            .any(|m| m.name == name(&c, fenced) && m.healthy && m.fenced),
        "the fenced member should keep running: {:?}",
        s3.members
    );
    // Unfenced, it is a candidate again: a switchover may go to it.
    let client = c.client(other).await?;
    client.fence(&name(&c, fenced), false).await?;
    c.wait_state(Duration::from_secs(10), "the fence lifted", |s| {
        s.members.iter().all(|m| !m.fenced)
    })
    .await?;
    client.switchover(&name(&c, fenced)).await?;
    let s4 = c
        .wait_state(
            Duration::from_secs(15),
            "the switchover to the unfenced member",
            |s| live(s) && primary_name(s) == Some(name(&c, fenced)),
        )
        .await?;
    assert_eq!(s4.epoch, s3.epoch + 1);
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flap_guard_stops_automatic_failovers_until_resume() -> TestResult {
    let (mut c, s1) = started(ClusterOptions {
        members: 3,
        args: vec!["--max-failovers-per-hour".into(), "1".into()],
        ..Default::default()
    })
    .await?;
    let first = primary_index(&c, &s1)?;
    c.kill9(first);
    let s2 = c
        .wait_state(Duration::from_secs(15), "one automatic failover", |s| {
            live(s) && s.epoch == s1.epoch + 1
        })
        .await?;
    c.restart(first)?;
    let second = primary_index(&c, &s2)?;
    c.wait_state(Duration::from_secs(15), "all members back", |s| {
        s.members.iter().filter(|m| m.healthy).count() == 3
    })
    .await?;
    c.kill9(second);
    let s3 = c
        .wait_state(Duration::from_secs(15), "the flap guard", |s| {
            s.flap_guard_tripped
        })
        .await?;
    assert_eq!(s3.epoch, s2.epoch, "no second automatic failover");
    // Resume clears the guard and lets the coordinator appoint again.
    let survivor = (0..3).find(|i| *i != second).ok_or("no survivor")?;
    c.client(survivor).await?.resume().await?;
    let s4 = c
        .wait_state(Duration::from_secs(15), "a primary after resume", |s| {
            live(s) && !s.flap_guard_tripped
        })
        .await?;
    assert_eq!(s4.epoch, s2.epoch + 1);
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_votes_but_is_never_primary() -> TestResult {
    let (mut c, s1) = started(ClusterOptions {
        members: 2,
        witnesses: 1,
        ..Default::default()
    })
    .await?;
    let witness = c
        .nodes
        .iter()
        .position(|n| n.spec.witness)
        .ok_or("no witness")?;
    assert_ne!(primary_index(&c, &s1)?, witness);
    let w = s1
        .members
        .iter()
        .find(|m| m.witness)
        .ok_or("witness not listed")?;
    assert_eq!(w.role, Role::Witness as i32);
    assert!(w.voter);
    let first = primary_index(&c, &s1)?;
    c.kill9(first);
    let s2 = c
        .wait_state(
            Duration::from_secs(15),
            "the other member as primary",
            |s| live(s) && s.epoch == s1.epoch + 1,
        )
        .await?;
    let p = primary_index(&c, &s2)?;
    assert_ne!(p, witness);
    assert_ne!(p, first);
    assert_eq!(
        read_role(&c.nodes[witness].role_file()).map(|r| r.role),
        Some("Witness".into())
    );
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_survive_two_failures() -> TestResult {
    let (mut c, s1) = started(ClusterOptions {
        members: 5,
        ..Default::default()
    })
    .await?;
    let first = primary_index(&c, &s1)?;
    let other = (first + 1) % 5;
    c.kill9(first);
    c.kill9(other);
    let s2 = c
        .wait_state(
            Duration::from_secs(20),
            "a primary among the three left",
            |s| live(s) && s.epoch > s1.epoch,
        )
        .await?;
    let p = primary_index(&c, &s2)?;
    assert!(p != first && p != other);
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_group_works_and_refuses_clients_without_a_group_certificate() -> TestResult {
    let (c, s1) = started(ClusterOptions {
        members: 3,
        tls: true,
        ..Default::default()
    })
    .await?;
    assert_eq!(s1.epoch, 1);
    let addr = c.nodes[0].grpc();
    // Plaintext is refused.
    assert!(
        quorate::agent::AgentClient::connect(&addr, None)
            .await
            .is_err()
    );
    // TLS without a client certificate is refused.
    let ca = &c.tls.as_ref().ok_or("no tls")?.ca;
    let anonymous = quorate::agent::client::TlsClientConfig::from_rustls(
        quorate::pki::anonymous_client_config(&ca.cert_pem)?,
    );
    assert!(
        quorate::agent::AgentClient::connect(&addr, Some(anonymous))
            .await
            .is_err()
    );
    // A certificate from another CA is refused.
    let v = quorate::pki::Validity::days_from(jiff::Zoned::now().date(), 30)?;
    let other = quorate::pki::generate_group_ca("another group", &v)?;
    let stranger = quorate::pki::issue_client_certificate(
        &other,
        "stranger",
        Some(&quorate::pki::Identity::Operator),
        &v,
    )?;
    let stranger = quorate::agent::client::TlsClientConfig::from_pem(
        &stranger.cert_pem,
        &stranger.key_pem,
        &ca.cert_pem,
    )?;
    assert!(
        quorate::agent::AgentClient::connect(&addr, Some(stranger))
            .await
            .is_err()
    );
    // The operator's certificate works, and so does a switchover across mTLS peers.
    let client = c.client(0).await?;
    let target = c
        .nodes
        .iter()
        .find(|n| Some(n.id) != s1.primary.as_ref().map(|p| p.id))
        .ok_or("no target")?;
    let reply = client.switchover(&target.spec.name).await?;
    assert_eq!(reply.epoch, 2);
    c.check_invariants()?;
    Ok(())
}

/// Calls every RPC of a TLS group with each kind of certificate this group's CA signs (a
/// member's, the operator's, one that speaks for nobody) and checks that exactly the callers
/// the authorization table allows get past it; refusals are `PermissionDenied`, name the RPC
/// and the caller, and are counted. (Certificates of another group's CA, and none at all, are
/// refused at the handshake: the test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_authorized_by_the_identity_in_the_callers_certificate() -> TestResult {
    use quorate::agent::authz::{self, Caller, Rpc};
    use quorate::agent::client::TlsClientConfig;
    use quorate::agent::proto;
    use quorate::pki::Identity;

    let (c, v, member) = tls_cluster_and_a_member_certificate().await?;
    let ca = &c.tls.as_ref().ok_or("no tls")?.ca;
    let operator = quorate::pki::issue_client_certificate(
        ca,
        "quorate-operator",
        Some(&Identity::Operator),
        &v,
    )?;
    let nobody = quorate::pki::issue_client_certificate(ca, "someone", None, &v)?;
    let callers = [
        (Caller::Identified(Identity::Member("g-9".into())), member),
        (Caller::Identified(Identity::Operator), operator),
        (Caller::Unidentified, nobody),
    ];
    let addr = c.nodes[0].grpc();
    let raft = |from_id| proto::RaftMessage {
        from_id,
        // A node that is not this one: a Raft message that gets past authorization is refused
        // by the target check, so nothing reaches Raft.
        to_id: 424_242,
        payload: b"{}".to_vec(),
    };
    for (caller, cert) in &callers {
        let tls = TlsClientConfig::from_pem(&cert.cert_pem, &cert.key_pem, &ca.cert_pem)?;
        let channel = quorate::agent::transport::channel(&addr, Some(&tls))?;
        let mut agent = proto::agent_client::AgentClient::new(channel.clone());
        let mut peer = proto::peer_client::PeerClient::new(channel);
        for rpc in Rpc::ALL {
            let code = match rpc {
                Rpc::Status => agent.status(proto::StatusRequest {}).await.map(|_| ()),
                Rpc::Watch => agent
                    .watch(proto::WatchRequest {
                        heartbeat_millis: 0,
                    })
                    .await
                    .map(|_| ()),
                Rpc::Bootstrap => agent
                    .bootstrap(proto::BootstrapRequest { members: vec![] })
                    .await
                    .map(|_| ()),
                Rpc::AddMember => agent.add_member(proto::Member::default()).await.map(|_| ()),
                Rpc::RemoveMember => agent
                    .remove_member(proto::RemoveMemberRequest { id: 424_242 })
                    .await
                    .map(|_| ()),
                Rpc::Switchover => agent
                    .switchover(proto::SwitchoverRequest {
                        target: "nobody".into(),
                    })
                    .await
                    .map(|_| ()),
                // Pause is undone by the Resume that follows.
                Rpc::Pause => agent.pause(proto::PauseRequest {}).await.map(|_| ()),
                Rpc::Resume => agent.resume(proto::ResumeRequest {}).await.map(|_| ()),
                // A member that does not exist: refused (not found) when allowed, nothing fenced.
                Rpc::Fence => agent
                    .fence(proto::FenceRequest {
                        member: "nobody".into(),
                        fenced: true,
                    })
                    .await
                    .map(|_| ()),
                Rpc::Touch => agent.touch(proto::TouchRequest {}).await.map(|_| ()),
                Rpc::AppendEntries => peer.append_entries(raft(424_243)).await.map(|_| ()),
                Rpc::Vote => peer.vote(raft(424_243)).await.map(|_| ()),
                Rpc::PreVote => peer.pre_vote(raft(424_243)).await.map(|_| ()),
                Rpc::InstallSnapshot => peer.install_snapshot(raft(424_243)).await.map(|_| ()),
                Rpc::Report => peer
                    .report(proto::MemberReport {
                        from_id: 424_243,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                // Epoch 0 is never issued: nothing to release.
                Rpc::Demote => peer
                    .demote(proto::DemoteRequest {
                        from_id: 424_243,
                        epoch: 0,
                    })
                    .await
                    .map(|_| ()),
                // No faults: heals (the agents run with fault injection enabled).
                Rpc::InjectFault => peer
                    .inject_fault(proto::FaultRequest::default())
                    .await
                    .map(|_| ()),
            }
            .err()
            .map(|s| (s.code(), s.message().to_owned()));
            let refused = matches!(&code, Some((tonic::Code::PermissionDenied, _)));
            let allowed = authz::authorize(rpc, caller).is_ok();
            assert_eq!(
                refused,
                !allowed,
                "{} called by {}: {code:?}",
                rpc.name(),
                caller.kind()
            );
            if let Some((tonic::Code::PermissionDenied, message)) = &code {
                assert!(
                    message.starts_with(rpc.name()) && message.contains("speaks for"),
                    "refusal of {}: {message}",
                    rpc.name()
                );
            }
        }
    }
    let (_, metrics) = http_get(&c.nodes[0].http(), "/metrics").await?;
    for (method, caller) in [
        ("Bootstrap", "member"),
        ("AppendEntries", "operator"),
        ("Status", "unidentified"),
    ] {
        let line =
            format!("quorate_agent_rpc_refused_total{{method=\"{method}\",caller=\"{caller}\"}} 1");
        assert!(metrics.contains(&line), "{line} not in /metrics");
    }
    for name in [
        "quorate_build_info{component=\"agent\"",
        "quorate_agent_lease_remaining_seconds ",
    ] {
        assert!(metrics.contains(name), "{name} not in /metrics");
    }
    // The group is unharmed, and the operator's client resumes it (following a member's
    // pointer to the coordinator when node 0 is not it).
    c.client(0).await?.resume().await?;
    c.check_invariants()?;
    Ok(())
}

/// Three agents with TLS, the validity of certificates issued for the test, and a certificate
/// of the group's CA for a member `g-9` (of the group, but not one of the three).
async fn tls_cluster_and_a_member_certificate()
-> TestResult<(Cluster, quorate::pki::Validity, quorate::pki::CertifiedKey)> {
    let (c, _) = started(ClusterOptions {
        members: 3,
        tls: true,
        ..Default::default()
    })
    .await?;
    let ca = &c.tls.as_ref().ok_or("no tls")?.ca;
    let v = quorate::pki::Validity::days_from(jiff::Zoned::now().date(), 30)?;
    let member = quorate::pki::issue_member_certificate(ca, "g-9", &["g-9".into()], &[], &v)?;
    Ok((c, v, member))
}

/// Oversized and malformed messages, even from a member of the group, are refused with a gRPC
/// status before anything reaches Raft, and the agent serves on: never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_rpcs_are_refused_with_a_status() -> TestResult {
    use quorate::agent::client::TlsClientConfig;
    use quorate::agent::proto;

    let (c, _, member) = tls_cluster_and_a_member_certificate().await?;
    let ca = &c.tls.as_ref().ok_or("no tls")?.ca;
    let tls = TlsClientConfig::from_pem(&member.cert_pem, &member.key_pem, &ca.cert_pem)?;
    let channel = quorate::agent::transport::channel(&c.nodes[0].grpc(), Some(&tls))?;

    // One byte more than the agents decode.
    let mut peer =
        proto::peer_client::PeerClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
    let huge = proto::RaftMessage {
        from_id: 424_243,
        to_id: 424_242,
        payload: vec![0; quorate::agent::MAX_MESSAGE_BYTES + 1],
    };
    let refused = peer
        .append_entries(huge)
        .await
        .expect_err("an oversized message is refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");

    // Not a RaftMessage: a string where the sender's id (a varint) belongs.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Garbled {
        #[prost(string, tag = "1")]
        from_id: String,
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    let garbled = grpc
        .unary(
            tonic::Request::new(Garbled {
                from_id: "not a number".into(),
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/quorate.agent.v1.Peer/AppendEntries",
            ),
            tonic_prost::ProstCodec::<Garbled, proto::RaftMessage>::default(),
        )
        .await
        .expect_err("a malformed message is refused");
    assert!(
        matches!(
            garbled.code(),
            tonic::Code::Internal | tonic::Code::InvalidArgument
        ),
        "{garbled:?}"
    );

    // The agent serves on, and the group is unharmed.
    proto::agent_client::AgentClient::new(channel)
        .status(proto::StatusRequest {})
        .await?;
    c.check_invariants()?;
    Ok(())
}

// --- Coordinator changes and rejoining members -----------------------------------------------
//
// The Kubernetes test bed showed a restarted member deposing a healthy coordinator (its peers
// could not reach it yet, so it campaigned) and the new coordinator then letting the freshly
// handed-off primary's lease run out and appointing itself: two failovers for one pod deletion.
// These tests pin down the expected behaviour: a member that comes back cut off never takes
// leadership from a coordinator that has a live quorum, and a coordinator change (for whatever
// reason) never costs the healthy primary its lease.

const LEASE_MILLIS: u64 = 1000;

/// How long a restarted member stays cut off: three times its worst election timeout.
const CUT_OFF: Duration = Duration::from_millis(1500);

fn leader_id(s: &quorate::agent::client::GroupState) -> Option<u64> {
    s.leader.as_ref().map(|l| l.id)
}

/// A group whose primary is not the coordinator (the candidate rule keeps them apart).
async fn started_apart() -> TestResult<(Cluster, quorate::agent::client::GroupState)> {
    let (c, s) = started(ClusterOptions {
        members: 3,
        ..Default::default()
    })
    .await?;
    let s = c
        .wait_state(
            Duration::from_secs(10),
            "a primary that is not the coordinator",
            |x| live(x) && x.primary.as_ref().map(|p| p.id) != leader_id(x) && x.epoch == s.epoch,
        )
        .await?;
    Ok((c, s))
}

/// After a heal at `healed_at` (monotonic ms): waits until the restarted member reports healthy
/// again and `primary` renewed its lease two leases later, then checks that nothing moved.
async fn assert_settled_without_a_change(
    c: &Cluster,
    before: &quorate::agent::client::GroupState,
    primary: usize,
    healed_at: u64,
) -> TestResult {
    c.wait_state(Duration::from_secs(15), "every member healthy again", |s| {
        s.members.iter().filter(|m| m.healthy).count() == 3
    })
    .await?;
    wait_until(
        Duration::from_secs(10),
        "renewals of the primary two leases after the heal",
        || {
            c.lines_of(primary).iter().any(|l| {
                l.event == "renew"
                    && l.epoch == before.epoch
                    && l.mono_ms > healed_at + 2 * LEASE_MILLIS
            })
        },
    )
    .await
    .map_err(|e| err(format!("{e}\n{}", c.logs(30))))?;
    let after = c
        .wait_state(Duration::from_secs(5), "the coordinator's view", live)
        .await?;
    assert_eq!(
        (leader_id(&after), after.term),
        (leader_id(before), before.term),
        "the coordinator changed (a rejoining member took leadership)\n{}",
        c.logs(30)
    );
    assert_eq!(after.epoch, before.epoch, "a needless new appointment");
    assert_eq!(primary_name(&after), primary_name(before));
    held_without_a_gap(&c.transitions(), &c.nodes[primary].spec.name, before.epoch)?;
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarted_while_cut_off_does_not_depose_the_coordinator() -> TestResult {
    let (mut c, s1) = started_apart().await?;
    let old = primary_index(&c, &s1)?;
    let old_id = c.nodes[old].id;
    c.kill9(old);
    let s2 = c
        .wait_state(Duration::from_secs(15), "the hand-off", |s| {
            live(s) && s.epoch == s1.epoch + 1
        })
        .await?;
    assert_eq!(leader_id(&s2), leader_id(&s1));
    let new = primary_index(&c, &s2)?;
    // It comes back on its data directory (same node id, same Raft state), but nobody can reach
    // it and it reaches nobody for longer than its election timeout.
    for i in (0..3).filter(|i| *i != old) {
        c.client(i).await?.isolate_from(vec![old_id]).await?;
    }
    c.restart(old)?;
    c.client(old).await?.status().await?;
    tokio::time::sleep(CUT_OFF).await;
    for i in (0..3).filter(|i| *i != old) {
        c.client(i).await?.isolate_from(vec![]).await?;
    }
    let healed_at = quorate::agent::clock::monotonic_millis();
    assert_settled_without_a_change(&c, &s2, new, healed_at).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_primary_that_comes_back_unreachable_does_not_take_over() -> TestResult {
    // The test-bed incident: SIGTERM of the primary (it releases, the hand-off is immediate),
    // the pod is recreated at once on the same volume, and for a while the others cannot dial
    // it (its DNS name does not resolve yet) although it can reach them.
    let (mut c, s1) = started_apart().await?;
    let old = primary_index(&c, &s1)?;
    let old_id = c.nodes[old].id;
    c.nodes[old].proc.signal(libc::SIGTERM);
    let s2 = c
        .wait_state(Duration::from_secs(10), "the hand-off", |s| {
            live(s) && s.epoch == s1.epoch + 1
        })
        .await?;
    assert_eq!(
        s2.failovers.last().map(|f| f.reason),
        Some(FailoverReason::Released as i32)
    );
    assert!(c.nodes[old].proc.wait_exit(Duration::from_secs(5)));
    let new = primary_index(&c, &s2)?;
    for i in (0..3).filter(|i| *i != old) {
        c.client(i)
            .await?
            .inject_faults(vec![], vec![old_id])
            .await?;
    }
    c.restart(old)?;
    c.client(old).await?.status().await?;
    tokio::time::sleep(CUT_OFF).await;
    for i in (0..3).filter(|i| *i != old) {
        c.client(i).await?.inject_faults(vec![], vec![]).await?;
    }
    let healed_at = quorate::agent::clock::monotonic_millis();
    assert_settled_without_a_change(&c, &s2, new, healed_at).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_coordinator_keeps_the_primary_and_its_lease() -> TestResult {
    let (mut c, s1) = started_apart().await?;
    let leader = c
        .index_of(leader_id(&s1).ok_or("no coordinator")?)
        .ok_or("unknown coordinator")?;
    let primary = primary_index(&c, &s1)?;
    let killed_at = quorate::agent::clock::monotonic_millis();
    c.kill9(leader);
    let s2 = c
        .wait_state(Duration::from_secs(15), "a new coordinator", |s| {
            s.term > s1.term && leader_id(s).is_some_and(|l| l != c.nodes[leader].id)
        })
        .await?;
    // Every grant of the old coordinator ended within a lease of its death: renewals after
    // two leases come from the new one.
    wait_until(
        Duration::from_secs(10),
        "renewals by the new coordinator",
        || {
            c.lines_of(primary).iter().any(|l| {
                l.event == "renew"
                    && l.epoch == s1.epoch
                    && l.mono_ms > killed_at + 2 * LEASE_MILLIS
            })
        },
    )
    .await
    .map_err(|e| err(format!("{e}\n{}", c.logs(30))))?;
    let s3 = c
        .wait_state(Duration::from_secs(5), "the new coordinator's view", |s| {
            live(s) && s.term == s2.term
        })
        .await?;
    assert_eq!(
        s3.epoch, s1.epoch,
        "a coordinator change caused an appointment"
    );
    assert_eq!(primary_name(&s3), primary_name(&s1));
    assert_eq!(s3.failovers.len(), s1.failovers.len());
    held_without_a_gap(&c.transitions(), &c.nodes[primary].spec.name, s1.epoch)?;
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_appointed_on_the_coordinator_hands_raft_leadership_to_another_member()
-> TestResult {
    let (c, s1) = started_apart().await?;
    let leader = c
        .index_of(leader_id(&s1).ok_or("no coordinator")?)
        .ok_or("unknown coordinator")?;
    let target = c.nodes[leader].spec.name.clone();
    let reply = c.client(leader).await?.switchover(&target).await?;
    assert_eq!(
        reply.primary.as_ref().map(|p| p.name.clone()),
        Some(target.clone())
    );
    let s2 = c
        .wait_state(Duration::from_secs(10), "the coordinator primary", |s| {
            live(s) && primary_name(s).as_deref() == Some(target.as_str())
        })
        .await?;
    // It steps aside: another member is elected while it keeps its lease.
    let s3 = c
        .wait_state(
            Duration::from_secs(10),
            "another member leading Raft, the primary's lease live",
            |s| {
                live(s) && s.term > s1.term && leader_id(s).is_some_and(|l| l != c.nodes[leader].id)
            },
        )
        .await
        .map_err(|e| err(format!("{e}\n{}", c.logs(40))))?;
    assert_eq!(s3.epoch, s2.epoch, "stepping aside caused an appointment");
    assert_eq!(primary_name(&s3), Some(target.clone()));
    held_without_a_gap(&c.transitions(), &target, s2.epoch)?;
    c.check_invariants()?;
    Ok(())
}
