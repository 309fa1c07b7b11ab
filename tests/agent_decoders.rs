//! Malformed input never panics: arbitrary bytes into every decoder the agent exposes to the
//! network or reads from disk.

use proptest::prelude::*;
use prost::Message;
use quorate::agent::proto;
use quorate::agent::raft::log_store::decode_log;
use quorate::agent::raft::state_machine::decode_snapshot_file;
use quorate::agent::raft::types::TypeConfig;
use quorate::agent::role::parse_role_record;

fn decode_all_messages(data: &[u8]) {
    let _ = proto::StatusRequest::decode(data);
    let _ = proto::WatchRequest::decode(data);
    let _ = proto::Member::decode(data);
    let _ = proto::BootstrapRequest::decode(data);
    let _ = proto::RemoveMemberRequest::decode(data);
    let _ = proto::SwitchoverRequest::decode(data);
    let _ = proto::GroupState::decode(data);
    let _ = proto::RaftMessage::decode(data);
    let _ = proto::MemberReport::decode(data);
    let _ = proto::ReportReply::decode(data);
    let _ = proto::DemoteRequest::decode(data);
    let _ = proto::FaultRequest::decode(data);
}

fn decode_raft_payloads(data: &[u8]) {
    let _ = serde_json::from_slice::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = serde_json::from_slice::<openraft::raft::VoteRequest<u64>>(data);
    let _ = serde_json::from_slice::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(data);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn protobuf_messages(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all_messages(&data);
    }

    #[test]
    fn raft_payloads(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_raft_payloads(&data);
    }

    #[test]
    fn raft_payloads_from_json_shaped_text(text in r#"\{("[a-z_]{1,12}":(null|[0-9]{1,5}|"[a-z]{0,5}"|\[\]|\{\}),?){0,6}\}"#) {
        decode_raft_payloads(text.as_bytes());
    }

    #[test]
    fn disk_formats(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode_log(&data);
        let _ = decode_snapshot_file(&data);
        let _ = parse_role_record(&data);
        let _ = quorate::agent::raft::data_dir::parse_node_id(&String::from_utf8_lossy(&data));
    }

    /// Valid protobuf with hostile values (huge numbers, odd enums) round-trips without panics.
    #[test]
    fn hostile_but_well_formed_reports(released in any::<u64>(), reason in any::<i32>(), load in any::<f64>()) {
        let r = proto::MemberReport {
            from_id: 1,
            workload_healthy: true,
            load: Some(load),
            latency_ms: Some(load),
            applied_index: released,
            priority: u32::MAX,
            released_epoch: released,
            release_reason: reason,
            leaving: false,
            workload_position: Some(released),
            position_token: released,
            workload_message: String::new(),
            hooks: vec![proto::HookOutcome { hook: "promote".into(), epoch: released, ..Default::default() }],
        };
        let bytes = r.encode_to_vec();
        prop_assert_eq!(proto::MemberReport::decode(bytes.as_slice()).ok(), Some(r));
    }
}
