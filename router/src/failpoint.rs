//! Test-only fault points of the router, through the `fail` crate (feature
//! `failpoints`; without it every point compiles to nothing). Configured at
//! runtime through `STRATA_FAILPOINTS_FILE` (see `src/component.rs`), or with
//! `fail::cfg` in a test.
//!
//! Planted bugs (to prove checkers catch them; never on unless configured):
//! - `plant_drop_watch_event`: the watch path silently drops an event it
//!   would deliver; evaluated per event (`10%return` drops about one in ten).

/// Is `name` on (configured, and its action `return` this time)? Always
/// false without the `failpoints` feature.
#[inline]
pub fn on(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}
