//! The snapshotter's socket, served on a thread of its own with its own tokio
//! runtime (so it shares nothing with the caller's threads).

use crate::error::SnapshotError;
use crate::service::SnapshotService;
use crate::snapshotter::Snapshotter;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A running snapshot server; [`SnapshotServer::stop`] (or dropping it) stops it.
pub struct SnapshotServer {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Binds `socket` with mode 0600 (replacing a stale socket file, refusing a live
/// one).
fn bind(socket: &Path) -> Result<std::os::unix::net::UnixListener, SnapshotError> {
    if UnixStream::connect(socket).is_ok() {
        return Err(SnapshotError::FailedPrecondition(format!(
            "a snapshotter already answers on {}",
            socket.display()
        )));
    }
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(SnapshotError::io("creating", dir))?;
    }
    // SAFETY: umask has no preconditions. It is process-wide: the window is the bind
    // call only, and a file created by another thread meanwhile is made stricter,
    // never looser.
    let old = unsafe { libc::umask(0o177) };
    let listener = std::os::unix::net::UnixListener::bind(socket);
    unsafe { libc::umask(old) };
    let listener = listener.map_err(SnapshotError::io("listening on", socket))?;
    listener
        .set_nonblocking(true)
        .map_err(SnapshotError::io("listening on", socket))?;
    Ok(listener)
}

impl SnapshotServer {
    /// Serves `snapshotter` on `socket` from a new thread.
    pub fn start(
        snapshotter: Arc<Snapshotter>,
        socket: &Path,
    ) -> Result<SnapshotServer, SnapshotError> {
        let listener = bind(socket)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("skiff-snapshotter")
            .enable_all()
            .build()
            .map_err(SnapshotError::io("starting the runtime for", socket))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let path = socket.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("skiff-snapshotter".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::UnixListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("snapshotter socket {}: {e}", path.display());
                            return;
                        }
                    };
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                    let served = tonic::transport::Server::builder()
                        .add_service(SnapshotService::new(snapshotter).into_server())
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = rx.await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!("snapshotter on {}: {e}", path.display());
                    }
                });
            })
            .map_err(SnapshotError::io("starting the thread for", socket))?;
        tracing::info!(socket = %socket.display(), "snapshotter listening");
        Ok(SnapshotServer {
            socket: socket.to_path_buf(),
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The socket served.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops serving and removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for SnapshotServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
