//! The replicated group state (docs/agent.md *The protocol as built*) and the commands that change it.
//!
//! Everything here is pure: the Raft state machine applies committed [`GroupCommand`]s with
//! [`ReplicatedState::apply`], in log order, on every member. The checks in `apply` are the last
//! line of defence for the invariants that only depend on the log: an `Appoint` must carry exactly
//! `epoch + 1` (epochs never regress and each names one member).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A Raft node id: random at a member's first start, persisted, never reused.
pub type NodeId = u64;

/// How many failovers the replicated history keeps.
pub const HISTORY_LIMIT: usize = 32;

/// The flap guard's sliding window.
pub const FLAP_WINDOW_MILLIS: i64 = 60 * 60 * 1000;

/// What Raft keeps about each member (openraft's `Node` type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Pod name, e.g. `cache-1`.
    pub name: String,
    /// How peers reach it (`host:port`, a DNS name in Kubernetes).
    pub address: String,
    /// Votes, never primary, no workload.
    pub witness: bool,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.address)?;
        if self.witness {
            f.write_str("(witness)")?;
        }
        Ok(())
    }
}

/// The ordinal of a StatefulSet pod name (`cache-12` → 12).
pub fn ordinal_of(name: &str) -> Option<u32> {
    let (_, suffix) = name.rsplit_once('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// One primary, the others backups.
    #[default]
    PrimaryBackup,
    /// Every healthy member serves; no primary, one published `leader`.
    ActiveActive,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PrimaryBackup" => Ok(Mode::PrimaryBackup),
            "ActiveActive" => Ok(Mode::ActiveActive),
            other => Err(format!(
                "unknown mode {other:?}: allowed are PrimaryBackup, ActiveActive"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::PrimaryBackup => "PrimaryBackup",
            Mode::ActiveActive => "ActiveActive",
        })
    }
}

/// Group-wide settings, committed once by the first coordinator (from its flags). Lease timing
/// must be the same on every coordinator, so it lives in the log rather than in each agent's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    pub mode: Mode,
    pub lease_millis: u64,
    pub max_failovers_per_hour: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailoverReason {
    /// The primary stopped renewing and its lease ran out (crash, pause, partition).
    LeaseExpired,
    /// The primary gave its lease back (graceful shutdown).
    Released,
    /// The primary's workload failed its health check; it released its lease.
    WorkloadUnhealthy,
    /// Planned hand-off requested through the API.
    Switchover,
}

impl FailoverReason {
    /// Automatic failovers count against the flap guard; planned ones (switchover, graceful
    /// shutdown during a rollout) do not.
    pub fn is_automatic(self) -> bool {
        matches!(
            self,
            FailoverReason::LeaseExpired | FailoverReason::WorkloadUnhealthy
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberName {
    pub id: NodeId,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub from: Option<MemberName>,
    pub to: MemberName,
    pub epoch: u64,
    pub reason: FailoverReason,
    pub detected_at_unix_millis: i64,
    pub appointed_at_unix_millis: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSwitchover {
    /// The epoch of the primary being replaced.
    pub epoch: u64,
    /// Requested target; `None` = best candidate.
    pub target: Option<NodeId>,
    pub requested_at_unix_millis: i64,
}

/// A Raft log entry's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GroupCommand {
    /// Group settings; only the first one is applied.
    Configure(GroupConfig),
    /// Appoint `member` as primary with `epoch` (must be the current epoch + 1).
    Appoint {
        member: MemberName,
        epoch: u64,
        /// `None` for the first appointment of a group (not a failover).
        failover: Option<FailoverFacts>,
    },
    /// Start a planned hand-off away from the primary of `epoch`.
    BeginSwitchover {
        epoch: u64,
        target: Option<NodeId>,
        requested_at_unix_millis: i64,
    },
    /// Pause or resume automatic appointments. Resume also resets the flap guard.
    SetPaused { paused: bool },
    /// Record that the flap guard stopped an automatic failover.
    TripFlapGuard,
    /// Fence (never appoint) or unfence a member. Refused for the current primary: it is
    /// switched away first.
    SetFenced { member: MemberName, fenced: bool },
    /// A harmless write (benchmarks, liveness checks).
    Touch { nonce: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverFacts {
    pub from: Option<MemberName>,
    pub reason: FailoverReason,
    pub detected_at_unix_millis: i64,
    pub appointed_at_unix_millis: i64,
}

/// What applying a command did (openraft's response type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    Applied,
    /// Not applied; the state is unchanged. The text says why.
    Rejected(String),
}

/// The replicated group state, identical on every member at the same applied index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicatedState {
    pub config: Option<GroupConfig>,
    /// Fencing token: incremented by every appointment, never decreases.
    pub epoch: u64,
    pub primary: Option<MemberName>,
    pub switchover: Option<PendingSwitchover>,
    pub paused: bool,
    pub flap_guard_tripped: bool,
    /// Appointment times of automatic failovers within the flap window.
    pub automatic_failovers: VecDeque<i64>,
    /// Most recent last.
    pub history: VecDeque<FailoverRecord>,
    pub touches: u64,
    /// Members that keep running but are never appointed (`kubectl quorate fence`). Left out
    /// of the encoding while empty, so that state written before fencing existed reads back
    /// unchanged.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub fenced: BTreeSet<NodeId>,
}

impl ReplicatedState {
    pub fn primary_id(&self) -> Option<NodeId> {
        self.primary.as_ref().map(|p| p.id)
    }

    /// Automatic failovers within the hour before `now_unix_millis`.
    pub fn automatic_failovers_within_hour(&self, now_unix_millis: i64) -> usize {
        self.automatic_failovers
            .iter()
            .filter(|t| now_unix_millis - **t < FLAP_WINDOW_MILLIS)
            .count()
    }

    /// Would one more automatic failover at `now` exceed the configured limit?
    pub fn flap_guard_blocks(&self, now_unix_millis: i64) -> bool {
        let Some(config) = self.config else {
            return false;
        };
        self.flap_guard_tripped
            || self.automatic_failovers_within_hour(now_unix_millis)
                >= config.max_failovers_per_hour as usize
    }

    /// Applies one committed command. Deterministic: same state + command → same result.
    pub fn apply(&mut self, command: &GroupCommand) -> CommandOutcome {
        match command {
            GroupCommand::Configure(config) => {
                if self.config.is_some() {
                    return CommandOutcome::Rejected("group is already configured".into());
                }
                self.config = Some(*config);
                CommandOutcome::Applied
            }
            GroupCommand::Appoint {
                member,
                epoch,
                failover,
            } => {
                let Some(config) = self.config else {
                    return CommandOutcome::Rejected("group is not configured".into());
                };
                if config.mode != Mode::PrimaryBackup {
                    return CommandOutcome::Rejected("ActiveActive groups have no primary".into());
                }
                if *epoch != self.epoch + 1 {
                    return CommandOutcome::Rejected(format!(
                        "stale appointment: epoch {epoch} but current epoch is {}",
                        self.epoch
                    ));
                }
                // Proposed before a fence was applied: the coordinator chooses again.
                if self.fenced.contains(&member.id) {
                    return CommandOutcome::Rejected(format!("{} is fenced", member.name));
                }
                self.epoch = *epoch;
                self.primary = Some(member.clone());
                self.switchover = None;
                if let Some(facts) = failover {
                    if facts.reason.is_automatic() {
                        self.automatic_failovers
                            .push_back(facts.appointed_at_unix_millis);
                    } else if facts.reason == FailoverReason::Switchover {
                        // A manual switchover is the operator's "I am in charge now".
                        self.flap_guard_tripped = false;
                        self.automatic_failovers.clear();
                    }
                    let now = facts.appointed_at_unix_millis;
                    while self
                        .automatic_failovers
                        .front()
                        .is_some_and(|t| now - *t >= FLAP_WINDOW_MILLIS)
                    {
                        self.automatic_failovers.pop_front();
                    }
                    self.history.push_back(FailoverRecord {
                        from: facts.from.clone(),
                        to: member.clone(),
                        epoch: *epoch,
                        reason: facts.reason,
                        detected_at_unix_millis: facts.detected_at_unix_millis,
                        appointed_at_unix_millis: facts.appointed_at_unix_millis,
                    });
                    while self.history.len() > HISTORY_LIMIT {
                        self.history.pop_front();
                    }
                }
                CommandOutcome::Applied
            }
            GroupCommand::BeginSwitchover {
                epoch,
                target,
                requested_at_unix_millis,
            } => {
                if self.primary.is_none() {
                    return CommandOutcome::Rejected("no primary to switch over from".into());
                }
                if *epoch != self.epoch {
                    return CommandOutcome::Rejected(format!(
                        "switchover for epoch {epoch} but current epoch is {}",
                        self.epoch
                    ));
                }
                self.switchover = Some(PendingSwitchover {
                    epoch: *epoch,
                    target: *target,
                    requested_at_unix_millis: *requested_at_unix_millis,
                });
                CommandOutcome::Applied
            }
            GroupCommand::SetPaused { paused } => {
                self.paused = *paused;
                if !*paused {
                    self.flap_guard_tripped = false;
                    self.automatic_failovers.clear();
                }
                CommandOutcome::Applied
            }
            GroupCommand::TripFlapGuard => {
                self.flap_guard_tripped = true;
                CommandOutcome::Applied
            }
            GroupCommand::SetFenced { member, fenced } => {
                if *fenced && self.primary_id() == Some(member.id) {
                    return CommandOutcome::Rejected(format!(
                        "{} is the primary: switch over first",
                        member.name
                    ));
                }
                if *fenced {
                    self.fenced.insert(member.id);
                } else {
                    self.fenced.remove(&member.id);
                }
                CommandOutcome::Applied
            }
            GroupCommand::Touch { .. } => {
                self.touches += 1;
                CommandOutcome::Applied
            }
        }
    }
}

/// Members as the Raft membership describes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    pub members: BTreeMap<NodeId, RosterEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterEntry {
    pub node: MemberNode,
    pub voter: bool,
}

impl Roster {
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.voter)
            .map(|(id, _)| *id)
    }

    pub fn voter_count(&self) -> usize {
        self.voters().count()
    }

    pub fn name_of(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|m| m.node.name.as_str())
    }

    pub fn member_name(&self, id: NodeId) -> MemberName {
        MemberName {
            id,
            name: self.name_of(id).unwrap_or_default().to_string(),
        }
    }

    /// Resolves a member by name or decimal id.
    pub fn find(&self, name_or_id: &str) -> Option<NodeId> {
        if let Some((id, _)) = self.members.iter().find(|(_, m)| m.node.name == name_or_id) {
            return Some(*id);
        }
        let id: NodeId = name_or_id.parse().ok()?;
        self.members.contains_key(&id).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn configured(max: u32) -> ReplicatedState {
        let mut s = ReplicatedState::default();
        assert_eq!(
            s.apply(&GroupCommand::Configure(GroupConfig {
                mode: Mode::PrimaryBackup,
                lease_millis: 1000,
                max_failovers_per_hour: max,
            })),
            CommandOutcome::Applied
        );
        s
    }

    fn name(id: NodeId) -> MemberName {
        MemberName {
            id,
            name: format!("m-{id}"),
        }
    }

    fn appoint(epoch: u64, id: NodeId, reason: Option<FailoverReason>, at: i64) -> GroupCommand {
        GroupCommand::Appoint {
            member: name(id),
            epoch,
            failover: reason.map(|reason| FailoverFacts {
                from: None,
                reason,
                detected_at_unix_millis: at,
                appointed_at_unix_millis: at,
            }),
        }
    }

    #[test]
    fn ordinal_parses_statefulset_suffix() {
        assert_eq!(ordinal_of("cache-0"), Some(0));
        assert_eq!(ordinal_of("my-cache-12"), Some(12));
        assert_eq!(ordinal_of("cache"), None);
        assert_eq!(ordinal_of("cache-"), None);
        assert_eq!(ordinal_of("cache-x1"), None);
        assert_eq!(ordinal_of("cache-+1"), None);
    }

    #[test]
    fn appointment_needs_configuration_and_next_epoch() {
        let mut s = ReplicatedState::default();
        assert!(matches!(
            s.apply(&appoint(1, 7, None, 0)),
            CommandOutcome::Rejected(_)
        ));
        let mut s = configured(6);
        assert!(matches!(
            s.apply(&appoint(2, 7, None, 0)),
            CommandOutcome::Rejected(_)
        ));
        assert_eq!(s.apply(&appoint(1, 7, None, 0)), CommandOutcome::Applied);
        assert_eq!(s.primary_id(), Some(7));
        assert!(matches!(
            s.apply(&appoint(1, 8, None, 0)),
            CommandOutcome::Rejected(_)
        ));
        assert_eq!(s.primary_id(), Some(7));
        assert_eq!(s.epoch, 1);
    }

    #[test]
    fn a_fenced_member_is_never_appointed_and_the_primary_is_not_fenced() {
        let mut s = configured(6);
        let fence = |id, fenced| GroupCommand::SetFenced {
            member: name(id),
            fenced,
        };
        assert_eq!(s.apply(&appoint(1, 7, None, 0)), CommandOutcome::Applied);
        // The primary: refused, it is switched away first.
        assert!(
            matches!(s.apply(&fence(7, true)), CommandOutcome::Rejected(w) if w.contains("switch over first"))
        );
        assert!(s.fenced.is_empty());
        assert_eq!(s.apply(&fence(8, true)), CommandOutcome::Applied);
        // An appointment proposed before the fence was applied loses.
        assert!(
            matches!(s.apply(&appoint(2, 8, None, 0)), CommandOutcome::Rejected(w) if w.contains("fenced"))
        );
        assert_eq!((s.primary_id(), s.epoch), (Some(7), 1));
        assert_eq!(s.apply(&appoint(2, 9, None, 0)), CommandOutcome::Applied);
        assert_eq!(s.apply(&fence(8, false)), CommandOutcome::Applied);
        assert!(s.fenced.is_empty());
        assert_eq!(s.apply(&appoint(3, 8, None, 0)), CommandOutcome::Applied);
    }

    #[test]
    fn state_without_fenced_members_encodes_as_before() {
        // Older agents wrote no `fenced` field; an empty set must not add one (snapshots and the
        // golden files of earlier releases stay byte for byte what they were).
        let s = configured(6);
        let json = serde_json::to_string(&s).expect("encode");
        assert!(!json.contains("fenced"), "{json}");
        let back: ReplicatedState = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, s);
    }

    #[test]
    fn configure_applies_once() {
        let mut s = configured(6);
        let second = GroupCommand::Configure(GroupConfig {
            mode: Mode::ActiveActive,
            lease_millis: 5000,
            max_failovers_per_hour: 1,
        });
        assert!(matches!(s.apply(&second), CommandOutcome::Rejected(_)));
        assert_eq!(s.config.map(|c| c.lease_millis), Some(1000));
    }

    #[test]
    fn active_active_never_appoints() {
        let mut s = ReplicatedState::default();
        s.apply(&GroupCommand::Configure(GroupConfig {
            mode: Mode::ActiveActive,
            lease_millis: 1000,
            max_failovers_per_hour: 6,
        }));
        assert!(matches!(
            s.apply(&appoint(1, 1, None, 0)),
            CommandOutcome::Rejected(_)
        ));
    }

    #[test]
    fn flap_guard_counts_automatic_failovers_in_a_sliding_hour() {
        let mut s = configured(2);
        s.apply(&appoint(1, 1, None, 0));
        assert!(!s.flap_guard_blocks(0));
        s.apply(&appoint(2, 2, Some(FailoverReason::LeaseExpired), 1_000));
        s.apply(&appoint(3, 1, Some(FailoverReason::Released), 2_000));
        assert!(
            !s.flap_guard_blocks(2_000),
            "graceful release is not counted"
        );
        s.apply(&appoint(
            4,
            2,
            Some(FailoverReason::WorkloadUnhealthy),
            3_000,
        ));
        assert!(s.flap_guard_blocks(3_000));
        // An hour after the first automatic failover only one remains in the window.
        assert!(!s.flap_guard_blocks(1_000 + FLAP_WINDOW_MILLIS));
        s.apply(&GroupCommand::TripFlapGuard);
        assert!(
            s.flap_guard_blocks(10 * FLAP_WINDOW_MILLIS),
            "tripped stays tripped"
        );
        s.apply(&GroupCommand::SetPaused { paused: false });
        assert!(!s.flap_guard_blocks(3_000), "resume resets the guard");
    }

    #[test]
    fn switchover_clears_flap_guard_and_pending_request() {
        let mut s = configured(1);
        s.apply(&appoint(1, 1, None, 0));
        s.apply(&appoint(2, 2, Some(FailoverReason::LeaseExpired), 10));
        s.apply(&GroupCommand::TripFlapGuard);
        assert_eq!(
            s.apply(&GroupCommand::BeginSwitchover {
                epoch: 2,
                target: Some(1),
                requested_at_unix_millis: 20
            }),
            CommandOutcome::Applied
        );
        assert!(s.switchover.is_some());
        s.apply(&appoint(3, 1, Some(FailoverReason::Switchover), 30));
        assert!(s.switchover.is_none());
        assert!(!s.flap_guard_tripped);
        assert!(!s.flap_guard_blocks(30));
        assert_eq!(s.history.len(), 2);
    }

    #[test]
    fn stale_switchover_is_rejected() {
        let mut s = configured(6);
        s.apply(&appoint(1, 1, None, 0));
        assert!(matches!(
            s.apply(&GroupCommand::BeginSwitchover {
                epoch: 0,
                target: None,
                requested_at_unix_millis: 0
            }),
            CommandOutcome::Rejected(_)
        ));
    }

    #[test]
    fn history_is_bounded() {
        let mut s = configured(1000);
        s.apply(&appoint(1, 1, None, 0));
        for e in 2..100 {
            s.apply(&appoint(e, e % 3, Some(FailoverReason::Released), e as i64));
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.history.back().map(|r| r.epoch), Some(99));
    }

    #[test]
    fn roster_finds_by_name_or_id() {
        let mut roster = Roster::default();
        roster.members.insert(
            42,
            RosterEntry {
                node: MemberNode {
                    name: "cache-1".into(),
                    address: "a:1".into(),
                    witness: false,
                },
                voter: true,
            },
        );
        assert_eq!(roster.find("cache-1"), Some(42));
        assert_eq!(roster.find("42"), Some(42));
        assert_eq!(roster.find("43"), None);
        assert_eq!(roster.find("cache-2"), None);
    }

    fn arb_command() -> impl Strategy<Value = GroupCommand> {
        prop_oneof![
            (0u64..20, 0u64..5).prop_map(|(epoch, id)| appoint(epoch, id, None, 0)),
            (0u64..20, 0u64..5, 0i64..10_000_000).prop_map(|(epoch, id, at)| appoint(
                epoch,
                id,
                Some(FailoverReason::LeaseExpired),
                at
            )),
            (0u64..20).prop_map(|epoch| GroupCommand::BeginSwitchover {
                epoch,
                target: None,
                requested_at_unix_millis: 0
            }),
            any::<bool>().prop_map(|paused| GroupCommand::SetPaused { paused }),
            Just(GroupCommand::TripFlapGuard),
            any::<u64>().prop_map(|nonce| GroupCommand::Touch { nonce }),
        ]
    }

    proptest! {
        /// Invariant 2 at the log level: whatever the log contains, the epoch never decreases and
        /// every epoch names exactly one member.
        #[test]
        fn epochs_never_regress_and_name_one_member(commands in proptest::collection::vec(arb_command(), 0..60)) {
            let mut s = configured(3);
            let mut named: BTreeMap<u64, NodeId> = BTreeMap::new();
            for c in &commands {
                let before = s.epoch;
                s.apply(c);
                prop_assert!(s.epoch >= before);
                prop_assert!(s.epoch <= before + 1);
                if let Some(p) = s.primary_id() {
                    let first = *named.entry(s.epoch).or_insert(p);
                    prop_assert_eq!(first, p);
                }
            }
        }
    }
}
