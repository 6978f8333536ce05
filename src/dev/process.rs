//! Child processes: spawning with logs, exit descriptions, signals, stopping all.

use super::*;

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts one child with stdout and stderr appended to its log file, in its own process
/// group, and a task that reports its exit.
pub(super) fn spawn(spec: &Spec, stopping: &Arc<AtomicBool>) -> anyhow::Result<Running> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening log file {}", spec.log.display()))?;
    writeln!(
        log,
        "==== strata dev (pid {}) starting {} at unix time {}: {}",
        std::process::id(),
        spec.name,
        unix_time(),
        spec.args.join(" ")
    )
    .with_context(|| format!("writing log file {}", spec.log.display()))?;
    let stderr = log.try_clone()?;

    let mut cmd = std::process::Command::new(&spec.args[0]);
    cmd.args(&spec.args[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        // Own process group: a terminal's Ctrl-C goes to `strata dev` only.
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // If `strata dev` dies without stopping us (SIGKILL), we get SIGTERM.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("strata dev exited while starting a child"));
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("starting {} ({})", spec.name, spec.args[0]))?;
    let pid = child.id().context("child has no pid")?;

    let (tx, rx) = watch::channel(None);
    let name = spec.name.clone();
    let stopping = stopping.clone();
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(st) => describe(st),
            Err(e) => format!("could not be waited for: {e}"),
        };
        if !stopping.load(Ordering::SeqCst) {
            eprintln!("strata dev: {name} (pid {pid}) {status}; the other components keep running");
        }
        let _ = tx.send(Some(status));
    });
    Ok(Running {
        role: spec.role,
        name: spec.name.clone(),
        pid,
        log: spec.log.clone(),
        exited: rx,
    })
}

fn describe(st: ExitStatus) -> String {
    if let Some(code) = st.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = st.signal() {
        format!("was killed by signal {sig}{}", signal_name(sig))
    } else {
        format!("exited ({st})")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2). Each child leads its own process group (pgid == pid), and
    // is still unreaped when this is called, so the group id cannot have been reused.
    unsafe {
        if libc::kill(-(pid as libc::pid_t), sig) != 0 {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// SIGTERM to every running child (router first, placement last), up to STOP_GRACE for
/// them to exit, then SIGKILL. A second signal to `strata dev` skips the grace period.
pub(super) async fn stop_all(
    children: &[Running],
    stopping: &Arc<AtomicBool>,
    signals: &mut Signals,
) {
    stopping.store(true, Ordering::SeqCst);
    for c in children.iter().rev() {
        if c.is_running() {
            signal_group(c.pid, libc::SIGTERM);
        }
    }
    let all_exited = async {
        for c in children {
            let mut rx = c.exited.clone();
            let _ = rx.wait_for(|s| s.is_some()).await;
        }
    };
    let graceful = tokio::select! {
        _ = all_exited => true,
        _ = tokio::time::sleep(STOP_GRACE) => false,
        sig = signals.recv() => {
            eprintln!("strata dev: received {sig} again; killing every component now");
            false
        }
    };
    if !graceful {
        for c in children {
            if c.is_running() {
                eprintln!(
                    "strata dev: {} (pid {}) did not stop on SIGTERM; sending SIGKILL",
                    c.name, c.pid
                );
                signal_group(c.pid, libc::SIGKILL);
            }
        }
        let all_exited = async {
            for c in children {
                let mut rx = c.exited.clone();
                let _ = rx.wait_for(|s| s.is_some()).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), all_exited)
            .await
            .is_err()
        {
            eprintln!("strata dev: some components could not be reaped after SIGKILL");
        }
    }
    eprintln!("strata dev: stopped");
}
