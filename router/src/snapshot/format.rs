//! The Strata snapshot file (format version 1): what `Maintenance.Snapshot`
//! streams and `strata ctl snapshot restore` reads. It is not etcd's bbolt
//! file; etcd's tools cannot restore it, nor can Strata restore theirs.
//!
//! ```text
//! magic      16 bytes  "STRATA-SNAPSHOT\n"
//! records    each: tag (1 byte), length (u32 little-endian), payload
//!   1 header   SnapshotHeader (strata.proto): format version, revision R,
//!              compaction revision, cluster id, creation time — first, once
//!   2 lease    SnapshotLease: id, granted TTL — after the header
//!   3 kv       etcd's mvccpb.KeyValue: every live key as of R, in key
//!              order (key, create/mod revision, version, value, lease)
//!   4 end      SnapshotEnd: how many kv and lease records came — last
//! padding    zero bytes up to a multiple of 512 bytes
//! trailer    32 bytes: SHA-256 of every byte before it
//! ```
//!
//! Like etcd's own snapshot stream, the file ends in a SHA-256 of what came
//! before (etcd appends one to its bbolt file, whose size is a multiple of
//! 512). `etcdctl snapshot save` checks only that: the saved size must be
//! 32 more than a multiple of 512, hence the padding. The reader here checks
//! the hash, the padding, the order of records, each key's revisions against
//! R, and the counts.
//! A payload is at most [`MAX_RECORD_BYTES`], so a reader holds one record
//! at a time.

use std::io::Read;

use prost::Message;
use sha2::{Digest, Sha256};
use strata_proto::etcd::PbKeyValue;
use strata_proto::strata::{SnapshotEnd, SnapshotHeader, SnapshotLease};

pub const MAGIC: &[u8; 16] = b"STRATA-SNAPSHOT\n";
pub const FORMAT_VERSION: u32 = 1;
/// A record's largest payload: a key and value within etcd's request limit
/// (1.5 MiB) with room to spare.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

const TAG_HEADER: u8 = 1;
const TAG_LEASE: u8 = 2;
const TAG_KV: u8 = 3;
const TAG_END: u8 = 4;

/// The file's size is a multiple of this, plus the 32-byte trailer.
pub const ALIGN: u64 = 512;

/// Writes records into a byte buffer the caller drains (`take`), keeping the
/// running hash; `finish` appends the end record, padding and the trailer.
pub struct Writer {
    buf: Vec<u8>,
    hash: Sha256,
    /// Bytes written so far (taken or not).
    written: u64,
    kvs: u64,
    leases: u64,
}

impl Writer {
    pub fn new(header: &SnapshotHeader) -> Writer {
        let mut w = Writer {
            buf: Vec::with_capacity(64 * 1024),
            hash: Sha256::new(),
            written: 0,
            kvs: 0,
            leases: 0,
        };
        w.raw(MAGIC);
        w.record(TAG_HEADER, &header.encode_to_vec());
        w
    }

    fn raw(&mut self, b: &[u8]) {
        self.hash.update(b);
        self.buf.extend_from_slice(b);
        self.written += b.len() as u64;
    }

    fn record(&mut self, tag: u8, payload: &[u8]) {
        // Payloads come from our own reads (a key and a value the cluster
        // accepted): far below u32::MAX.
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.raw(&[tag]);
        self.raw(&len.to_le_bytes());
        self.raw(payload);
    }

    pub fn lease(&mut self, l: &SnapshotLease) {
        self.leases += 1;
        self.record(TAG_LEASE, &l.encode_to_vec());
    }

    pub fn kv(&mut self, kv: &PbKeyValue) {
        self.kvs += 1;
        self.record(TAG_KV, &kv.encode_to_vec());
    }

    /// Bytes written and not taken yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The end record and the trailer; returns the last bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let end = SnapshotEnd {
            kvs: self.kvs,
            leases: self.leases,
        };
        self.record(TAG_END, &end.encode_to_vec());
        let pad = (ALIGN - self.written % ALIGN) % ALIGN;
        self.raw(&vec![0u8; pad as usize]);
        let sum = self.hash.finalize();
        self.buf.extend_from_slice(&sum);
        self.buf
    }
}

/// One record of a snapshot file.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Lease(SnapshotLease),
    Kv(PbKeyValue),
}

/// Reads a snapshot file record by record, checking it as it goes; the
/// checksum is known good only once [`Reader::next_record`] answered `Ok(None)`.
pub struct Reader<R: Read> {
    input: R,
    hash: Sha256,
    /// Bytes read so far.
    read: u64,
    pub header: SnapshotHeader,
    kvs: u64,
    leases: u64,
    last_key: Option<Vec<u8>>,
    done: bool,
}

fn bad(msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("not a valid Strata snapshot: {msg}")
}

impl<R: Read> Reader<R> {
    pub fn open(mut input: R) -> anyhow::Result<Reader<R>> {
        let mut magic = [0u8; 16];
        input
            .read_exact(&mut magic)
            .map_err(|e| bad(format!("cannot read its start: {e}")))?;
        if &magic != MAGIC {
            return Err(bad(
                "it does not start with STRATA-SNAPSHOT (restoring etcd's bbolt snapshots \
                 is not supported)",
            ));
        }
        let mut r = Reader {
            input,
            hash: Sha256::new(),
            read: MAGIC.len() as u64,
            header: SnapshotHeader::default(),
            kvs: 0,
            leases: 0,
            last_key: None,
            done: false,
        };
        r.hash.update(magic);
        let (tag, payload) = r.raw_record()?;
        if tag != TAG_HEADER {
            return Err(bad("the first record is not the header"));
        }
        r.header = SnapshotHeader::decode(&payload[..]).map_err(bad)?;
        if r.header.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                r.header.format_version
            )));
        }
        // Revision 0: a snapshot of a cluster nothing was ever written to.
        if r.header.revision < 0
            || r.header.compact_revision < 0
            || r.header.compact_revision > r.header.revision
        {
            return Err(bad(format!(
                "revision {} with compaction revision {}",
                r.header.revision, r.header.compact_revision
            )));
        }
        Ok(r)
    }

    fn raw_record(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.input
            .read_exact(&mut head)
            .map_err(|e| bad(format!("truncated ({e})")))?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(bad(format!("a record of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        self.input
            .read_exact(&mut payload)
            .map_err(|e| bad(format!("truncated ({e})")))?;
        self.hash.update(head);
        self.hash.update(&payload);
        self.read += 5 + len as u64;
        Ok((head[0], payload))
    }

    /// The next lease or key, or `None` at the end once the counts and the
    /// checksum matched.
    pub fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let (tag, payload) = self.raw_record()?;
        match tag {
            TAG_LEASE if self.kvs == 0 => {
                self.leases += 1;
                let l = SnapshotLease::decode(&payload[..]).map_err(bad)?;
                if l.id == 0 {
                    return Err(bad("a lease with id 0"));
                }
                Ok(Some(Record::Lease(l)))
            }
            TAG_KV => {
                self.kvs += 1;
                let kv = PbKeyValue::decode(&payload[..]).map_err(bad)?;
                if kv.key.is_empty()
                    || self.last_key.as_ref().is_some_and(|k| *k >= kv.key)
                    || kv.create_revision < 1
                    || kv.create_revision > kv.mod_revision
                    || kv.mod_revision > self.header.revision
                    || kv.version < 1
                {
                    return Err(bad(format!(
                        "key {:?} out of order or with revisions out of order",
                        String::from_utf8_lossy(&kv.key)
                    )));
                }
                self.last_key = Some(kv.key.clone());
                Ok(Some(Record::Kv(kv)))
            }
            TAG_END => {
                let end = SnapshotEnd::decode(&payload[..]).map_err(bad)?;
                if end.kvs != self.kvs || end.leases != self.leases {
                    return Err(bad(format!(
                        "it says {} keys and {} leases, it holds {} and {}",
                        end.kvs, end.leases, self.kvs, self.leases
                    )));
                }
                let mut pad = vec![0u8; ((ALIGN - self.read % ALIGN) % ALIGN) as usize];
                self.input
                    .read_exact(&mut pad)
                    .map_err(|e| bad(format!("truncated padding ({e})")))?;
                if pad.iter().any(|&b| b != 0) {
                    return Err(bad("padding that is not zero"));
                }
                self.hash.update(&pad);
                let mut sum = [0u8; 32];
                self.input
                    .read_exact(&mut sum)
                    .map_err(|e| bad(format!("no checksum ({e})")))?;
                let want = self.hash.clone().finalize();
                if want[..] != sum[..] {
                    return Err(bad("its SHA-256 does not match (corrupt or truncated)"));
                }
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest).map_err(bad)? != 0 {
                    return Err(bad("bytes after its checksum"));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(bad(format!("record tag {other}"))),
        }
    }

    /// Keys and leases read so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.kvs, self.leases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(&SnapshotHeader {
            format_version: FORMAT_VERSION,
            revision: 10,
            compact_revision: 2,
            ..Default::default()
        });
        w.lease(&SnapshotLease { id: 7, ttl: 60 });
        let mut out = w.take();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            w.kv(&PbKeyValue {
                key: k.as_bytes().to_vec(),
                create_revision: 3,
                mod_revision: 4 + i as i64,
                version: 2,
                value: b"v".to_vec(),
                lease: 7,
            });
        }
        out.extend(w.finish());
        out
    }

    fn read_all(b: &[u8]) -> anyhow::Result<Vec<Record>> {
        let mut r = Reader::open(b)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let b = sample();
        assert_eq!(b.len() as u64 % ALIGN, 32, "etcdctl's size check");
        let recs = read_all(&b).expect("valid");
        assert_eq!(recs.len(), 4);
        assert!(matches!(&recs[0], Record::Lease(l) if l.id == 7 && l.ttl == 60));
        assert!(matches!(&recs[3], Record::Kv(kv) if kv.key == b"c" && kv.mod_revision == 6));
        assert_eq!(Reader::open(&b[..]).unwrap().header.revision, 10);
    }

    #[test]
    fn every_flipped_byte_or_cut_is_refused() {
        let b = sample();
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(read_all(&c).is_err(), "flipped byte {i} accepted");
            assert!(read_all(&b[..i]).is_err(), "cut at {i} accepted");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err());
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let mut w = Writer::new(&SnapshotHeader {
            format_version: FORMAT_VERSION,
            revision: 10,
            ..Default::default()
        });
        for k in ["b", "a"] {
            w.kv(&PbKeyValue {
                key: k.into(),
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                ..Default::default()
            });
        }
        assert!(read_all(&w.finish()).is_err());
    }
}
