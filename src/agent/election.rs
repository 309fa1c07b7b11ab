//! When a member may start a Raft election, and whether it supports another member's (pure).
//!
//! openraft 0.9 leaves two holes that let a member that merely lost touch depose a healthy
//! leader (docs/agent.md *Invariants*: "Raft leader changes must not move the primary", and each change costs
//! the primary a renewal gap):
//!
//! * It has no PreVote. A member that hears no leader for its election timeout — a pod that was
//!   just recreated and whose DNS name does not resolve for its peers yet, a partitioned node —
//!   increments its term on every attempt. When it can talk again, the leader's next
//!   AppendEntries is answered with that higher term and the leader steps down, even though a
//!   quorum followed it all along.
//! * Its vote-request *leader lease* (reject votes while the leader was heard from within
//!   `election_timeout_max`) is measured from the time the local vote last changed or was
//!   touched. Followers touch it on every AppendEntries; the leader never does after its own
//!   election. So a leader more than `election_timeout_max` into its term grants any candidate
//!   with an up-to-date log — in a 3-member group that single vote elects the candidate.
//!
//! The agent therefore runs elections itself (openraft's own election timer is off):
//! a voter that has not heard from a leader for `leader_lease + jitter` first asks the voters in
//! a *pre-vote* whether they would support it. A voter says yes only if the candidate's log is at
//! least as up to date as its own **and** it has not heard from a leader within `leader_lease`
//! itself (a leader: has not had a quorum acknowledge it within `leader_lease`). Only with a
//! majority of yeses (in every configuration of a joint membership) does the member start a real
//! openraft election. A pre-vote changes no term, so a member that comes back after being cut
//! off rejoins as a follower without disturbing anyone. And a leader whose quorum acknowledged it
//! within `leader_lease` rejects real vote requests too, closing the second hole.
//!
//! `leader_lease` equals openraft's own (`election_timeout_max`), so a pre-vote won predicts the
//! real vote: every voter that granted it also passes openraft's check a moment later.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::group::NodeId;

/// Election timing (all milliseconds), derived from `leaseMillis` in [`super::timing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTimers {
    /// A member that heard from a leader (or, as leader, from a quorum) within this supports no
    /// other candidate. Equal to openraft's vote-request leader lease.
    pub leader_lease_millis: u64,
    /// Upper bound of the random extra wait before a member campaigns (spreads candidates).
    pub jitter_millis: u64,
    /// Minimum time between two campaigns of the same member.
    pub retry_millis: u64,
}

/// A pre-vote request: "would you vote for me in a real election now?"
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest<L> {
    pub candidate: NodeId,
    /// The candidate's last log id (openraft's `LogId`, compared with openraft's own order).
    pub last_log_id: Option<L>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteReply {
    pub granted: bool,
    /// Why not (for logs).
    pub reason: Option<String>,
}

/// Why a pre-vote was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The candidate's log is behind this member's.
    StaleLog,
    /// This member heard from a leader within the leader lease.
    LeaderAlive,
    /// This member leads and a quorum acknowledged it within the leader lease.
    LeadingWithQuorum,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::StaleLog => "the candidate's log is behind",
            Refusal::LeaderAlive => "heard from the leader within its lease",
            Refusal::LeadingWithQuorum => {
                "leading with a quorum that acknowledged within the lease"
            }
        }
    }
}

/// One member's election state.
#[derive(Clone, Debug)]
pub struct ElectionGate {
    timers: ElectionTimers,
    /// Last time this member heard from a leader it accepted (or led itself).
    last_leader_contact: u64,
    /// The random extra wait of the current round.
    jitter: u64,
    /// No campaign before this (spacing between attempts).
    not_before: u64,
    /// False while this member must not lead (the primary of a group of three or more voters).
    allowed: bool,
}

impl ElectionGate {
    /// A member that starts (or restarts) behaves as if it just heard from the leader: it gives
    /// the leader a full lease to reach it before it even asks for pre-votes.
    pub fn new(now: u64, timers: ElectionTimers, jitter: u64) -> Self {
        Self {
            timers,
            last_leader_contact: now,
            jitter: jitter.min(timers.jitter_millis),
            not_before: now,
            allowed: true,
        }
    }

    pub fn timers(&self) -> ElectionTimers {
        self.timers
    }

    pub fn last_leader_contact(&self) -> u64 {
        self.last_leader_contact
    }

    /// AppendEntries or InstallSnapshot from a leader this member accepted, or this member is the
    /// leader.
    pub fn on_leader_contact(&mut self, now: u64) {
        self.last_leader_contact = self.last_leader_contact.max(now);
    }

    pub fn set_allowed(&mut self, allowed: bool) {
        self.allowed = allowed;
    }

    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Heard from a leader within the leader lease.
    pub fn leader_alive(&self, now: u64) -> bool {
        now.saturating_sub(self.last_leader_contact) <= self.timers.leader_lease_millis
    }

    /// Whether this member should run a pre-vote round now.
    pub fn campaign_due(&self, now: u64, is_leader: bool, is_voter: bool) -> bool {
        !is_leader
            && is_voter
            && self.allowed
            && now >= self.not_before
            // Strictly after the lease: at its last millisecond the leader still counts as
            // alive (`leader_alive`), and this member would refuse its own pre-vote.
            && now > self.last_leader_contact + self.timers.leader_lease_millis + self.jitter
    }

    /// A campaign (pre-vote round) starts at `now`; `jitter` is fresh randomness in
    /// `0..=jitter_millis` for the next one.
    pub fn on_campaign(&mut self, now: u64, jitter: u64) {
        self.jitter = jitter.min(self.timers.jitter_millis);
        self.not_before = now + self.timers.retry_millis + self.jitter;
    }

    /// The answer to a pre-vote. `leading`: `Some(last quorum acknowledgement)` when this member
    /// is the leader. `candidate_log_up_to_date`: the candidate's last log id is at least this
    /// member's (openraft's comparison, made by the caller).
    pub fn pre_vote(
        &self,
        now: u64,
        leading: Option<u64>,
        candidate_log_up_to_date: bool,
    ) -> Result<(), Refusal> {
        if let Some(ack) = leading {
            if self.leader_keeps_quorum(now, ack) {
                return Err(Refusal::LeadingWithQuorum);
            }
        } else if self.leader_alive(now) {
            return Err(Refusal::LeaderAlive);
        }
        if !candidate_log_up_to_date {
            return Err(Refusal::StaleLog);
        }
        Ok(())
    }

    /// A leader whose quorum acknowledged it at `last_quorum_ack` rejects real vote requests
    /// (openraft's own check uses the stale time of the leader's election).
    pub fn leader_keeps_quorum(&self, now: u64, last_quorum_ack: u64) -> bool {
        now.saturating_sub(last_quorum_ack) <= self.timers.leader_lease_millis
    }
}

/// Whether `granted` (including the candidate itself) is a majority of every configuration of a
/// (possibly joint) membership.
pub fn pre_vote_won(granted: &BTreeSet<NodeId>, configs: &[BTreeSet<NodeId>]) -> bool {
    !configs.is_empty()
        && configs.iter().all(|voters| {
            let yes = voters.iter().filter(|v| granted.contains(v)).count();
            yes * 2 > voters.len()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: ElectionTimers = ElectionTimers {
        leader_lease_millis: 300,
        jitter_millis: 100,
        retry_millis: 200,
    };

    #[test]
    fn a_restarted_member_waits_a_full_lease_before_campaigning() {
        let g = ElectionGate::new(1000, T, 40);
        assert!(!g.campaign_due(1000, false, true));
        assert!(!g.campaign_due(1340, false, true));
        assert!(g.campaign_due(1341, false, true));
        // Never as leader, learner, or while forbidden.
        assert!(!g.campaign_due(5000, true, true));
        assert!(!g.campaign_due(5000, false, false));
        let mut g2 = g.clone();
        g2.set_allowed(false);
        assert!(!g2.campaign_due(5000, false, true));
    }

    #[test]
    fn leader_contact_postpones_and_attempts_are_spaced() {
        let mut g = ElectionGate::new(0, T, 0);
        g.on_leader_contact(250);
        assert!(!g.campaign_due(550, false, true));
        assert!(g.campaign_due(551, false, true));
        g.on_campaign(550, 60);
        assert!(!g.campaign_due(809, false, true));
        assert!(g.campaign_due(810, false, true));
        // A contact from the past never moves the clock back.
        g.on_leader_contact(100);
        assert_eq!(g.last_leader_contact(), 250);
    }

    #[test]
    fn pre_vote_refused_while_a_leader_is_alive_or_the_log_is_behind() {
        let mut g = ElectionGate::new(0, T, 0);
        g.on_leader_contact(1000);
        assert_eq!(g.pre_vote(1300, None, true), Err(Refusal::LeaderAlive));
        assert_eq!(g.pre_vote(1301, None, false), Err(Refusal::StaleLog));
        assert_eq!(g.pre_vote(1301, None, true), Ok(()));
        // A leader defends itself while its quorum is fresh, whatever the candidate's log.
        assert_eq!(
            g.pre_vote(5000, Some(4800), true),
            Err(Refusal::LeadingWithQuorum)
        );
        assert_eq!(g.pre_vote(5000, Some(4600), true), Ok(()));
        assert!(g.leader_keeps_quorum(5000, 4700));
        assert!(!g.leader_keeps_quorum(5000, 4699));
    }

    #[test]
    fn majorities_of_joint_configurations() {
        let set = |v: &[NodeId]| v.iter().copied().collect::<BTreeSet<_>>();
        assert!(pre_vote_won(&set(&[1, 2]), &[set(&[1, 2, 3])]));
        assert!(!pre_vote_won(&set(&[1]), &[set(&[1, 2, 3])]));
        assert!(pre_vote_won(&set(&[1]), &[set(&[1])]));
        assert!(!pre_vote_won(&set(&[1, 2]), &[]));
        // Joint: needs a majority of both the old and the new voters.
        let joint = [set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!pre_vote_won(&set(&[1, 2, 3]), &joint));
        assert!(pre_vote_won(&set(&[1, 3, 4]), &joint));
        assert!(!pre_vote_won(&set(&[1, 2]), &[set(&[1, 2, 3, 4])]));
    }

    proptest! {
        /// Whatever the timing, a member that heard from a leader within the lease never supports
        /// a candidate and never campaigns itself.
        #[test]
        fn a_live_leader_is_never_disturbed(
            contact in 0u64..10_000,
            age in 0u64..=300,
            jitter in 0u64..200,
            up_to_date in any::<bool>(),
        ) {
            let mut g = ElectionGate::new(0, T, jitter);
            g.on_leader_contact(contact);
            let now = contact + age;
            prop_assert!(g.pre_vote(now, None, up_to_date).is_err());
            prop_assert!(!g.campaign_due(now, false, true));
        }
    }
}
