//! Every timing the agent derives from `leaseMillis`, in one place (docs/agent.md explains the
//! trade-offs).

/// The margin a coordinator adds to a lease before it treats the lease as certainly over.
///
/// Clock rates of two members may differ by up to ±4 %: a lease of `R` ms measured by a slow
/// primary lasts at most `R / 0.96` real ms, while the coordinator's `R + margin` lasts at least
/// `(R + margin) / 1.04`; `margin >= R * 0.0834` closes the gap. The extra 10 ms cover the time
/// between reading the clock and acting on it.
pub fn drift_margin_millis(lease_millis: u64) -> u64 {
    lease_millis / 10 + 10
}

/// The clock-rate bound that [`drift_margin_millis`] tolerates, as a fraction (for the simulation).
pub const MAX_CLOCK_RATE_ERROR: f64 = 0.04;

/// How often each member reports to the coordinator (the primary's renewal period).
pub fn report_interval_millis(lease_millis: u64) -> u64 {
    (lease_millis / 4).max(20)
}

/// How often the coordinator re-confirms, by a heartbeat round, that a quorum still follows it.
pub fn quorum_confirm_interval_millis(lease_millis: u64) -> u64 {
    (lease_millis / 8).max(10)
}

/// A member whose last report is older than this is not counted as healthy.
pub fn report_stale_after_millis(lease_millis: u64) -> u64 {
    lease_millis
}

/// How soon a primary asks again when a report brought no renewal (no coordinator known, the
/// coordinator not ready yet after an election, a lost answer): a coordinator change must not
/// cost the primary a whole report interval of its lease.
pub fn renewal_retry_millis(lease_millis: u64) -> u64 {
    (lease_millis / 20).max(10)
}

/// How long a primary that leads Raft stays silent for another voter to be elected (see
/// `AgentCore::step_aside`): followers campaign `leader_lease + jitter` (0.3–0.4 L) after the
/// last heartbeat; its lease, counted from its last quorum round, lasts at least
/// `lease - quorum confirm interval` from the start of the silence, more than this window plus
/// the renewal by a new coordinator after it.
pub fn step_aside_window_millis(lease_millis: u64) -> u64 {
    lease_millis / 2
}

/// After a step-aside nobody took over (a follower behind, a proposal that broke the silence),
/// the primary leads normally for this long before it tries again.
pub fn step_aside_retry_millis(lease_millis: u64) -> u64 {
    10 * lease_millis
}

/// How long a coordinator whose proposal failed (typically: it is no longer the leader) waits
/// before deciding again; a refusal comes back at once, so deciding again immediately would spin.
pub const PROPOSAL_RETRY_MILLIS: u64 = 10;

/// openraft timers: heartbeat and election timeout range. openraft's own election timer is off
/// (the agent campaigns through [`election_timers`] and a pre-vote, see `agent::election`); what
/// remains of these is openraft's vote-request leader lease (`election_timeout_max`: a follower
/// that heard from its leader within it rejects vote requests) and the RPC timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTimers {
    pub heartbeat_millis: u64,
    pub election_timeout_min_millis: u64,
    pub election_timeout_max_millis: u64,
}

pub fn raft_timers(lease_millis: u64) -> RaftTimers {
    RaftTimers {
        heartbeat_millis: (lease_millis / 10).max(10),
        election_timeout_min_millis: (lease_millis / 5).max(20),
        election_timeout_max_millis: (lease_millis * 3 / 10).max(30),
    }
}

/// The agent's election timing: a voter that heard from no leader for
/// `leader_lease + random(0..=jitter)` (0.3–0.4 L) runs a pre-vote, and then an election.
/// `leader_lease` must equal openraft's (`election_timeout_max`) so that a pre-vote won predicts
/// the real vote.
pub fn election_timers(lease_millis: u64) -> crate::agent::election::ElectionTimers {
    let raft = raft_timers(lease_millis);
    crate::agent::election::ElectionTimers {
        leader_lease_millis: raft.election_timeout_max_millis,
        jitter_millis: (lease_millis / 10).max(10),
        retry_millis: raft.election_timeout_min_millis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_covers_the_clock_rate_bound() {
        for lease in [200u64, 1000, 5000, 60_000] {
            let r = lease as f64;
            let margin = drift_margin_millis(lease) as f64;
            let holder_real = r / (1.0 - MAX_CLOCK_RATE_ERROR);
            let coordinator_real = (r + margin) / (1.0 + MAX_CLOCK_RATE_ERROR);
            assert!(coordinator_real > holder_real, "lease {lease}");
        }
    }

    #[test]
    fn a_new_leader_arrives_before_a_fresh_lease_runs_out() {
        // After a coordinator crash the primary keeps a lease of at least
        // lease - confirm interval - report interval. A follower heard the leader last at the
        // crash at the latest and campaigns at most leader_lease + jitter later; the new
        // coordinator then needs a pre-vote, a vote, one commit and one quorum round (a few
        // round trips), and the primary asks again every renewal retry. Keep an eighth of the
        // lease (125 ms at the default) for those.
        for lease in [200u64, 1000, 5000, 60_000] {
            let t = raft_timers(lease);
            let e = election_timers(lease);
            assert_eq!(e.leader_lease_millis, t.election_timeout_max_millis);
            let worst_election = e.leader_lease_millis + e.jitter_millis;
            let least_lease =
                lease - quorum_confirm_interval_millis(lease) - report_interval_millis(lease);
            assert!(
                worst_election + renewal_retry_millis(lease) + lease / 8 <= least_lease,
                "lease {lease}"
            );
            // A primary stepping aside: the followers' campaign fits in its window, and the
            // window plus a renewal by the next coordinator in its lease.
            assert!(worst_election + lease / 20 <= step_aside_window_millis(lease));
            assert!(
                step_aside_window_millis(lease) + renewal_retry_millis(lease) + lease / 8
                    <= lease - quorum_confirm_interval_millis(lease),
                "lease {lease}"
            );
            // Followers hear several heartbeats per leader lease: one slow one is no election.
            assert!(t.heartbeat_millis * 3 <= e.leader_lease_millis);
            assert!(t.heartbeat_millis * 2 <= t.election_timeout_min_millis);
        }
    }
}
