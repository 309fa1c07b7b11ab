//! Which agent a group's state stream follows, as a pure state machine: the stream task tells
//! it what happened (a dial failed, a state arrived, a round of candidates ended) and the time,
//! and it answers whom to dial next and how long to wait first.
//!
//! The stream prefers the coordinator (only its own word carries a trustworthy lease): a member
//! that relays the coordinator's state names it, and the stream moves there. A coordinator that
//! could not be dialed (a restarted pod whose name does not resolve yet) is left alone for
//! `FOLLOW_RETRY`; the relayed state is used meanwhile instead of dialing it again at once, which
//! spun in a tight loop between relay and coordinator during failovers.
//!
//! An agent that went silent or could not be dialed is a *suspect* until it sends a state
//! again: later rounds dial it last. On a partitioned or frozen node nothing refuses a
//! connection, so every dial of it costs the whole `CONNECT_TIMEOUT` during which the stream
//! reads nothing — a failover's new state must not wait behind it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a coordinator the hub could not reach is left alone before it is tried again.
pub const FOLLOW_RETRY: Duration = Duration::from_millis(500);
/// Pause before the first retry of a round in which no agent answered; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What to do after a state arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep reading this stream.
    Stay,
    /// End this round and start the next one at the coordinator's address.
    Follow(String),
}

#[derive(Debug)]
pub struct Follower {
    /// The address the next round starts with (the coordinator a relay named).
    preferred: Option<String>,
    /// The address this round started with, if it was a preferred one.
    round_first: Option<String>,
    /// The coordinator last tried and not reached (or gone silent), and when.
    unreachable_leader: Option<(String, Instant)>,
    /// Addresses that went silent or could not be dialed, and have not sent a state since.
    suspects: BTreeSet<String>,
    answered: bool,
    backoff: Duration,
}

impl Default for Follower {
    fn default() -> Self {
        Follower {
            preferred: None,
            round_first: None,
            unreachable_leader: None,
            suspects: BTreeSet::new(),
            answered: false,
            backoff: MIN_BACKOFF,
        }
    }
}

impl Follower {
    /// Starts a round: the addresses to dial in order (the preferred one first, then the
    /// group's addresses in their order of preference, suspects last).
    pub fn start_round(&mut self, addresses: &[String]) -> Vec<String> {
        self.answered = false;
        self.round_first = self.preferred.take();
        let rest = addresses
            .iter()
            .filter(|a| self.round_first.as_ref() != Some(*a));
        let (suspects, trusted): (Vec<&String>, Vec<&String>) =
            rest.partition(|a| self.suspects.contains(*a));
        self.round_first
            .iter()
            .chain(trusted)
            .chain(suspects)
            .cloned()
            .collect()
    }

    /// Dialing `address` failed at `now`.
    pub fn dial_failed(&mut self, address: &str, now: Instant) {
        self.suspects.insert(address.to_owned());
        if self.round_first.as_deref() == Some(address) {
            self.unreachable_leader = Some((address.to_owned(), now));
        }
    }

    /// The stream from `address` failed, closed, or sent nothing for `silence` ([`went_silent`])
    /// and was given up at `now`: a relay naming it is not followed back to it for
    /// `FOLLOW_RETRY`.
    pub fn gave_up(&mut self, address: &str, now: Instant) {
        self.suspects.insert(address.to_owned());
        self.unreachable_leader = Some((address.to_owned(), now));
    }

    /// `address` sent a state at `now`, naming `leader` as the coordinator's address.
    pub fn state(
        &mut self,
        address: &str,
        leader: Option<&str>,
        from_coordinator: bool,
        now: Instant,
    ) -> Step {
        self.answered = true;
        self.backoff = MIN_BACKOFF;
        self.suspects.remove(address);
        let Some(leader) = leader.filter(|l| !l.is_empty() && *l != address) else {
            return Step::Stay;
        };
        if from_coordinator {
            return Step::Stay;
        }
        let recently_unreachable = self.unreachable_leader.as_ref().is_some_and(|(a, at)| {
            a == leader && now.saturating_duration_since(*at) < FOLLOW_RETRY
        });
        if recently_unreachable {
            return Step::Stay;
        }
        self.preferred = Some(leader.to_owned());
        Step::Follow(leader.to_owned())
    }

    /// Whether any agent answered in this round.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// The round ended. `None`: start the next one at once; `Some(d)`: no agent answered, wait
    /// `d` first (exponential, reset by the next answer).
    pub fn end_round(&mut self) -> Option<Duration> {
        if self.answered {
            return None;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Some(wait)
    }
}

/// How often the agent re-sends its state: every quarter lease keeps the operator's view of the
/// lease fresh.
pub fn heartbeat(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// A stream that sent nothing for this long is given up.
pub fn silence(heartbeat: Duration) -> Duration {
    heartbeat * 4
}

/// How long to wait for the next state, `since_last_state` after the stream's last state (or
/// its opening): until the stream counts as silent, or until the live lease in the latest state
/// runs out unrenewed (a reconcile must look then). Silence counts from the last state, not
/// from the last wait: a lease that already ran out is not waited for again (its reconcile
/// was triggered when it did), else a silent stream would wake every few ms and never be given
/// up — a partitioned coordinator held the operator's view of its group for ~10 s that way.
pub fn next_wait(
    heartbeat: Duration,
    since_last_state: Duration,
    lease_left: Option<Duration>,
) -> Duration {
    let silent_in = silence(heartbeat).saturating_sub(since_last_state);
    let wait = lease_left
        .filter(|l| !l.is_zero())
        .map_or(silent_in, |l| l.min(silent_in));
    wait + Duration::from_millis(5)
}

/// The wait of `next_wait` ran out: whether the stream went silent (give it up) rather than the
/// lease running out (keep the stream; only a reconcile is due).
pub fn went_silent(heartbeat: Duration, since_last_state: Duration) -> bool {
    since_last_state >= silence(heartbeat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses() -> Vec<String> {
        ["m-0", "m-1", "m-2"].map(String::from).to_vec()
    }

    #[test]
    fn the_first_round_dials_in_the_groups_order() {
        let mut f = Follower::default();
        assert_eq!(f.start_round(&addresses()), addresses());
    }

    #[test]
    fn a_relay_naming_the_coordinator_is_left_for_it() {
        let mut f = Follower::default();
        let now = Instant::now();
        f.start_round(&addresses());
        assert_eq!(
            f.state("m-0", Some("m-2"), false, now),
            Step::Follow("m-2".into())
        );
        assert_eq!(
            f.end_round(),
            None,
            "an answer means the next round starts at once"
        );
        assert_eq!(
            f.start_round(&addresses()),
            ["m-2", "m-0", "m-1"].map(String::from).to_vec()
        );
    }

    #[test]
    fn the_coordinators_own_state_is_followed() {
        let mut f = Follower::default();
        let now = Instant::now();
        f.start_round(&addresses());
        assert_eq!(f.state("m-1", Some("m-1"), true, now), Step::Stay);
        // A coordinator that names another one (it just lost leadership) is still first-hand.
        assert_eq!(f.state("m-1", Some("m-2"), true, now), Step::Stay);
        // No coordinator known, or an empty address: nothing to follow.
        assert_eq!(f.state("m-0", None, false, now), Step::Stay);
        assert_eq!(f.state("m-0", Some(""), false, now), Step::Stay);
    }

    #[test]
    fn an_unreachable_coordinator_is_not_dialed_again_at_once() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        f.start_round(&addresses());
        assert_eq!(
            f.state("m-0", Some("m-2"), false, t0),
            Step::Follow("m-2".into())
        );
        f.end_round();
        f.start_round(&addresses());
        f.dial_failed("m-2", t0);
        // The relay names it again within FOLLOW_RETRY: the relayed state is used, no spin.
        assert_eq!(
            f.state("m-0", Some("m-2"), false, t0 + Duration::from_millis(10)),
            Step::Stay
        );
        assert_eq!(
            f.state(
                "m-0",
                Some("m-2"),
                false,
                t0 + FOLLOW_RETRY - Duration::from_millis(1)
            ),
            Step::Stay
        );
        // A different coordinator is followed at once.
        assert_eq!(
            f.state("m-0", Some("m-1"), false, t0 + Duration::from_millis(20)),
            Step::Follow("m-1".into())
        );
        // After FOLLOW_RETRY the first one is tried again.
        assert_eq!(
            f.state("m-0", Some("m-2"), false, t0 + FOLLOW_RETRY),
            Step::Follow("m-2".into())
        );
    }

    #[test]
    fn only_the_preferred_address_counts_as_an_unreachable_coordinator() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        f.start_round(&addresses());
        f.dial_failed("m-2", t0);
        assert_eq!(
            f.state("m-0", Some("m-2"), false, t0),
            Step::Follow("m-2".into())
        );
    }

    #[test]
    fn rounds_without_an_answer_back_off_exponentially_until_an_answer() {
        let mut f = Follower::default();
        let waits: Vec<_> = (0..7)
            .map(|_| {
                f.start_round(&addresses());
                f.end_round().unwrap()
            })
            .collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        f.start_round(&addresses());
        f.state("m-0", None, true, Instant::now());
        assert_eq!(f.end_round(), None);
        f.start_round(&addresses());
        assert_eq!(
            f.end_round(),
            Some(MIN_BACKOFF),
            "an answer resets the backoff"
        );
    }

    #[test]
    fn waits_follow_the_heartbeat_and_the_lease() {
        assert_eq!(
            heartbeat(Duration::from_millis(2000)),
            Duration::from_millis(500)
        );
        assert_eq!(
            heartbeat(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
        assert_eq!(heartbeat(Duration::from_secs(60)), Duration::from_secs(1));
        let hb = Duration::from_millis(500);
        let ms = Duration::from_millis;
        assert_eq!(next_wait(hb, ms(0), None), ms(2005));
        assert_eq!(next_wait(hb, ms(0), Some(ms(300))), ms(305));
        assert_eq!(next_wait(hb, ms(0), Some(ms(10_000))), ms(2005));
        // Silence counts from the last state.
        assert_eq!(next_wait(hb, ms(1500), None), ms(505));
        assert_eq!(next_wait(hb, ms(1500), Some(ms(300))), ms(305));
        // The lease running out first is not silence; the full wait without a state is.
        assert!(!went_silent(hb, ms(305)));
        assert!(went_silent(hb, ms(2005)));
    }

    #[test]
    fn a_silent_stream_whose_lease_ran_out_is_given_up_on_time() {
        // Partitioned coordinator: its last state had 300 ms of lease left. The stream wakes
        // once when the lease runs out, then at the silence deadline — never in a spin.
        let hb = Duration::from_millis(250);
        let silence = silence(hb);
        let lease = Duration::from_millis(300);
        let mut since = Duration::ZERO;
        let mut wakes = 0;
        while !went_silent(hb, since) {
            let lease_left = Some(lease.saturating_sub(since));
            since += next_wait(hb, since, lease_left);
            wakes += 1;
            assert!(wakes <= 2, "woke {wakes} times within {since:?}");
        }
        assert!(since <= silence + Duration::from_millis(10), "{since:?}");
    }

    #[test]
    fn agents_that_went_silent_or_failed_to_dial_are_dialed_last_until_they_answer() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        assert_eq!(f.start_round(&addresses()), addresses());
        f.gave_up("m-0", t0);
        // A relay naming the silent coordinator right away is not followed back to it.
        assert_eq!(f.state("m-1", Some("m-0"), false, t0), Step::Stay);
        assert_eq!(f.end_round(), None);
        assert_eq!(
            f.start_round(&addresses()),
            ["m-1", "m-2", "m-0"].map(String::from).to_vec()
        );
        f.dial_failed("m-1", t0);
        assert_eq!(
            f.start_round(&addresses()),
            ["m-2", "m-0", "m-1"].map(String::from).to_vec()
        );
        // An answer clears the suspicion.
        f.state("m-0", None, true, t0);
        assert_eq!(
            f.start_round(&addresses()),
            ["m-0", "m-2", "m-1"].map(String::from).to_vec()
        );
    }
}
