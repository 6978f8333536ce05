//! Client connections are served by several event-loop threads, each a
//! single-threaded tokio runtime, rather than by the multi-threaded runtime.
//!
//! Why: on a multi-threaded runtime a task woken by the task running runs
//! next (tokio's "LIFO slot"). When a node's answer completes ten calls of
//! one HTTP/2 connection, each call's task wakes the connection's task,
//! which then runs at once and writes that one response: one `writev` per
//! response. On a single-threaded runtime woken tasks queue in order, so the
//! ten calls finish first and the connection writes their responses in one
//! `writev` (put, 1000 clients: 0.43 `writev` per response instead of 1.07).
//!
//! Each thread also calls nodes on connections of its own (see
//! `Router::mux`), so a node's answer completes its calls on the thread
//! that serves their clients: woken from another thread, they would be
//! picked up one by one as they arrive, and written one by one again.
//!
//! One task on the caller's runtime accepts connections and hands each to
//! the next thread (round robin); the threads stop when that task does, i.e.
//! when the caller's runtime shuts down (in-process tests stop routers that
//! way), closing their connections.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

use strata_proto::tls::{Incoming, ServerTls};

/// Accepted connections waiting for their thread, per thread.
const HANDOFF_CAP: usize = 1024;
/// After a failed accept (e.g. out of file descriptors), wait this long.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

thread_local! {
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Which client thread runs the caller: 1 + its index, 0 on any other.
pub fn slot() -> usize {
    SLOT.with(|s| s.get())
}

/// The number of threads to use for `configured` (0: one per CPU this
/// process may use).
pub fn count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves `listener`'s connections on `threads` threads: each runs
/// `serve(incoming)` on its own single-threaded runtime, `incoming` being
/// the connections handed to it (through a TLS handshake with `tls` when
/// given).
pub fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    threads: usize,
    serve: F,
) -> anyhow::Result<()>
where
    F: Fn(Incoming) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (alive, _) = watch::channel(());
    let mut handoff = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let (tx, rx) = mpsc::channel::<std::net::TcpStream>(HANDOFF_CAP);
        let (tls, serve, mut alive) = (tls.clone(), serve.clone(), alive.subscribe());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("router-client-{i}"))
            .spawn(move || {
                SLOT.with(|s| s.set(i + 1));
                rt.block_on(async move {
                    let tcp = ReceiverStream::new(rx).map(|s| {
                        let s = tokio::net::TcpStream::from_std(s)?;
                        s.set_nodelay(true)?;
                        Ok(s)
                    });
                    let incoming = strata_proto::tls::incoming_from(tcp, tls);
                    tokio::select! {
                        () = serve(incoming) => {}
                        // The accepting task ended: stop.
                        _ = async { while alive.changed().await.is_ok() {} } => {}
                    }
                });
            })?;
        handoff.push(tx);
    }
    tokio::spawn(accept(listener, handoff, alive));
    Ok(())
}

async fn accept(
    listener: TcpListener,
    handoff: Vec<mpsc::Sender<std::net::TcpStream>>,
    _alive: watch::Sender<()>,
) {
    let mut next = 0usize;
    loop {
        let s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accepting a client connection failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(mut s) = s.into_std() else {
            continue;
        };
        // The next thread that takes it; a connection no thread can take
        // (every queue full, or every thread gone) is closed.
        for _ in 0..handoff.len() {
            let tx = &handoff[next % handoff.len()];
            next = next.wrapping_add(1);
            match tx.try_send(s) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(back))
                | Err(mpsc::error::TrySendError::Closed(back)) => s = back,
            }
        }
        if handoff.iter().all(|tx| tx.is_closed()) {
            tracing::error!("every client thread stopped; no longer accepting");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read};
    use std::time::Instant;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Connects and reads the one byte the test server writes: the slot of
    /// the thread serving the connection.
    fn served_by(addr: std::net::SocketAddr) -> (std::net::TcpStream, u8) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        (s, b[0])
    }

    #[test]
    fn connections_spread_over_the_threads_which_stop_with_the_runtime() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let addr = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            serve(listener, None, 2, |mut incoming: Incoming| async move {
                let mut held = Vec::new();
                while let Some(Ok(mut conn)) = incoming.next().await {
                    conn.write_all(&[slot() as u8]).await.unwrap();
                    held.push(conn);
                }
                // Like a server with open connections, it does not end
                // when no more connections come.
                std::future::pending::<()>().await;
                drop(held);
            })
            .unwrap();
            addr
        });
        let conns: Vec<_> = (0..4).map(|_| served_by(addr)).collect();
        let slots: Vec<u8> = conns.iter().map(|c| c.1).collect();
        assert_eq!(slots, [1, 2, 1, 2], "round robin over both threads");
        // The runtime that accepted them stops: so do the threads, closing
        // the connections they held, and the port no longer accepts.
        rt.shutdown_timeout(Duration::from_secs(1));
        for (mut s, _) in conns {
            let mut b = [0u8; 1];
            match s.read(&mut b) {
                Ok(0) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                other => panic!("connection still open: {other:?}"),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "{addr} still accepts");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
