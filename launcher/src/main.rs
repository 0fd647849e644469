//! `skiff`: start containers from registry images without pulling them first.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Lazy-loading container images from OCI registries"
)]
struct Cli {
    #[command(flatten)]
    global: cmd::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch an image's manifest, config and layers into the local store.
    Pull(cmd::pull::Args),
    /// Show an image's resolved digest, platform, layers and config.
    Inspect(cmd::inspect::Args),
    /// List the images in the local store.
    Images(cmd::images::Args),
    /// Mount an image's merged, writable root filesystem with FUSE.
    Mount(cmd::mount::Args),
    /// Unmount a filesystem mounted by `skiff mount`.
    Umount(cmd::mount::UmountArgs),
    /// Show the counters of a mount made by `skiff mount`.
    Stats(cmd::mount::StatsArgs),
    /// Shrink the chunk cache.
    Gc(cmd::mount::GcArgs),
    /// Run a container from an image.
    Run(cmd::run::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::init_tracing(cli.global.verbose);
    let result = match cli.command {
        Command::Pull(a) => cmd::pull::run(&cli.global, a),
        Command::Inspect(a) => cmd::inspect::run(&cli.global, a),
        Command::Images(a) => cmd::images::run(&cli.global, a),
        Command::Mount(a) => cmd::mount::run(&cli.global, a),
        Command::Umount(a) => cmd::mount::umount(&cli.global, a),
        Command::Stats(a) => cmd::mount::stats(&cli.global, a),
        Command::Gc(a) => cmd::mount::gc(&cli.global, a),
        Command::Run(a) => cmd::run::run(&cli.global, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::from(125)
        }
    }
}
