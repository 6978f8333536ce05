//! Loading a restored snapshot into the new cluster, on the first start of
//! `strata dev --data-dir DIR` after `strata ctl snapshot restore FILE
//! --data-dir DIR` (`src/ctl/snapshot.rs`). Runs once the cluster serves and
//! before `ready` is printed:
//!
//! 1. the oracle is raised past the snapshot's revision `R` (allocations of
//!    at most 2^20 revisions, about R / 2^20 calls), so every write of the
//!    new cluster comes after the snapshot;
//! 2. every key is written as it is (value, create and mod revision,
//!    version, lease) into the range holding it: node `KV_INGEST` batches of
//!    at most [`BATCH_BYTES`] (or one key) and [`BATCH_KEYS`], cut at range ends and sent
//!    again to the new ranges after a split (an ingest is idempotent);
//! 3. the leases are granted with their ids and TTLs; a lease a key names
//!    that the snapshot does not list (revoked after `R` in the source) is
//!    granted with [`REVOKED_LEASE_TTL`], so its keys go soon, as there;
//! 4. the cluster is compacted at `R`: the file holds no history below it.
//!
//! `restore.json`'s state goes `pending` → `loading` → `done`. A start that
//! finds `loading` (an earlier start stopped mid-load) refuses to go on: the
//! ranges may have moved past `R`; restore into a new directory.

use std::collections::HashSet;
use std::io::BufReader;

use strata_proto::etcd::PbKeyValue;
use strata_proto::etcdutil::KeyRange;
use strata_proto::strata::{AllocRequest, IngestRequest, KvKind, LeaseGrantRequest};
use strata_proto::Message as _;
use strata_router::routing::{is_stale, Retry, Router};
use strata_router::snapshot::format::{Reader, Record};

use super::*;
use crate::ctl::snapshot::{read_json, write_json, RESTORE_DIR, SNAPSHOT_FILE};

/// One ingest request's keys and values, about.
const BATCH_BYTES: usize = 1024 * 1024;
const BATCH_KEYS: usize = 10_000;
/// The TTL of a lease keys name but the snapshot does not list.
const REVOKED_LEASE_TTL: i64 = 5;
/// Distinct leases named by keys, at most.
const MAX_KEY_LEASES: usize = 1 << 20;
/// Attempts of one batch that keep finding its range split.
const MAX_STALE_ATTEMPTS: usize = 1000;

/// Loads the snapshot DATA_DIR holds, if one is pending; answers what was
/// loaded.
pub(super) async fn load_pending(data_dir: &Path, plan: &Plan) -> anyhow::Result<Option<String>> {
    let Some(mut json) = read_json(data_dir)? else {
        return Ok(None);
    };
    let dir = data_dir.join(RESTORE_DIR);
    match json.state.as_str() {
        "done" => return Ok(None),
        "pending" => {}
        "loading" => bail!(
            "an earlier start stopped while loading the snapshot restored into {}; the \
             cluster may hold part of it: restore into a new data dir",
            data_dir.display()
        ),
        other => bail!(
            "{}/restore.json has an unknown state {other:?}",
            dir.display()
        ),
    }
    json.state = "loading".into();
    write_json(&dir, &json)?;
    let (keys, leases) = load(&dir.join(SNAPSHOT_FILE), plan).await?;
    json.state = "done".into();
    write_json(&dir, &json)?;
    Ok(Some(format!(
        "loaded the snapshot at revision {} ({keys} keys, {leases} leases; compacted at {})",
        json.revision, json.revision
    )))
}

async fn load(file: &Path, plan: &Plan) -> anyhow::Result<(u64, u64)> {
    if let Some(t) = &plan.tls {
        strata_proto::tls::set_internal(&strata_proto::tls::PeerFlags {
            peer_cert_file: Some(PathBuf::from(&t.peer_cert)),
            peer_key_file: Some(PathBuf::from(&t.peer_key)),
            peer_trusted_ca_file: Some(PathBuf::from(&t.ca)),
        })
        .map_err(anyhow::Error::msg)?;
    }
    let placement_addrs: Vec<&str> = plan
        .components
        .iter()
        .filter(|c| c.role == "placement")
        .map(|c| c.addr.as_str())
        .collect();
    let placement = strata_proto::oracle::placement_client(&placement_addrs.join(","))
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let open = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut reader = Reader::open(BufReader::new(open))?;
    let revision = reader.header.revision;
    raise_oracle(&placement, revision).await?;

    let router = Router::new(placement.clone(), Duration::from_secs(30));
    router
        .refresh()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let mut listed = Vec::new();
    let mut named: HashSet<i64> = HashSet::new();
    let mut batch: Vec<PbKeyValue> = Vec::new();
    let mut batch_bytes = 0usize;
    while let Some(rec) = reader.next_record()? {
        match rec {
            Record::Lease(l) => listed.push(l),
            Record::Kv(kv) => {
                if kv.lease != 0 && named.insert(kv.lease) && named.len() > MAX_KEY_LEASES {
                    bail!("the snapshot's keys name more than {MAX_KEY_LEASES} leases");
                }
                // A batch is at most BATCH_BYTES, or one key alone.
                let size = kv.key.len() + kv.value.len();
                if !batch.is_empty()
                    && (batch_bytes + size > BATCH_BYTES || batch.len() >= BATCH_KEYS)
                {
                    ingest(&router, revision, &batch).await?;
                    batch.clear();
                    batch_bytes = 0;
                }
                batch_bytes += size;
                batch.push(kv);
            }
        }
    }
    ingest(&router, revision, &batch).await?;
    let (keys, _) = reader.counts();

    let mut p = placement.clone();
    for l in &listed {
        named.remove(&l.id);
        p.lease_grant(LeaseGrantRequest {
            id: l.id,
            ttl: l.ttl,
        })
        .await
        .map_err(|e| anyhow::anyhow!("granting lease {:x}: {}", l.id, e.message()))?;
    }
    for id in named {
        p.lease_grant(LeaseGrantRequest {
            id,
            ttl: REVOKED_LEASE_TTL,
        })
        .await
        .map_err(|e| anyhow::anyhow!("granting lease {id:x}: {}", e.message()))?;
    }
    if revision > 0 {
        compact(plan, revision).await?;
    }
    Ok((keys, listed.len() as u64))
}

/// Allocates revisions until the next one is above `revision`.
async fn raise_oracle(
    placement: &strata_proto::oracle::PlacementConn,
    revision: i64,
) -> anyhow::Result<()> {
    let mut p = placement.clone();
    let max = strata_proto::oracle::MAX_ALLOC_COUNT as i64;
    // Each round allocates min(gap, 2^20), so this many rounds suffice.
    let rounds = revision / max + 3;
    for _ in 0..rounds {
        let next = p
            .alloc(AllocRequest { count: 0 })
            .await
            .map_err(|e| anyhow::anyhow!("asking the oracle: {}", e.message()))?
            .into_inner()
            .start;
        if next > revision {
            return Ok(());
        }
        let count = (revision - next + 1).min(max);
        p.alloc(AllocRequest {
            count: count as u64,
        })
        .await
        .map_err(|e| anyhow::anyhow!("raising the oracle: {}", e.message()))?;
    }
    bail!("the oracle did not pass revision {revision}")
}

/// Writes `kvs` (in key order) into the ranges holding them.
async fn ingest(router: &Router, revision: i64, kvs: &[PbKeyValue]) -> anyhow::Result<()> {
    let mut rest = kvs;
    let mut stale = 0usize;
    while let Some(first) = rest.first() {
        let range = router
            .single_range(&KeyRange::from_etcd(&first.key, &[]), "an ingest")
            .await
            .map_err(|e| anyhow::anyhow!("finding the range of a key: {}", e.message()))?;
        let kr = range.key_range();
        let n = rest.iter().take_while(|kv| kr.contains(&kv.key)).count();
        let req = IngestRequest {
            revision,
            kvs: rest[..n].iter().map(|kv| kv.encode_to_vec()).collect(),
        };
        match router
            .call(
                &range,
                KvKind::KvIngest,
                req.encode_to_vec(),
                0,
                Retry::Read,
            )
            .await
        {
            Err(s) if is_stale(&s) && stale < MAX_STALE_ATTEMPTS => {
                stale += 1;
                let _ = router.refresh().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => bail!("writing keys into range {}: {}", range.desc.id, s.message()),
            Ok(_) => rest = &rest[n..],
        }
    }
    Ok(())
}

/// Compacts the new cluster at `revision` through its first router.
async fn compact(plan: &Plan, revision: i64) -> anyhow::Result<()> {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    let scheme = match &plan.tls {
        Some(t) => {
            opts = opts.with_tls(t.etcd_client_tls()?);
            "https"
        }
        None => "http",
    };
    let url = format!("{scheme}://{}", plan.client_endpoints[0]);
    let mut c = etcd_client::Client::connect([url.as_str()], Some(opts)).await?;
    c.compact(revision, None)
        .await
        .with_context(|| format!("compacting at revision {revision}"))?;
    Ok(())
}
