//! Test-only fault points of placement, through the `fail` crate (feature
//! `failpoints`; without it every point compiles to nothing). Configured at
//! runtime through `STRATA_FAILPOINTS_FILE` (see `src/component.rs`), or with
//! `fail::cfg` in a test.
//!
//! Planted bugs (to prove checkers catch them; never on unless configured):
//! - `plant_reuse_revision`: an oracle allocation of n > 0 revisions hands
//!   out the previous allocation's start again (revisions reused).

pub use strata_proto::failpoint::on;
