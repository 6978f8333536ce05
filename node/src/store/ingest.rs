//! Applying an `IngestRequest`: a restored snapshot's versions written into a
//! range as they are (keys, values, create and mod revisions, versions,
//! leases), unstamped. Only `strata dev` sends these, while it loads a
//! snapshot into a new cluster before serving (router/src/snapshot.rs).
//!
//! **Why revision order still holds.** Every version carries a revision at or
//! below the snapshot's `R`; the command applies only while the range's
//! revision is at most `R`, and leaves it at `R`. The loader raised the oracle
//! past `R` first, so every later stamped write in the range is above `R`:
//! stamped writes still apply in strictly increasing revision order. The
//! loader compacts at `R` once every version is in, so no read ever sees
//! history below `R` (which the snapshot does not hold).

use prost::Message as _;
use strata_proto::etcd::PbKeyValue;
use strata_proto::strata::{IngestRequest, MvccValue};
use tonic::Status;

use super::replica::RangeShared;
use super::{desc_range, Store};
use crate::error::NodeError;
use crate::mvcc::KeyRange;
use crate::storage::WriteBatch;

use super::exec::Applied;

/// The most versions one IngestRequest carries.
pub const MAX_INGEST_KVS: usize = 100_000;

/// Decodes and checks an IngestRequest from the network (every check that
/// does not depend on the range's state): a revision, at most
/// [`MAX_INGEST_KVS`] versions, each with a key and revisions in order
/// (`1 ≤ create ≤ mod ≤ revision`, `version ≥ 1`).
pub fn check_ingest(body: &[u8]) -> Result<(IngestRequest, Vec<PbKeyValue>), String> {
    let req = IngestRequest::decode(body).map_err(|e| format!("bad ingest request: {e}"))?;
    if req.revision <= 0 {
        return Err("an ingest needs the snapshot's revision".into());
    }
    if req.kvs.len() > MAX_INGEST_KVS {
        return Err(format!(
            "an ingest carries at most {MAX_INGEST_KVS} versions"
        ));
    }
    let mut kvs = Vec::with_capacity(req.kvs.len());
    for b in &req.kvs {
        let kv = PbKeyValue::decode(&b[..]).map_err(|e| format!("bad ingested version: {e}"))?;
        if kv.key.is_empty()
            || kv.create_revision < 1
            || kv.create_revision > kv.mod_revision
            || kv.mod_revision > req.revision
            || kv.version < 1
        {
            return Err(format!(
                "ingested version of {:?} out of order (create {}, mod {}, version {}, \
                 snapshot revision {})",
                String::from_utf8_lossy(&kv.key),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                req.revision
            ));
        }
        kvs.push(kv);
    }
    Ok((req, kvs))
}

/// The key ranges an IngestRequest writes (for `keys_within`).
pub fn ingest_keys(body: &[u8]) -> Result<Vec<KeyRange>, prost::DecodeError> {
    let req = IngestRequest::decode(body)?;
    let mut out = Vec::with_capacity(req.kvs.len());
    for b in &req.kvs {
        let kv = PbKeyValue::decode(&b[..])?;
        out.push(KeyRange::from_etcd(&kv.key, &[]));
    }
    Ok(out)
}

impl Store {
    /// Stages the versions of an IngestRequest; `prev` is the range's
    /// revision before it.
    pub(super) fn exec_ingest(
        &mut self,
        shared: &RangeShared,
        request: &[u8],
        prev: i64,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Applied> {
        let (req, kvs) = match check_ingest(request) {
            Ok(x) => x,
            Err(e) => return Ok(Applied::invalid(e)),
        };
        if prev > req.revision {
            return Ok(Applied::answer(Err(Status::failed_precondition(format!(
                "strata: cannot restore a snapshot at revision {} into a range already at \
                 revision {prev}",
                req.revision
            ))
            .into())));
        }
        let kr = desc_range(&shared.desc.read());
        // A split may have applied since the request was checked.
        if !kvs.iter().all(|kv| kr.contains(&kv.key)) {
            return Ok(Applied::answer(Err(NodeError::EpochNotMatch)));
        }
        let mut added = crate::apply::Growth::default();
        for kv in kvs {
            let value = MvccValue {
                value: kv.value,
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                tombstone: false,
                // A snapshot keeps no op order (the restore compacts at its
                // revision, so no history below it is replayed).
                op: 0,
            };
            added.keys += 1;
            added.bytes += self
                .mvcc
                .stage_version(wb, &kv.key, kv.mod_revision, &value);
        }
        let mut out = Applied::answer(Ok(Vec::new()));
        out.growth = added;
        // Staged as the range's current revision with the apply batch
        // (`exec.rs`, `flush_applied`).
        out.applied_rev = Some(req.revision);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: i64, modr: i64, version: i64) -> Vec<u8> {
        PbKeyValue {
            key: key.into(),
            create_revision: create,
            mod_revision: modr,
            version,
            value: b"v".to_vec(),
            lease: 0,
        }
        .encode_to_vec()
    }

    fn req(revision: i64, kvs: Vec<Vec<u8>>) -> Vec<u8> {
        IngestRequest { revision, kvs }.encode_to_vec()
    }

    #[test]
    fn checks_revisions_and_keys() {
        let (r, kvs) = check_ingest(&req(10, vec![kv("a", 1, 4, 2), kv("b", 10, 10, 1)])).unwrap();
        assert_eq!((r.revision, kvs.len()), (10, 2));
        for bad in [
            req(0, vec![]),
            req(10, vec![kv("", 1, 1, 1)]),
            req(10, vec![kv("a", 0, 1, 1)]),
            req(10, vec![kv("a", 5, 4, 1)]),
            req(10, vec![kv("a", 1, 11, 1)]),
            req(10, vec![kv("a", 1, 2, 0)]),
            req(10, vec![vec![0xff, 0xff]]),
            vec![0xff],
        ] {
            assert!(check_ingest(&bad).is_err(), "{bad:?} accepted");
        }
        let keys = ingest_keys(&req(10, vec![kv("a", 1, 1, 1)])).unwrap();
        assert!(keys[0].contains(b"a") && !keys[0].contains(b"b"));
    }
}
