//! Test-only pauses at chosen points of the node, through the `fail` crate.
//!
//! A point is named `<name>.<node id>`, so a test running a whole cluster in
//! one process can slow down one node; its action is `return(MS)` (pause
//! that many milliseconds), e.g. `fail::cfg("sequencer_stamped.2",
//! "1*return(1500)")`. Without the `failpoints` feature every point compiles
//! to nothing.

#[cfg(feature = "failpoints")]
fn pause_ms(node_id: u64, name: &str) -> Option<u64> {
    fail::eval(&format!("{name}.{node_id}"), |arg| {
        arg.and_then(|a| a.trim().parse::<u64>().ok())
    })
    .flatten()
}

/// Pauses the calling task when the point is configured.
#[inline]
pub async fn pause(node_id: u64, name: &str) {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = pause_ms(node_id, name) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let _ = (node_id, name);
}

/// Pauses the calling thread (the raft thread, a blocking read) when the
/// point is configured.
#[inline]
pub fn pause_blocking(node_id: u64, name: &str) {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = pause_ms(node_id, name) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let _ = (node_id, name);
}
