//! `skiff mirror`: serve a lazy, range-caching pull-through mirror of one registry
//! (see [`crate::mirror`]).

use super::registry_args::runtime;
use crate::container::spec::parse_size;
use crate::mirror::blocks::BlockStore;
use crate::mirror::upstream::Upstream;
use crate::mirror::{server, Mirror};
use anyhow::{bail, Context};
use skiff_proto::registry::{is_loopback, Client, ClientOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `skiff mirror` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The registry to mirror: a URL (`http://127.0.0.1:5001`, `https://ghcr.io`) or a
    /// host as in image references (`docker.io`, `registry:5000`; HTTPS unless loopback).
    #[arg(long, value_name = "URL|HOST")]
    pub upstream: String,
    /// Address to serve on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5002")]
    pub listen: String,
    /// Where cached blobs (sparse files and block maps) and manifests are kept; kept
    /// across restarts.
    #[arg(long, value_name = "DIR")]
    pub storage: PathBuf,
    /// Blocks blobs are cached in and fetched by (e.g. `64KiB`, `1MiB`). Small by
    /// default: lazy readers ask for scattered ranges, and with 1 MiB blocks the
    /// upstream sent 3.65x what one node read (64 KiB: 1.14x, bench/fleet.sh).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_block_size)]
    pub block_size: u64,
    /// Most blocks one upstream request fetches (contiguous missing blocks are asked
    /// for together up to this many).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_request_blocks: u64,
    /// Most blob requests in flight to upstream at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub upstream_concurrency: usize,
    /// Seconds a tag's answer is reused before upstream is asked again.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub tag_ttl: u64,
    /// containerd-style `hosts.toml` directory for reaching the upstream (none by
    /// default: a mirror following the machine's mirror configuration could end up
    /// asking itself).
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
}

fn parse_block_size(s: &str) -> Result<u64, String> {
    match parse_size(s) {
        Some(n) if (4096..=(64 << 20)).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a block size between 4KiB and 64MiB")),
    }
}

/// The registry name and client options for `--upstream`.
fn upstream_client(upstream: &str, hosts_dir: Option<PathBuf>) -> anyhow::Result<Client> {
    let (scheme, rest) = match upstream.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, upstream),
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        bail!("--upstream {upstream:?}: expected a registry URL or host without a path");
    }
    let mut options = ClientOptions {
        hosts_dir: hosts_dir.filter(|d| !d.as_os_str().is_empty()),
        ..ClientOptions::default()
    };
    match scheme {
        Some("http") if !is_loopback(host) => options.insecure_registries.push(host.into()),
        Some("http" | "https") | None => {}
        Some(other) => bail!("--upstream {upstream:?}: unknown scheme {other:?}"),
    }
    if scheme == Some("https") && is_loopback(host) {
        bail!("--upstream {upstream:?}: loopback registries are reached over plain HTTP");
    }
    Client::new(host, options).with_context(|| format!("setting up a client for {host}"))
}

/// Runs the mirror until SIGINT or SIGTERM, then logs its counters.
pub fn run(_global: &super::Global, args: Args) -> anyhow::Result<u8> {
    let client = upstream_client(&args.upstream, args.hosts_dir.clone())?;
    let blocks = BlockStore::open(
        &args.storage.join("blobs"),
        args.block_size,
        args.max_request_blocks,
    )?;
    let upstream = Upstream::new(
        client,
        args.upstream_concurrency,
        Duration::from_secs(args.tag_ttl),
        &args.storage.join("manifests"),
    )
    .with_context(|| format!("creating {}", args.storage.display()))?;
    let mirror = Arc::new(Mirror::new(upstream, blocks));
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener
            .local_addr()
            .context("reading the listening address")?;
        eprintln!(
            "skiff mirror: serving {} on http://{addr} (cache in {})",
            args.upstream,
            args.storage.display()
        );
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!("cannot watch SIGTERM: {e}");
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        server::serve(listener, Arc::clone(&mirror), shutdown).await;
        anyhow::Ok(())
    })?;
    eprintln!("skiff mirror: stopped; {}", mirror.stats_json());
    Ok(0)
}
