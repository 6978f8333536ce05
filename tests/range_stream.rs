//! Big ranges through the router: Kubernetes-style paging (limit + continue
//! key at a fixed revision) while ranges split, and etcd 3.7's `RangeStream`
//! (chunks that merge into the unary Range's answer). Paging is checked
//! against a real etcd too (`STRATA_TEST_TARGET=etcd`); etcd 3.4 has no
//! RangeStream.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start_strata_with, within, Target};
use etcd_client::{Client, GetOptions, SortOrder, SortTarget};

/// `prefix` + 1 in its last byte: the end of etcd's prefix range.
fn prefix_end(p: &str) -> Vec<u8> {
    let mut e = p.as_bytes().to_vec();
    *e.last_mut().unwrap() += 1;
    e
}

async fn load(c: &Client, p: &str, n: usize, value_bytes: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (mut c, p) = (c.clone(), p.to_string());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(8) {
                let k = format!("{p}{i:06}");
                let v = format!("{i:0width$}", width = value_bytes);
                within(
                    Duration::from_secs(20),
                    "put",
                    c.put(k.clone(), v.clone(), None),
                )
                .await
                .expect("put");
                out.push((k.into_bytes(), v.into_bytes()));
            }
            out
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await.expect("loader"));
    }
    all
}

async fn range_count(c: &common::Cluster) -> usize {
    if c.target == Target::Etcd {
        return 1;
    }
    let mut p = strata_proto::strata::placement_client::PlacementClient::connect(format!(
        "http://{}",
        c.placement_addr()
    ))
    .await
    .expect("placement");
    p.get_ranges(strata_proto::strata::GetRangesRequest::default())
        .await
        .expect("ranges")
        .into_inner()
        .ranges
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_at_a_fixed_revision_is_exact_across_splits() {
    let c = match Target::from_env() {
        Target::Strata => start_strata_with(&["--range-split-keys", "150"]),
        Target::Etcd => common::start(),
    };
    let mut client = c.client().await;
    let p = common::prefix("page");
    let loaded = load(&client, &p, 2000, 8).await;
    let rev = common::current_revision(&mut client).await;
    let ranges_before = range_count(&c).await;
    // New keys between the paged ones, written while paging: the ranges
    // holding the paged keys fill up and split under the pager.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut c, stop, p) = (client.clone(), stop.clone(), p.clone());
        tokio::spawn(async move {
            for i in 0..8000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = format!("{p}{:06}+{i}", (i * 7919) % 2000);
                c.put(k, "new", None).await.expect("background put");
            }
        })
    };
    let mut key = p.as_bytes().to_vec();
    let mut seen: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut pages = 0;
    loop {
        let opts = GetOptions::new()
            .with_range(prefix_end(&p))
            .with_limit(40)
            .with_revision(rev);
        let r = within(
            Duration::from_secs(30),
            "page",
            client.get(key.clone(), Some(opts)),
        )
        .await
        .expect("page");
        pages += 1;
        assert_eq!(
            r.count() as usize,
            loaded.len() - seen.len(),
            "count of page {pages}"
        );
        for kv in r.kvs() {
            assert!(kv.mod_revision() <= rev);
            seen.push((kv.key().to_vec(), kv.value().to_vec()));
        }
        if !r.more() {
            break;
        }
        key = r
            .kvs()
            .last()
            .expect("a page with more has keys")
            .key()
            .to_vec();
        key.push(0);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let want: Vec<(Vec<u8>, Vec<u8>)> = loaded.into_iter().collect();
    if c.target == Target::Strata {
        // The same keys streamed at that revision while splits go on.
        let opts = GetOptions::new()
            .with_range(prefix_end(&p))
            .with_revision(rev);
        let s = stream(&mut client, &p, opts).await;
        assert!(s.kvs == want, "RangeStream at {rev} differs");
        assert_eq!((s.count as usize, s.more), (want.len(), false));
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    assert_eq!(seen.len(), want.len(), "keys paged");
    assert!(seen == want, "pages differ from the keys at revision {rev}");
    assert_eq!(pages, 50);
    if c.target == Target::Strata {
        let after = range_count(&c).await;
        assert!(
            after > ranges_before,
            "no split while paging ({ranges_before} ranges before, {after} after)"
        );
    }
}

/// A RangeStream's chunks merged (every key, the last chunk's count and
/// more), and how many chunks came.
struct Streamed {
    chunks: usize,
    kvs: Vec<(Vec<u8>, Vec<u8>)>,
    count: i64,
    more: bool,
}

async fn stream(c: &mut Client, key: &str, opts: GetOptions) -> Streamed {
    let mut s = c
        .kv_client()
        .get_stream(key, Some(opts))
        .await
        .expect("stream");
    let mut chunks = Vec::new();
    while let Some(m) = within(Duration::from_secs(30), "chunk", s.message())
        .await
        .expect("chunk")
    {
        chunks.push(m);
    }
    let n = chunks.len();
    let last = chunks.last().expect("a last chunk");
    for (i, m) in chunks[..n - 1].iter().enumerate() {
        assert!(m.header().is_none(), "chunk {i} of {n} has a header");
        assert_eq!((m.count(), m.more()), (0, false), "chunk {i} of {n}");
        assert!(!m.kvs().is_empty(), "chunk {i} of {n} is empty");
    }
    assert!(last.header().is_some(), "the last chunk has no header");
    Streamed {
        chunks: n,
        kvs: chunks.iter().flat_map(pairs).collect(),
        count: last.count(),
        more: last.more(),
    }
}

fn pairs(r: &etcd_client::GetResponse) -> Vec<(Vec<u8>, Vec<u8>)> {
    r.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_stream_chunks_merge_into_the_range_answer() {
    if Target::from_env() == Target::Etcd {
        eprintln!("etcd 3.4 has no RangeStream: nothing to compare");
        return;
    }
    let c = start_strata_with(&["--range-split-keys", "300"]);
    let mut client = c.client().await;
    let p = common::prefix("stream");
    // 3000 keys of 1 KiB over about ten ranges: several chunks of ~1 MiB.
    let loaded = load(&client, &p, 3000, 1024).await;
    assert!(range_count(&c).await > 3, "no splits");
    let want: Vec<(Vec<u8>, Vec<u8>)> = loaded.into_iter().collect();
    let end = prefix_end(&p);
    let base = || GetOptions::new().with_range(end.clone());

    let unary = client.get(p.as_str(), Some(base())).await.expect("get");
    assert_eq!(pairs(&unary), want);
    let all = stream(&mut client, &p, base()).await;
    assert!(all.chunks >= 3, "{} chunks for 3 MiB", all.chunks);
    assert!(all.kvs == want, "streamed keys differ");
    assert_eq!((all.count, all.more), (3000, false));

    // A limit: the first keys, `more`, and the count of all of them — the
    // same through the unary Range (bounded over several ranges).
    let lim = stream(&mut client, &p, base().with_limit(1234)).await;
    assert!(lim.kvs == want[..1234], "limited stream differs");
    assert_eq!((lim.count, lim.more), (3000, true));
    let ulim = client
        .get(p.as_str(), Some(base().with_limit(1234)))
        .await
        .expect("get");
    assert!(pairs(&ulim) == want[..1234], "limited range differs");
    assert_eq!((ulim.count(), ulim.more()), (3000, true));
    let exact = stream(&mut client, &p, base().with_limit(3000)).await;
    assert_eq!(
        (exact.kvs.len(), exact.count, exact.more),
        (3000, 3000, false)
    );

    // count_only and keys_only.
    let cnt = stream(&mut client, &p, base().with_count_only()).await;
    assert_eq!((cnt.kvs.len(), cnt.count), (0, 3000));
    let ucnt = client
        .get(p.as_str(), Some(base().with_count_only()))
        .await
        .expect("get");
    assert_eq!((ucnt.kvs().len(), ucnt.count()), (0, 3000));
    let keys = stream(&mut client, &p, base().with_keys_only()).await;
    assert!(keys.kvs.iter().all(|(_, v)| v.is_empty()));
    assert_eq!(keys.kvs.len(), 3000);

    // Another order: the last keys first.
    let desc = base()
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(10);
    let d = stream(&mut client, &p, desc).await;
    let last10: Vec<_> = want.iter().rev().take(10).cloned().collect();
    assert_eq!(d.kvs, last10);
    assert_eq!((d.count, d.more), (3000, true));

    // Errors end the stream with etcd's status.
    let future = base().with_revision(1 << 40);
    // (In the call's answer or in its first message.)
    let err = match client
        .kv_client()
        .get_stream(p.as_str(), Some(future))
        .await
    {
        Ok(mut s) => s.message().await.expect_err("a future revision"),
        Err(e) => e,
    };
    let (code, msg) = common::grpc_error(&err);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("OutOfRange", common::FUTURE_REV)
    );
}
