//! The agent binary's behaviour at its edges: bad flags, corrupt data, fresh data directories,
//! membership changes, ActiveActive groups.

mod agent_support;

use std::process::Command;
use std::time::Duration;

use agent_support::*;
use quorate::agent::client::{LeaseState, Member, Role};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quorate-agent"))
}

#[test]
fn bad_flags_are_refused_with_the_flag_name() -> TestResult {
    let out = agent()
        .args([
            "--data-dir",
            "/tmp/x",
            "--member",
            "cache-1",
            "--advertise",
            "a:1",
            "--lease-millis",
            "10",
        ])
        .output()?;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--lease-millis") && text.contains("200..=60000"),
        "{text}"
    );
    let out = agent().args(["--member", "cache-1"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
    Ok(())
}

#[test]
fn environment_variables_set_flags() -> TestResult {
    let out = agent()
        .env("QUORATE_DATA_DIR", "/tmp/x")
        .env("QUORATE_MEMBER", "cache-1")
        .env("QUORATE_ADVERTISE", "a:1")
        .env("QUORATE_MODE", "Nope")
        .output()?;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--mode") && text.contains("ActiveActive"),
        "{text}"
    );
    Ok(())
}

/// A bootstrapped one-member group with its primary appointed.
async fn single_member_group() -> TestResult<Cluster> {
    let mut c = Cluster::start(ClusterOptions {
        members: 1,
        ..Default::default()
    })?;
    c.bootstrap().await?;
    c.wait_state(Duration::from_secs(15), "a single-member group", |s| {
        s.primary.is_some()
    })
    .await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_is_refused_naming_the_file() -> TestResult {
    let mut c = single_member_group().await?;
    c.kill9(0);
    let log = c.nodes[0].data_dir().join("raft-log");
    let mut data = std::fs::read(&log)?;
    if data.len() < 40 {
        return Err(err("raft-log unexpectedly small"));
    }
    data[12] ^= 0x5a;
    std::fs::write(&log, &data)?;
    c.restart(0)?;
    if !c.nodes[0].proc.wait_exit(Duration::from_secs(10)) {
        return Err(err("agent started on a corrupt log"));
    }
    let text = std::fs::read_to_string(c.nodes[0].dir.join("agent.log"))?;
    assert!(
        text.contains("raft-log") && text.contains("corrupt"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_gets_a_new_id_and_is_re_added() -> TestResult {
    let mut c = Cluster::start(ClusterOptions {
        members: 3,
        ..Default::default()
    })?;
    c.bootstrap().await?;
    let s = c
        .wait_state(Duration::from_secs(20), "a primary and all healthy", |s| {
            s.primary.is_some() && s.members.iter().filter(|m| m.healthy).count() == 3
        })
        .await?;
    let primary = s.primary.as_ref().map(|p| p.id).unwrap_or(0);
    let victim = (0..3)
        .find(|i| {
            c.nodes[*i].id != primary && Some(c.nodes[*i].id) != s.leader.as_ref().map(|l| l.id)
        })
        .ok_or("no victim")?;
    let old_id = c.nodes[victim].id;
    // The primary cannot be removed.
    let e = c
        .client(0)
        .await?
        .remove_member(primary)
        .await
        .err()
        .ok_or("removed the primary")?;
    assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition));
    // Wipe the victim's data directory.
    c.kill9(victim);
    std::fs::remove_dir_all(c.nodes[victim].data_dir())?;
    c.restart(victim)?;
    let fresh = c.client(victim).await?.status().await?;
    let info = fresh.answered_by.ok_or("no identity")?;
    assert_ne!(info.id, old_id, "an id is never reused");
    assert!(!info.initialized);
    // Remove the old identity (through any member: forwarded to the coordinator) and add the new.
    let other = (victim + 1) % 3;
    c.client(other).await?.remove_member(old_id).await?;
    let reply = c
        .client(other)
        .await?
        .add_member(Member {
            id: info.id,
            name: c.nodes[victim].spec.name.clone(),
            address: c.nodes[victim].grpc(),
            witness: false,
        })
        .await?;
    assert!(reply.voters.contains(&info.id));
    // Idempotent.
    c.client(other)
        .await?
        .add_member(Member {
            id: info.id,
            name: c.nodes[victim].spec.name.clone(),
            address: c.nodes[victim].grpc(),
            witness: false,
        })
        .await?;
    c.nodes[victim].id = info.id;
    c.wait_state(
        Duration::from_secs(20),
        "the re-added member healthy",
        |s| {
            s.members
                .iter()
                .any(|m| m.id == info.id && m.voter && m.healthy)
                && !s.members.iter().any(|m| m.id == old_id)
        },
    )
    .await?;
    // Bootstrapping again is refused.
    let members = vec![Member {
        id: info.id,
        name: c.nodes[victim].spec.name.clone(),
        address: c.nodes[victim].grpc(),
        witness: false,
    }];
    let e = c
        .client(victim)
        .await?
        .bootstrap(members)
        .await
        .err()
        .ok_or("bootstrapped twice")?;
    assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition));
    c.check_invariants()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_active_groups_have_no_primary_and_one_leader() -> TestResult {
    let mut c = Cluster::start(ClusterOptions {
        members: 3,
        testapp: true,
        args: vec!["--mode".into(), "ActiveActive".into()],
        ..Default::default()
    })?;
    c.bootstrap().await?;
    for i in 0..3 {
        http_request(
            "POST",
            &c.nodes[i].app_addr(),
            &format!("/admin/load?value={}", i as f64 * 0.25),
            None,
        )
        .await?;
    }
    let s = c
        .wait_state(
            Duration::from_secs(20),
            "three active members with load",
            |s| {
                s.members
                    .iter()
                    .filter(|m| m.role == Role::Active as i32 && m.healthy && m.load.is_some())
                    .count()
                    == 3
            },
        )
        .await?;
    assert!(s.primary.is_none());
    assert_eq!(s.primary_lease, LeaseState::None as i32);
    let leader = s.leader.as_ref().ok_or("no leader")?;
    let li = c.index_of(leader.id).ok_or("unknown leader")?;
    assert_eq!(http_get(&c.nodes[li].http(), "/leader").await?.0, 200);
    for i in 0..3 {
        assert_eq!(http_get(&c.nodes[i].http(), "/primary").await?.0, 503);
        if i != li {
            assert_eq!(http_get(&c.nodes[i].http(), "/leader").await?.0, 503);
        }
    }
    // Watch re-sends the state as a heartbeat even when nothing changes.
    let client = c.client(0).await?;
    let mut stream = Box::pin(client.watch());
    use futures::StreamExt;
    let t = std::time::Instant::now();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await?
            .ok_or("watch ended")??;
    }
    assert!(t.elapsed() < Duration::from_secs(6));
    let e = client
        .switchover("")
        .await
        .err()
        .ok_or("switchover in ActiveActive")?;
    assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition));
    let _ = &mut c;
    Ok(())
}

/// Kubernetes can start a replacement pod while the old agent still shuts down on the same
/// volume: the second agent process must not touch the data directory until the first is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_waits_for_the_data_directory() -> TestResult {
    let mut c = single_member_group().await?;
    let node = &c.nodes[0];
    let ip = node
        .spec
        .ip
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.99"))
        .ok_or_else(|| err("node ip"))?;
    let log = node.dir.join("second.log");
    let mut second = Proc::new(
        agent()
            .arg("--data-dir")
            .arg(node.data_dir())
            .args(["--member", &node.spec.name])
            .args([
                "--listen",
                &format!("{ip}:7470"),
                "--advertise",
                &format!("{ip}:7470"),
            ])
            .args(["--http-listen", &format!("{ip}:7471")])
            .arg("--role-file")
            .arg(node.dir.join("second-role"))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
        log.clone(),
    );
    let logged = |text: &str| std::fs::read_to_string(&log).is_ok_and(|l| l.contains(text));
    wait_until(
        Duration::from_secs(10),
        "the second process to wait for the lock",
        || logged("another agent process still uses the data directory"),
    )
    .await?;
    // Not serving while it waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(second.is_running(), "{}", second.log_tail(20));
    assert!(
        http_get(&format!("{ip}:7471"), "/readiness").await.is_err(),
        "the second process serves: {}",
        second.log_tail(20)
    );
    c.kill9(0);
    wait_until(
        Duration::from_secs(10),
        "the second process to take the data directory over",
        || logged("released the data directory"),
    )
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http_get(&format!("{ip}:7471"), "/readiness").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second process does not serve: {}",
            second.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.kill9();
    Ok(())
}
