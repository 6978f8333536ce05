//! `Admin` SPLIT: the range leader splits its range now, at the key asked
//! for or at its median key, through the split checker's machinery
//! (`split_check::propose_split`; applied in `store/split.rs`).

use std::sync::Arc;

use tonic::Status;

use super::NodeService;
use crate::error::NodeResult;
use crate::range::{desc_range, RangeShared};

/// Live keys the median is taken over (the median of the first this many
/// is still a key inside the range).
const MEDIAN_SCAN_KEYS: u64 = 1_000_000;

impl NodeService {
    /// Splits `r` (led here) at `split_key`, or at its median key when empty.
    pub(super) async fn admin_split(
        &self,
        r: &Arc<RangeShared>,
        split_key: Vec<u8>,
    ) -> NodeResult<()> {
        let (id, kr, learner) = {
            let d = r.desc.read();
            (d.id, desc_range(&d), d.peers.iter().any(|p| p.learner))
        };
        if learner {
            return Err(Status::failed_precondition(format!(
                "strata: range {id} has a learner (membership change in progress); split later"
            ))
            .into());
        }
        let key = if split_key.is_empty() {
            let mvcc = self.mvcc.clone();
            let kr = kr.clone();
            let median =
                tokio::task::spawn_blocking(move || mvcc.median_key(&kr, MEDIAN_SCAN_KEYS))
                    .await
                    .map_err(|e| Status::internal(format!("strata: split scan failed: {e}")))?
                    .map_err(|e| Status::internal(format!("strata: split scan failed: {e:#}")))?;
            median.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "strata: range {id} is too small to split (fewer than 2 live keys)"
                ))
            })?
        } else {
            let inside = split_key > kr.start && kr.end.as_ref().is_none_or(|e| split_key < *e);
            if !inside {
                return Err(Status::invalid_argument(format!(
                    "strata: split key {:?} is not strictly inside range {id}",
                    String::from_utf8_lossy(&split_key)
                ))
                .into());
            }
            split_key
        };
        tracing::info!(range = id, split_key = ?String::from_utf8_lossy(&key), "admin split");
        crate::split_check::propose_split(&self.placement, &self.sequencers, r, key).await
    }
}
