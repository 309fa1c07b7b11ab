//! The primary's side of the lease (pure).
//!
//! A member acts as primary only while it holds a lease it was granted by the coordinator. The
//! lease is counted from the moment the member *sent* the report that the grant answers, on the
//! member's own monotonic clock, so network and scheduling delays only ever shorten it. When the
//! lease runs out the member demotes itself; nothing else has to reach it.

use serde::{Deserialize, Serialize};

/// A grant as received: the lease for `epoch` lasts `remaining_millis` from the report's send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub epoch: u64,
    pub remaining_millis: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DemotionCause {
    /// No renewal arrived in time.
    Expired,
    /// The member gave the lease back.
    Released,
    /// The committed state names a newer epoch.
    Superseded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseTransition {
    Promoted {
        epoch: u64,
        lease_until: u64,
    },
    Renewed {
        epoch: u64,
        lease_until: u64,
    },
    Demoted {
        epoch: u64,
        cause: DemotionCause,
        /// The end of the lease the member held; it acted as primary no later than this.
        lease_until: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    epoch: u64,
    until: u64,
}

#[derive(Clone, Debug, Default)]
pub struct LeaseHolder {
    held: Option<Held>,
    /// Grants for epochs at or below this are ignored: the member gave them back.
    released_epoch: u64,
    /// Grants for older epochs than this are ignored.
    highest_epoch_seen: u64,
}

impl LeaseHolder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The epoch of the lease held right now, if it is live at `now`.
    pub fn live_epoch(&self, now: u64) -> Option<u64> {
        self.held.filter(|h| now < h.until).map(|h| h.epoch)
    }

    pub fn is_live(&self, now: u64) -> bool {
        self.live_epoch(now).is_some()
    }

    /// The epoch of the lease held, live or run out but not yet ticked away.
    pub fn held_epoch(&self) -> Option<u64> {
        self.held.map(|h| h.epoch)
    }

    /// When the held lease runs out (for scheduling the demotion timer).
    pub fn lease_until(&self) -> Option<u64> {
        self.held.map(|h| h.until)
    }

    /// Millis left on the lease at `now` (0 when none).
    pub fn remaining(&self, now: u64) -> u64 {
        self.held.map_or(0, |h| h.until.saturating_sub(now))
    }

    pub fn released_epoch(&self) -> u64 {
        self.released_epoch
    }

    /// A grant answering a report sent at `sent_at`, processed at `now`.
    pub fn on_grant(&mut self, sent_at: u64, grant: Grant, now: u64) -> Option<LeaseTransition> {
        if grant.epoch == 0
            || grant.epoch <= self.released_epoch
            || grant.epoch < self.highest_epoch_seen
        {
            return None;
        }
        self.highest_epoch_seen = grant.epoch;
        let until = sent_at.saturating_add(grant.remaining_millis);
        match self.held {
            // Renewal of the live lease: only ever extends.
            Some(h) if h.epoch == grant.epoch && now < h.until => {
                if until <= h.until {
                    return None;
                }
                self.held = Some(Held {
                    epoch: h.epoch,
                    until,
                });
                Some(LeaseTransition::Renewed {
                    epoch: h.epoch,
                    lease_until: until,
                })
            }
            // A lease we still hold but that is over (expired, or an older epoch): end it first.
            // The caller acts on the demotion; the grant, if still live, takes effect on the
            // next renewal a quarter lease later.
            Some(h) if now >= h.until || h.epoch < grant.epoch => {
                let cause = if now >= h.until {
                    DemotionCause::Expired
                } else {
                    DemotionCause::Superseded
                };
                self.demote(now, cause)
            }
            Some(_) => None,
            None if until > now => {
                self.held = Some(Held {
                    epoch: grant.epoch,
                    until,
                });
                Some(LeaseTransition::Promoted {
                    epoch: grant.epoch,
                    lease_until: until,
                })
            }
            None => None,
        }
    }

    /// The committed state says `epoch` is current and names `primary_is_me`.
    pub fn observe_committed(
        &mut self,
        epoch: u64,
        primary_is_me: bool,
        now: u64,
    ) -> Option<LeaseTransition> {
        if epoch > self.highest_epoch_seen {
            self.highest_epoch_seen = epoch;
        }
        match self.held {
            Some(h) if h.epoch < epoch || (h.epoch == epoch && !primary_is_me) => {
                self.demote(now, DemotionCause::Superseded)
            }
            _ => None,
        }
    }

    /// Demotes when the lease ran out by `now`.
    pub fn tick(&mut self, now: u64) -> Option<LeaseTransition> {
        match self.held {
            Some(h) if now >= h.until => self.demote(now, DemotionCause::Expired),
            _ => None,
        }
    }

    /// Gives the lease of `epoch` back: demote now and refuse further grants for it.
    pub fn release(&mut self, epoch: u64, now: u64) -> Option<LeaseTransition> {
        if epoch > self.released_epoch {
            self.released_epoch = epoch;
        }
        match self.held {
            Some(h) if h.epoch <= epoch => self.demote(now, DemotionCause::Released),
            _ => None,
        }
    }

    fn demote(&mut self, now: u64, cause: DemotionCause) -> Option<LeaseTransition> {
        let h = self.held.take()?;
        // An expired lease ended at its deadline; one cut short ends now.
        let lease_until = if cause == DemotionCause::Expired {
            h.until
        } else {
            h.until.min(now)
        };
        Some(LeaseTransition::Demoted {
            epoch: h.epoch,
            cause,
            lease_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grant(epoch: u64, remaining_millis: u64) -> Grant {
        Grant {
            epoch,
            remaining_millis,
        }
    }

    #[test]
    fn grant_promotes_and_expiry_demotes() {
        let mut h = LeaseHolder::new();
        assert_eq!(
            h.on_grant(100, grant(1, 900), 105),
            Some(LeaseTransition::Promoted {
                epoch: 1,
                lease_until: 1000
            })
        );
        assert!(h.is_live(999));
        assert!(!h.is_live(1000));
        assert_eq!(h.tick(999), None);
        assert_eq!(
            h.tick(1000),
            Some(LeaseTransition::Demoted {
                epoch: 1,
                cause: DemotionCause::Expired,
                lease_until: 1000
            })
        );
        assert!(!h.is_live(1000));
    }

    #[test]
    fn lease_counts_from_send_time_not_receipt() {
        let mut h = LeaseHolder::new();
        // Reply took 800 ms to arrive: only 100 ms of lease left.
        h.on_grant(0, grant(1, 900), 800);
        assert_eq!(h.remaining(800), 100);
        // A grant that arrives after its lease ended promotes nobody.
        let mut h = LeaseHolder::new();
        assert_eq!(h.on_grant(0, grant(1, 500), 600), None);
        assert!(!h.is_live(600));
    }

    #[test]
    fn renewal_extends_only_forward() {
        let mut h = LeaseHolder::new();
        h.on_grant(0, grant(1, 1000), 1);
        assert_eq!(
            h.on_grant(250, grant(1, 900), 251),
            Some(LeaseTransition::Renewed {
                epoch: 1,
                lease_until: 1150
            })
        );
        // A delayed, older grant never shortens or re-extends.
        assert_eq!(h.on_grant(100, grant(1, 900), 300), None);
        assert_eq!(h.lease_until(), Some(1150));
    }

    #[test]
    fn released_epoch_refuses_late_grants() {
        let mut h = LeaseHolder::new();
        h.on_grant(0, grant(3, 1000), 1);
        assert!(matches!(
            h.release(3, 10),
            Some(LeaseTransition::Demoted {
                cause: DemotionCause::Released,
                lease_until: 10,
                ..
            })
        ));
        assert_eq!(h.on_grant(5, grant(3, 1000), 20), None);
        assert!(!h.is_live(20));
        // A later appointment (new epoch) is a new lease.
        assert!(matches!(
            h.on_grant(30, grant(4, 1000), 31),
            Some(LeaseTransition::Promoted { epoch: 4, .. })
        ));
    }

    #[test]
    fn newer_committed_epoch_supersedes() {
        let mut h = LeaseHolder::new();
        h.on_grant(0, grant(2, 1000), 1);
        assert_eq!(h.observe_committed(2, true, 5), None);
        assert!(matches!(
            h.observe_committed(3, false, 6),
            Some(LeaseTransition::Demoted {
                cause: DemotionCause::Superseded,
                ..
            })
        ));
        // Grants for the old epoch are ignored afterwards.
        assert_eq!(h.on_grant(10, grant(2, 1000), 11), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Grant {
            delay: u64,
            epoch: u64,
            remaining: u64,
        },
        Advance(u64),
        Release(u64),
        Observe(u64, bool),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..500, 1u64..6, 0u64..1500).prop_map(|(delay, epoch, remaining)| Op::Grant {
                delay,
                epoch,
                remaining
            }),
            (0u64..700).prop_map(Op::Advance),
            (1u64..6).prop_map(Op::Release),
            (1u64..6, any::<bool>()).prop_map(|(e, me)| Op::Observe(e, me)),
        ]
    }

    proptest! {
        /// The lease is never live beyond `send time + granted length` of some grant, and a
        /// released epoch never becomes live again.
        #[test]
        fn lease_never_outlives_its_grants(ops in proptest::collection::vec(arb_op(), 1..80)) {
            let mut h = LeaseHolder::new();
            let mut now = 1_000u64;
            let mut latest_allowed_end = 0u64;
            let mut released = 0u64;
            for op in ops {
                match op {
                    Op::Grant { delay, epoch, remaining } => {
                        let sent = now.saturating_sub(delay);
                        if epoch > released {
                            latest_allowed_end = latest_allowed_end.max(sent + remaining);
                        }
                        h.on_grant(sent, grant(epoch, remaining), now);
                    }
                    Op::Advance(d) => { now += d; h.tick(now); }
                    Op::Release(e) => { released = released.max(e); h.release(e, now); }
                    Op::Observe(e, me) => { h.observe_committed(e, me, now); }
                }
                if let Some(epoch) = h.live_epoch(now) {
                    prop_assert!(now < latest_allowed_end);
                    prop_assert!(epoch > released);
                }
            }
        }
    }
}
