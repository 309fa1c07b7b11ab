//! Wire and storage compatibility across releases. Agents of two releases run side by side
//! during a roll (docs/operations.md, "Upgrades and rolls"), and a restarted agent reads the
//! Raft log an older one wrote. Every kind of message and record is checked in as this release
//! encodes it, under `tests/golden/<release>/`; this test decodes the files of every release
//! with this build and, for this release's own files, checks that it still encodes them byte
//! for byte. A release adds its directory and never edits an earlier one: an earlier file that
//! no longer decodes is a break of compatibility between neighbouring versions.
//!
//! `QUORATE_UPDATE_GOLDEN=1 cargo test --test wire_golden` (re)writes this release's files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use prost::Message;
use quorate::agent::group::{
    FailoverFacts, FailoverReason, GroupCommand, GroupConfig, MemberName, MemberNode, Mode,
};
use quorate::agent::proto;
use quorate::agent::raft::codec::encode_frame;
use quorate::agent::raft::log_store::{LogRecord, decode_log};
use quorate::agent::raft::types::{Entry, LogId, TypeConfig, Vote};

/// How this build decodes one kind of message or record.
type Decode = fn(&[u8]) -> Result<(), String>;

/// One message or record kind: its encoding by this build, and how this build decodes it.
struct Golden {
    file: &'static str,
    bytes: Vec<u8>,
    decode: Decode,
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("fixtures serialize")
}

fn decode_json<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<T>(data)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn decode_proto<T: Message + Default>(data: &[u8]) -> Result<(), String> {
    T::decode(data).map(drop).map_err(|e| e.to_string())
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn member(id: u64) -> MemberName {
    MemberName {
        id,
        name: format!("db-{id}"),
    }
}

fn commands() -> Vec<(&'static str, GroupCommand)> {
    vec![
        (
            "command-configure.json",
            GroupCommand::Configure(GroupConfig {
                mode: Mode::PrimaryBackup,
                lease_millis: 1000,
                max_failovers_per_hour: 6,
            }),
        ),
        (
            "command-appoint.json",
            GroupCommand::Appoint {
                member: member(2),
                epoch: 4,
                failover: Some(FailoverFacts {
                    from: Some(member(1)),
                    reason: FailoverReason::LeaseExpired,
                    detected_at_unix_millis: 1_800_000_000_000,
                    appointed_at_unix_millis: 1_800_000_000_900,
                }),
            },
        ),
        (
            "command-begin-switchover.json",
            GroupCommand::BeginSwitchover {
                epoch: 4,
                target: Some(3),
                requested_at_unix_millis: 1_800_000_001_000,
            },
        ),
        (
            "command-set-paused.json",
            GroupCommand::SetPaused { paused: true },
        ),
        ("command-trip-flap-guard.json", GroupCommand::TripFlapGuard),
        (
            "command-set-fenced.json",
            GroupCommand::SetFenced {
                member: member(3),
                fenced: true,
            },
        ),
        ("command-touch.json", GroupCommand::Touch { nonce: 7 }),
    ]
}

fn entries() -> Vec<Entry> {
    let node = |id: u64| MemberNode {
        name: format!("db-{id}"),
        address: format!("db-{id}.db-peers.ns.svc.cluster.local:7470"),
        witness: false,
    };
    let voters: BTreeSet<u64> = [1, 2, 3].into();
    let nodes: BTreeMap<u64, MemberNode> = (1..=3).map(|i| (i, node(i))).collect();
    vec![
        Entry {
            log_id: log_id(3, 8),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(3, 9),
            payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
        },
        Entry {
            log_id: log_id(3, 10),
            payload: EntryPayload::Normal(commands().swap_remove(1).1),
        },
    ]
}

fn goldens() -> Vec<Golden> {
    let mut out: Vec<Golden> = commands()
        .into_iter()
        .map(|(file, command)| Golden {
            file,
            bytes: json(&command),
            decode: decode_json::<GroupCommand>,
        })
        .collect();
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(3, 7)),
        entries: entries(),
        leader_commit: Some(log_id(3, 7)),
    };
    type Reply<T> = Result<T, RaftError<u64>>;
    out.extend([
        Golden {
            file: "raft-append-entries.json",
            bytes: json(&append),
            decode: decode_json::<AppendEntriesRequest<TypeConfig>>,
        },
        Golden {
            file: "raft-append-entries-reply.json",
            bytes: json(&Reply::Ok(AppendEntriesResponse::<u64>::Success)),
            decode: decode_json::<Reply<AppendEntriesResponse<u64>>>,
        },
        Golden {
            file: "raft-vote.json",
            bytes: json(&VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 10)))),
            decode: decode_json::<VoteRequest<u64>>,
        },
        Golden {
            file: "raft-vote-reply.json",
            bytes: json(&Reply::Ok(VoteResponse::new(
                Vote::new(4, 2),
                Some(log_id(3, 10)),
                true,
            ))),
            decode: decode_json::<Reply<VoteResponse<u64>>>,
        },
    ]);
    // The Raft log file: one frame per record (agent/raft/codec.rs).
    let mut log = Vec::new();
    for record in [
        LogRecord::Vote(Vote::new_committed(3, 1)),
        LogRecord::Entries(entries()),
        LogRecord::TruncateFrom(10),
        LogRecord::PurgeUpTo(log_id(3, 8)),
        LogRecord::Committed(Some(log_id(3, 9))),
    ] {
        encode_frame(&json(&record), &mut log);
    }
    out.push(Golden {
        file: "raft-log.bin",
        bytes: log,
        decode: |data| {
            let (contents, used) = decode_log(data)?;
            if used != data.len() || contents.vote.is_none() || contents.entries.is_empty() {
                return Err(format!(
                    "decoded {used} of {} bytes, vote {:?}, {} entries",
                    data.len(),
                    contents.vote,
                    contents.entries.len()
                ));
            }
            Ok(())
        },
    });
    out.extend(proto_goldens());
    out
}

fn proto_goldens() -> Vec<Golden> {
    let member_ref = |id: u64| proto::MemberRef {
        id,
        name: format!("db-{id}"),
        address: format!("db-{id}.db-peers.ns.svc.cluster.local:7470"),
    };
    let hook = proto::HookOutcome {
        hook: "promote".into(),
        epoch: 4,
        ok: false,
        exit_code: Some(1),
        duration_millis: 120,
        message: "exited with code 1".into(),
        output: "pg_ctl: server is not running".into(),
    };
    let state = proto::GroupState {
        answered_by: Some(proto::NodeInfo {
            id: 1,
            name: "db-1".into(),
            address: member_ref(1).address,
            initialized: true,
            witness: false,
            role: proto::Role::Backup as i32,
        }),
        from_coordinator: true,
        epoch: 4,
        primary: Some(member_ref(2)),
        primary_lease: proto::LeaseState::Live as i32,
        primary_lease_remaining_millis: 640,
        leader: Some(member_ref(1)),
        term: 3,
        commit_index: 10,
        applied_index: 10,
        paused: false,
        flap_guard_tripped: false,
        switchover_target: None,
        switchover_pending: false,
        members: vec![proto::MemberStatus {
            id: 2,
            name: "db-2".into(),
            address: member_ref(2).address,
            voter: true,
            witness: false,
            role: proto::Role::Primary as i32,
            healthy: true,
            load: Some(0.25),
            latency_ms: Some(3.5),
            last_report_age_ms: Some(120),
            applied_index: 10,
            matched_index: Some(10),
            priority: 100,
            workload_position: Some(42),
            workload_message: String::new(),
            hooks: vec![hook.clone()],
            // A fenced member's field in an older release's encoding: absent (false).
            fenced: false,
        }],
        failovers: vec![proto::FailoverRecord {
            from: Some(member_ref(1)),
            to: Some(member_ref(2)),
            epoch: 4,
            reason: proto::FailoverReason::LeaseExpired as i32,
            detected_at_unix_millis: 1_800_000_000_000,
            appointed_at_unix_millis: 1_800_000_000_900,
        }],
        config: Some(proto::GroupConfig {
            mode: proto::Mode::PrimaryBackup as i32,
            lease_millis: 1000,
            max_failovers_per_hour: 6,
        }),
    };
    let report = proto::MemberReport {
        from_id: 3,
        workload_healthy: true,
        load: Some(0.5),
        latency_ms: Some(2.0),
        applied_index: 10,
        priority: 100,
        released_epoch: 0,
        release_reason: proto::ReleaseReason::None as i32,
        leaving: false,
        workload_position: Some(41),
        position_token: 9,
        workload_message: String::new(),
        hooks: vec![hook],
    };
    let reply = proto::ReportReply {
        accepted: true,
        leader: Some(member_ref(1)),
        grant: Some(proto::LeaseGrant {
            epoch: 4,
            remaining_millis: 900,
        }),
        demote: false,
        view: Some(state.clone()),
        position_wanted: 9,
        report_soon: true,
    };
    let raft = proto::RaftMessage {
        from_id: 1,
        payload: json(&VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 10)))),
        to_id: 2,
    };
    vec![
        Golden {
            file: "proto-group-state.bin",
            bytes: state.encode_to_vec(),
            decode: decode_proto::<proto::GroupState>,
        },
        Golden {
            file: "proto-member-report.bin",
            bytes: report.encode_to_vec(),
            decode: decode_proto::<proto::MemberReport>,
        },
        Golden {
            file: "proto-report-reply.bin",
            bytes: reply.encode_to_vec(),
            decode: decode_proto::<proto::ReportReply>,
        },
        Golden {
            file: "proto-raft-message.bin",
            bytes: raft.encode_to_vec(),
            decode: decode_proto::<proto::RaftMessage>,
        },
        Golden {
            file: "proto-demote.bin",
            bytes: proto::DemoteRequest {
                from_id: 2,
                epoch: 4,
            }
            .encode_to_vec(),
            decode: decode_proto::<proto::DemoteRequest>,
        },
    ]
}

/// Under the checkout under test: cargo sets `CARGO_MANIFEST_DIR` for the run as well, and a
/// binary built in another checkout (the target cache is shared) must read this one's files.
fn golden_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/golden")
}

const RELEASE: &str = env!("CARGO_PKG_VERSION");

#[test]
fn this_release_encodes_as_its_golden_files() {
    let dir = golden_root().join(RELEASE);
    let update = std::env::var_os("QUORATE_UPDATE_GOLDEN").is_some();
    if update {
        std::fs::create_dir_all(&dir).expect("create the golden directory");
    }
    let mut problems = Vec::new();
    for g in goldens() {
        let path = dir.join(g.file);
        if update {
            std::fs::write(&path, &g.bytes).expect("write a golden file");
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) if bytes == g.bytes => {}
            Ok(_) => problems.push(format!(
                "{}: this build encodes it differently; if that is on purpose, it must still \
                 read what {RELEASE} wrote: bump the version and add the new release's files",
                path.display()
            )),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n(new kinds of messages: QUORATE_UPDATE_GOLDEN=1 cargo test --test wire_golden)",
        problems.join("\n")
    );
}

#[test]
fn every_release_s_golden_files_decode_with_this_build() {
    let decoders: BTreeMap<&str, Decode> =
        goldens().into_iter().map(|g| (g.file, g.decode)).collect();
    let mut releases: Vec<PathBuf> = std::fs::read_dir(golden_root())
        .expect("tests/golden")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    releases.sort();
    assert!(
        releases.iter().any(|r| r.ends_with(RELEASE)),
        "no golden files for this release {RELEASE}: QUORATE_UPDATE_GOLDEN=1 cargo test --test wire_golden"
    );
    let mut problems = Vec::new();
    for release in &releases {
        for file in std::fs::read_dir(release).expect("a release directory") {
            let path = file.expect("a golden file").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let Some(decode) = decoders.get(name) else {
                problems.push(format!(
                    "{}: no decoder for it any more (a kind of message was dropped)",
                    path.display()
                ));
                continue;
            };
            let bytes = std::fs::read(&path).expect("read a golden file");
            if let Err(e) = decode(&bytes) {
                problems.push(format!("{}: {e}", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
