//! Checks and files around the start: the data dir lock, free ports, binaries on
//! PATH, `dev.json`.

use super::*;

/// Takes an exclusive lock on `DATA_DIR/dev.lock` for as long as the returned file lives;
/// doubles as the check that the data dir is writable.
pub(super) fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join("dev.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("data dir {} is not writable", data_dir.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another `strata dev` (pid {}) is already using data dir {}; stop it or pass \
                 another --data-dir",
                holder.trim(),
                data_dir.display()
            );
        }
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    file.set_len(0)
        .and_then(|_| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .with_context(|| format!("data dir {} is not writable", data_dir.display()))?;
    Ok(file)
}

/// Fails with a readable error if a port the cluster needs is taken.
pub(super) fn check_ports(plan: &Plan) -> anyhow::Result<()> {
    let specs = plan
        .components
        .iter()
        .chain(plan.prometheus.as_ref().map(|(s, _)| s));
    for spec in specs {
        for (addr, what) in &spec.ports {
            if let Err(e) = TcpListener::bind(addr) {
                let hint = if e.kind() == io::ErrorKind::AddrInUse {
                    " (is another `strata dev` or an etcd running? choose other ports with \
                     --listen-client, --base-port or --prometheus-listen)"
                } else {
                    ""
                };
                bail!("cannot listen on {addr} ({what}): {e}{hint}");
            }
        }
    }
    Ok(())
}

pub(super) fn find_on_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("`{name}` not found on PATH")
}

pub(super) fn write_dev_json(data_dir: &Path, json: &DevJson) -> anyhow::Result<()> {
    let path = data_dir.join("dev.json");
    let tmp = data_dir.join("dev.json.tmp");
    let mut text = serde_json::to_string_pretty(json)?;
    text.push('\n');
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The placement data of DATA_DIR matches `replicas`: placement's group is
/// fixed when its data directories are made, so a data dir made with another
/// --placement-replicas would start a group that cannot elect a leader (or
/// two groups). The single placement of earlier versions (`placement/`)
/// becomes replica 1 (`placement-1/`, id 1, as it was).
pub(super) fn check_placement_dirs(data_dir: &Path, replicas: usize) -> anyhow::Result<()> {
    let old = data_dir.join("placement");
    let first = data_dir.join("placement-1");
    if old.is_dir() && !first.exists() {
        if replicas != 1 {
            bail!(
                "data dir {} holds a single placement (placement/); run it with \
                 --placement-replicas 1, or use another --data-dir",
                data_dir.display()
            );
        }
        fs::rename(&old, &first)
            .with_context(|| format!("renaming {} to {}", old.display(), first.display()))?;
    }
    if !first.exists() {
        return Ok(()); // a new cluster
    }
    let made: Vec<usize> = (1..=5)
        .filter(|i| data_dir.join(format!("placement-{i}")).exists())
        .collect();
    let expected: Vec<usize> = (1..=replicas).collect();
    if made != expected {
        bail!(
            "data dir {} was made with {} placement replica(s) (placement-{}/), not {replicas}; \
             run it with that --placement-replicas, or use another --data-dir",
            data_dir.display(),
            made.len(),
            made.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("/, placement-"),
        );
    }
    Ok(())
}
