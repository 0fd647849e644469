//! Streaming a blob's bytes to a client from the block cache, fetching missing blocks
//! a window at a time, one window ahead of what is being sent.

use super::blocks::{CachedBlob, Fetcher};
use super::server::BodyFrame;
use super::Mirror;
use hyper::body::Frame;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::Sender;

/// Sends bytes `start..end` of `blob` into `tx`, frame by frame (one block or less
/// each). Windows are aligned on the largest upstream request, so clients reading the
/// same blob ask for the same runs; the next window is fetched while this one is sent.
/// A failure ends the body with an error (the client sees a broken transfer, never
/// wrong bytes from the mirror's side).
pub async fn stream_blob(
    mirror: Arc<Mirror>,
    blob: Arc<CachedBlob>,
    fetch: Fetcher,
    start: u64,
    end: u64,
    tx: Sender<BodyFrame>,
) {
    let window = mirror.blocks.max_request();
    let frame = mirror.blocks.block_size();
    let windows: Vec<(u64, u64)> = {
        let mut v = Vec::new();
        let mut at = start;
        while at < end {
            let stop = ((at / window + 1) * window).min(end);
            v.push((at, stop));
            at = stop;
        }
        v
    };
    let ensure = |(s, e): (u64, u64)| {
        let (blob, fetch) = (Arc::clone(&blob), Arc::clone(&fetch));
        tokio::spawn(async move { blob.ensure(s, e - s, &fetch).await })
    };
    let mut next = windows.first().map(|&w| ensure(w));
    for (i, &(from, to)) in windows.iter().enumerate() {
        let Some(current) = next.take() else { return };
        next = windows.get(i + 1).map(|&w| ensure(w));
        let ready = match current.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = ready {
            tracing::warn!(digest = %blob.digest(), "serving bytes {from}..{to}: {e}");
            let _ = tx.send(Err(std::io::Error::other(e))).await;
            return;
        }
        let mut at = from;
        while at < to {
            let n = (to - at).min(frame - at % frame);
            let bytes = match blob.read(at, n).await {
                Ok(b) => b,
                Err(err) => {
                    tracing::error!("{err}");
                    let _ = tx.send(Err(std::io::Error::other(err))).await;
                    return;
                }
            };
            if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                // The client hung up; fetches under way finish for the next one.
                return;
            }
            mirror.stats.served_bytes.fetch_add(n, Ordering::Relaxed);
            at += n;
        }
    }
}
