//! Test-only fault points shared by every component, through the `fail`
//! crate (feature `failpoints`; without it every point compiles to nothing).
//! Configured at runtime through `STRATA_FAILPOINTS_FILE` (see the root
//! package's `src/component.rs`), or with `fail::cfg` in a test.

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
