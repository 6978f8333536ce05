//! Test-only fault points of placement, through the `fail` crate (feature
//! `failpoints`; without it every point compiles to nothing). Configured at
//! runtime through `STRATA_FAILPOINTS_FILE` (see `src/component.rs`), or with
//! `fail::cfg` in a test.
//!
//! Planted bugs (to prove checkers catch them; never on unless configured):
//! - `plant_reuse_revision`: an oracle allocation of n > 0 revisions hands
//!   out the previous allocation's start again (revisions reused).

//!
//! Faults:
//! - `placement_partition`: this replica's raft messages to and from its
//!   peers are dropped (clients still reach it): a leader cut off from its
//!   group, which must stop serving once its lease ends.

pub use strata_proto::failpoint::on;
