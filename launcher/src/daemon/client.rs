//! The CLI's side: find the daemon of a root and ask it one thing.

use super::protocol::{Request, Response};
use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// A daemon that answered on its socket.
pub struct DaemonClient {
    socket: PathBuf,
}

impl DaemonClient {
    /// The daemon listening on `socket`, if a connection succeeds (else the CLI works
    /// standalone). Set `SKIFF_NO_DAEMON=1` to ignore a running daemon.
    pub fn connect(socket: &Path) -> Option<DaemonClient> {
        if std::env::var_os("SKIFF_NO_DAEMON").is_some_and(|v| v != "0" && !v.is_empty()) {
            return None;
        }
        UnixStream::connect(socket).ok()?;
        tracing::debug!(socket = %socket.display(), "using the daemon");
        Some(DaemonClient {
            socket: socket.to_path_buf(),
        })
    }

    /// Sends `request`, waits for the answer. An [`Response::Error`] becomes `Err`.
    pub fn request(&self, request: &Request) -> anyhow::Result<Response> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to the daemon on {}", self.socket.display()))?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .context("sending a request to the daemon")?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .context("reading the daemon's answer")?;
        if answer.is_empty() {
            anyhow::bail!("the daemon closed the connection without answering");
        }
        match serde_json::from_str(&answer).context("decoding the daemon's answer")? {
            Response::Error { message } => Err(anyhow::anyhow!("daemon: {message}")),
            r => Ok(r),
        }
    }
}
