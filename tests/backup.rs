//! Snapshot save and restore: `etcdctl snapshot save` against a router while
//! writes go on and ranges split, then `strata ctl snapshot restore` and a new
//! `strata dev` cluster holding exactly the keys as of the snapshot's
//! revision. (Strata's own file format: etcd cannot restore it, nor Strata
//! etcd's, so these tests run against Strata only.)

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start_strata_prepared, start_strata_with, within};
use etcd_client::{Client, GetOptions, PutOptions};
use strata_router::snapshot::format::{Reader, Record};

/// Every live key with what etcd says of it, at `revision` (0: now).
async fn all_keys(c: &mut Client, revision: i64) -> Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)> {
    let opts = GetOptions::new()
        .with_range(vec![0])
        .with_revision(revision);
    let r = within(
        Duration::from_secs(60),
        "read every key",
        c.get(vec![0], Some(opts)),
    )
    .await
    .expect("read every key");
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

fn restore(file: &Path, data_dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["ctl", "snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run strata ctl snapshot restore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_under_writes_restores_exactly() {
    let src = start_strata_with(&["--range-split-keys", "300"]);
    let mut c = src.client().await;
    let p = common::prefix("snap");
    // A lease with keys, kept alive by its TTL for the test's length.
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    for i in 0..2000 {
        let k = format!("{p}a{i:05}");
        let opts = (i % 10 == 0).then(|| PutOptions::new().with_lease(lease));
        c.put(k, format!("v{i}"), opts).await.expect("put");
    }
    // A bounded writer over the same keys (overwrites, deletes, new keys)
    // while the snapshot is taken; more keys make ranges split meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut c, stop, p) = (c.clone(), stop.clone(), p.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            for i in 0..20_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = format!("{p}a{:05}", (i * 7919) % 4000);
                let r = match i % 5 {
                    0 => c.delete(k, None).await.map(|_| ()),
                    _ => c.put(k, format!("w{i}"), None).await.map(|_| ()),
                };
                r.expect("background write");
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snap.db");
    let out = src.etcdctl(&["snapshot", "save", file.to_str().unwrap()]);
    let said = common::ok(&out);
    assert!(said.contains("Snapshot saved"), "etcdctl said {said:?}");
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.expect("writer");
    assert!(writes > 0, "no write went on during the snapshot");

    // The file: our header, every key at its revision, a good checksum.
    let mut reader = Reader::open(std::fs::File::open(&file).expect("open")).expect("header");
    let rev = reader.header.revision;
    let (mut keys, mut leases) = (Vec::new(), Vec::new());
    while let Some(rec) = reader.next_record().expect("valid snapshot") {
        match rec {
            Record::Kv(kv) => keys.push((
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease,
            )),
            Record::Lease(l) => leases.push(l.id),
        }
    }
    let want = all_keys(&mut c, rev).await;
    assert!(want.len() > 1000, "only {} keys at {rev}", want.len());
    assert_eq!(keys, want, "the file is not the keyspace at revision {rev}");
    assert!(leases.contains(&lease), "lease {lease:x} not in the file");
    // Writes went on past it while it was read.
    let now = common::current_revision(&mut c).await;
    assert!(
        now > rev,
        "no write after the snapshot's revision {rev} (now {now})"
    );

    // Restored into a new cluster: exactly those keys and revisions.
    let dst = start_strata_prepared(&[], |data| {
        let out = restore(&file, data);
        assert!(
            out.status.success(),
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let mut d = dst.client().await;
    assert_eq!(all_keys(&mut d, 0).await, want, "restored keys differ");
    assert_eq!(
        all_keys(&mut d, rev).await,
        want,
        "restored keys at {rev} differ"
    );
    // No history below the snapshot's revision.
    let below = d
        .get(
            vec![0],
            Some(GetOptions::new().with_range(vec![0]).with_revision(rev - 1)),
        )
        .await;
    common::assert_grpc_err(below, "OutOfRange", common::COMPACTED);
    // New writes come after it; the lease is alive with its keys.
    let put = d.put(format!("{p}new"), "n", None).await.expect("put");
    assert!(put.header().unwrap().revision() > rev);
    let ttl = d.lease_time_to_live(lease, None).await.expect("ttl");
    assert!(ttl.ttl() > 0, "lease {lease:x} not restored: {ttl:?}");
    let k = format!("{p}new");
    let got = d.get(k.as_str(), None).await.expect("get");
    assert_eq!(
        got.kvs()[0].create_revision(),
        put.header().unwrap().revision()
    );
}

#[test]
fn restore_refuses_a_file_not_strata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bolt.db");
    std::fs::write(&file, vec![7u8; 4096]).expect("write");
    let out = restore(&file, &dir.path().join("d1"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not supported"), "stderr: {err}");
    assert!(
        !dir.path().join("d1").exists(),
        "a refused restore made its dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_an_empty_cluster_restores() {
    let src = start_strata_with(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("empty.db");
    common::ok(&src.etcdctl(&["snapshot", "save", file.to_str().unwrap()]));
    let mut reader = Reader::open(std::fs::File::open(&file).expect("open")).expect("header");
    assert!(
        reader.next_record().expect("valid").is_none(),
        "keys in an empty cluster"
    );
    let dst = start_strata_prepared(&[], |data| {
        let out = restore(&file, data);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let mut d = dst.client().await;
    assert!(all_keys(&mut d, 0).await.is_empty());
    let put = d.put("k", "v", None).await.expect("put");
    assert!(put.header().unwrap().revision() > reader.header.revision);
    // The same directory is not restored into twice.
    let out = restore(&file, &dst.data_dir);
    assert!(!out.status.success(), "restored into a used data dir");
}
