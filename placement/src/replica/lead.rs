//! Who leads placement's raft group, and whether this replica may serve.
//!
//! Only a leader *holding a lease* serves (the oracle above all: a deposed
//! leader answering `alloc`, even `alloc(0)` for a read, after a newer leader
//! handed out revisions would make revisions go back).
//!
//! # The lease
//! Every tick the leader asks raft for a read index whose context is the time
//! it asked (`sent`). raft-rs answers it (a `ReadState`) once a quorum has
//! acknowledged a heartbeat carrying that context. Each of those followers
//! reset its election timer on receiving it, after `sent`; with `check_quorum`
//! a follower refuses to vote (or pre-vote) for anyone until `election_tick`
//! of its ticks passed since — at least `(election_tick - 1) × tick` of real
//! time, since ticks come from an interval timer that never runs ahead of
//! real time. Any new leader needs a vote from that quorum (quorums
//! intersect), so none can exist before `sent + (election_tick - 1) × tick`;
//! the lease ends [`LEASE_MARGIN`] earlier. The leader itself never votes
//! while it leads (raft-rs: a leader is always "in lease").
//!
//! Two ways around a follower's timer are closed as well:
//! - a follower that restarts forgets when it heard from the leader; it drops
//!   vote requests for an election timeout after it starts
//!   (`raft_loop.rs`), longer than any lease granted before it went down;
//! - a leader transfer makes the target campaign with votes forced past the
//!   timers — possibly late: a target paused with the `TimeoutNow` in its
//!   socket campaigns when it wakes up, after the transfer was given up. So a
//!   leader that starts a transfer never serves again in that term
//!   (`tainted_term`); if the transfer is given up it steps down
//!   (`raft_loop.rs`), and serving again takes an election in a new term,
//!   which a late forced campaign can no longer win over a lease.
//!
//! # A new leader's state
//! A leader serves only once it has applied an entry of its own term
//! (`ready_term == term`): every command committed by an earlier leader is
//! then applied here (raft's leader completeness), among them every oracle
//! window any earlier leader handed revisions out of — so the oracle restarts
//! at the committed high-water mark, above all of them (see `oracle.rs`).

use std::time::{Duration, Instant};

use tonic::Status;

/// One raft tick.
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks without hearing from a leader before a follower campaigns (and
/// during which it refuses to vote for another).
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;
/// Safety margin for the lease: scheduling delays, timer granularity and
/// clock-rate differences between processes.
pub const LEASE_MARGIN: Duration = Duration::from_millis(150);

/// How long after `sent` a lease acknowledged by a quorum lasts.
pub fn lease_length() -> Duration {
    TICK * (ELECTION_TICKS as u32 - 1) - LEASE_MARGIN
}

/// This replica's view of the group (written by the raft thread).
#[derive(Debug, Clone)]
pub struct Leadership {
    pub id: u64,
    pub term: u64,
    /// The leader this replica knows of (0: none).
    pub leader_id: u64,
    pub is_leader: bool,
    /// The term of the last entry of its own term this leader applied.
    pub ready_term: u64,
    pub lease_until: Option<Instant>,
    /// Acknowledgements of lease requests sent before this are ignored.
    pub no_lease_before: Instant,
    pub transferring: bool,
    /// A term in which this replica began a leader transfer: it never serves
    /// in it again.
    pub tainted_term: u64,
    /// This replica was removed from the group.
    pub removed: bool,
    pub commit: u64,
    pub applied: u64,
    /// Voting and learning members.
    pub voters: usize,
    pub learners: usize,
}

impl Leadership {
    pub fn new(id: u64, now: Instant) -> Self {
        Self {
            id,
            term: 0,
            leader_id: 0,
            is_leader: false,
            ready_term: 0,
            lease_until: None,
            no_lease_before: now,
            transferring: false,
            tainted_term: 0,
            removed: false,
            commit: 0,
            applied: 0,
            voters: 0,
            learners: 0,
        }
    }

    /// The term in which this replica may serve now, if it may.
    pub fn serving_term(&self, now: Instant) -> Option<u64> {
        let lease = self.lease_until.is_some_and(|t| now < t);
        (self.is_leader
            && !self.removed
            && !self.transferring
            && self.tainted_term != self.term
            && self.ready_term == self.term
            && lease)
            .then_some(self.term)
    }

    /// A quorum acknowledged a lease request sent at `sent` in `term`.
    pub fn renew(&mut self, term: u64, sent: Instant) {
        if !self.is_leader || term != self.term || self.transferring || sent < self.no_lease_before
        {
            return;
        }
        let until = sent + lease_length();
        if self.lease_until.is_none_or(|t| t < until) {
            self.lease_until = Some(until);
        }
    }

    /// Raft's role, term and leader after a step; losing the lead (or
    /// starting a transfer) drops the lease at once.
    pub fn observe(
        &mut self,
        is_leader: bool,
        term: u64,
        leader_id: u64,
        transferring: bool,
        now: Instant,
    ) {
        if !is_leader || term != self.term || (transferring && !self.transferring) {
            self.lease_until = None;
            self.no_lease_before = now;
        }
        self.is_leader = is_leader;
        self.term = term;
        self.leader_id = leader_id;
        self.transferring = transferring;
        if transferring {
            self.tainted_term = term;
        }
    }
}

/// Why a replica does not serve, as the error placement clients follow.
pub fn refusal(l: &Leadership, leader_addr: Option<&str>) -> Status {
    if l.removed {
        return Status::unavailable(format!(
            "strata: placement replica {} was removed from the group",
            l.id
        ))
        .tap_hint(leader_addr);
    }
    strata_proto::errors::placement_not_leader(l.id, leader_addr)
}

trait TapHint {
    fn tap_hint(self, leader: Option<&str>) -> Status;
}

impl TapHint for Status {
    /// Adds the leader hint, so clients still move on to the leader.
    fn tap_hint(mut self, leader: Option<&str>) -> Status {
        if let Ok(v) = leader.unwrap_or("").parse() {
            self.metadata_mut()
                .insert(strata_proto::errors::PLACEMENT_LEADER_HINT, v);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(now: Instant) -> Leadership {
        let mut l = Leadership::new(1, now);
        l.observe(true, 3, 1, false, now);
        l.ready_term = 3;
        l
    }

    #[test]
    fn a_leader_serves_only_within_its_lease() {
        let t0 = Instant::now();
        let mut l = leader(t0);
        assert_eq!(l.serving_term(t0), None, "no lease yet");
        let sent = t0 + Duration::from_millis(10);
        l.renew(3, sent);
        assert_eq!(l.serving_term(sent), Some(3));
        assert_eq!(l.serving_term(sent + lease_length()), None, "lease over");
        // An older acknowledgement never shortens the lease.
        l.renew(3, t0);
        assert_eq!(l.lease_until, Some(sent + lease_length()));
    }

    #[test]
    fn the_lease_is_shorter_than_a_follower_refuses_votes() {
        assert!(lease_length() + LEASE_MARGIN <= TICK * (ELECTION_TICKS as u32 - 1));
    }

    #[test]
    fn losing_the_lead_or_transferring_drops_the_lease() {
        let t0 = Instant::now();
        let mut l = leader(t0);
        l.renew(3, t0);
        l.observe(true, 3, 1, true, t0 + Duration::from_millis(1));
        assert_eq!(l.serving_term(t0 + Duration::from_millis(2)), None);
        // Acks of heartbeats sent before the transfer began do not count.
        l.observe(true, 3, 1, false, t0 + Duration::from_millis(3));
        l.renew(3, t0);
        assert_eq!(l.serving_term(t0 + Duration::from_millis(4)), None);
        let mut l = leader(t0);
        l.renew(3, t0);
        l.observe(false, 4, 2, false, t0);
        assert_eq!(l.serving_term(t0), None);
        l.renew(4, t0);
        assert_eq!(l.lease_until, None, "a follower holds no lease");
    }

    #[test]
    fn a_leader_that_began_a_transfer_never_serves_again_in_that_term() {
        let t0 = Instant::now();
        let mut l = leader(t0);
        l.observe(true, 3, 1, true, t0);
        // The transfer is given up; acknowledgements of later heartbeats come in.
        let later = t0 + Duration::from_millis(5);
        l.observe(true, 3, 1, false, later);
        l.renew(3, later);
        assert_eq!(l.serving_term(later), None, "term 3 is tainted");
        // Leading again after an election, in a new term: serves.
        l.observe(false, 4, 0, false, later);
        l.observe(true, 5, 1, false, later);
        l.ready_term = 5;
        l.renew(5, later);
        assert_eq!(l.serving_term(later), Some(5));
    }

    #[test]
    fn a_new_leader_serves_once_its_term_applied() {
        let t0 = Instant::now();
        let mut l = leader(t0);
        l.observe(true, 5, 1, false, t0);
        l.renew(5, t0);
        assert_eq!(l.serving_term(t0), None, "term 5 not applied yet");
        l.ready_term = 5;
        assert_eq!(l.serving_term(t0), Some(5));
    }
}
