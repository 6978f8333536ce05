//! `strata ctl snapshot restore FILE --data-dir DIR`: prepares DIR so that
//! `strata dev --data-dir DIR` starts a new cluster holding exactly the
//! snapshot's keys (see `router/src/snapshot.rs` for the format and the
//! load, `src/dev/restore.rs` for the loader).
//!
//! The file is read whole once and checked (checksum, record order, each
//! key's revisions, counts) before anything is written; then it is copied
//! to `DIR/restore/snapshot.strata` (and checked again as it is copied) and
//! `DIR/restore/restore.json` says what it holds and that it is pending.
//! DIR must not hold a cluster already.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use strata_router::snapshot::format::Reader;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SnapshotCommand {
    /// Prepare --data-dir DIR from a snapshot FILE (saved with `etcdctl snapshot
    /// save` from a Strata router): `strata dev --data-dir DIR` then starts a new
    /// cluster holding exactly its keys, values and revisions. Snapshots of etcd
    /// itself (bbolt files) cannot be restored.
    Restore {
        /// The snapshot file.
        file: PathBuf,
    },
}

/// `DIR/restore/restore.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RestoreJson {
    /// The snapshot's revision: every key as of it; the new cluster's
    /// writes come after it.
    pub revision: i64,
    /// The source's compaction revision when the snapshot was taken.
    pub compact_revision: i64,
    pub keys: u64,
    pub leases: u64,
    /// Where the snapshot came from.
    pub source: String,
    /// "pending" until `strata dev` loaded it, then "done".
    pub state: String,
}

pub const RESTORE_DIR: &str = "restore";
pub const SNAPSHOT_FILE: &str = "snapshot.strata";
pub const RESTORE_JSON: &str = "restore.json";

/// Reads a whole snapshot, checking it; answers its summary.
pub fn check_file(input: impl Read) -> anyhow::Result<RestoreJson> {
    let mut r = Reader::open(input)?;
    while r.next_record()?.is_some() {}
    let (keys, leases) = r.counts();
    Ok(RestoreJson {
        revision: r.header.revision,
        compact_revision: r.header.compact_revision,
        keys,
        leases,
        source: String::new(),
        state: "pending".into(),
    })
}

/// A copy of `from` that passes its bytes to `to` as they are read.
struct Tee<R, W> {
    from: R,
    to: W,
    failed: Option<std::io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.from.read(buf)?;
        if let Err(e) = self.to.write_all(&buf[..n]) {
            self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
            return Err(e);
        }
        Ok(n)
    }
}

pub fn restore(file: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let open = || File::open(file).with_context(|| format!("opening {}", file.display()));
    let mut summary = check_file(BufReader::new(open()?))
        .with_context(|| format!("checking {}", file.display()))?;
    for taken in [
        "dev.json",
        "placement-1",
        "placement",
        "node-1",
        RESTORE_DIR,
    ] {
        if data_dir.join(taken).exists() {
            bail!(
                "{} already holds a cluster (or a restore): {} exists; restore into a new \
                 directory",
                data_dir.display(),
                data_dir.join(taken).display()
            );
        }
    }
    let dir = data_dir.join(RESTORE_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = dir.join(SNAPSHOT_FILE);
    let out = File::create(&target).with_context(|| format!("creating {}", target.display()))?;
    let mut tee = Tee {
        from: BufReader::new(open()?),
        to: std::io::BufWriter::new(out),
        failed: None,
    };
    // Checked again as it is copied: the file may have changed meanwhile.
    let copied = check_file(&mut tee);
    if let Some(e) = tee.failed.take() {
        return Err(e).with_context(|| format!("writing {}", target.display()));
    }
    let copied = copied.with_context(|| format!("checking {}", file.display()))?;
    if copied != summary {
        bail!("{} changed while it was copied", file.display());
    }
    let out = tee
        .to
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", target.display(), e.error()))?;
    out.sync_all()
        .with_context(|| format!("writing {}", target.display()))?;
    summary.source = std::path::absolute(file)
        .unwrap_or_else(|_| file.to_path_buf())
        .display()
        .to_string();
    write_json(&dir, &summary)?;
    Ok(format!(
        "restored snapshot {} (revision {}, {} keys, {} leases) into {}; start it with \
         `strata dev --data-dir {}`\n",
        file.display(),
        summary.revision,
        summary.keys,
        summary.leases,
        data_dir.display(),
        data_dir.display()
    ))
}

pub fn write_json(dir: &Path, json: &RestoreJson) -> anyhow::Result<()> {
    let path = dir.join(RESTORE_JSON);
    let tmp = dir.join("restore.json.tmp");
    let mut text = serde_json::to_string_pretty(json)?;
    text.push('\n');
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The restore DIR holds, if any.
pub fn read_json(data_dir: &Path) -> anyhow::Result<Option<RestoreJson>> {
    let path = data_dir.join(RESTORE_DIR).join(RESTORE_JSON);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
