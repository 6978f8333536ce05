//! Test-only fault points of the router, through the `fail` crate (feature
//! `failpoints`; without it every point compiles to nothing). Configured at
//! runtime through `STRATA_FAILPOINTS_FILE` (see `src/component.rs`), or with
//! `fail::cfg` in a test.
//!
//! Planted bugs (to prove checkers catch them; never on unless configured):
//! - `plant_drop_watch_event`: the watch path silently drops an event it
//!   would deliver; evaluated per event (`10%return` drops about one in ten).

pub use strata_proto::failpoint::on;
