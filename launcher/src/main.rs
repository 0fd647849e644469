//! `skiff`: start containers from registry images without pulling them first.

mod cmd;
mod container;
mod daemon;
mod mirror;
mod network;

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
    /// More logging: -v info, -vv debug, -vvv trace (same as --verbose).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose_short: u8,
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
    /// Make a container's changes a new image in the local store.
    Commit(cmd::commit::Args),
    /// Push an image of the local store to its registry.
    Push(cmd::push::Args),
    /// Give an image of the local store another name.
    Tag(cmd::tag::Args),
    /// Remove images from the local store.
    Rmi(cmd::rmi::Args),
    /// Build (or load) every layer's lazy-read index; --push publishes them.
    Index(cmd::index::Args),
    /// Rewrite an image's layers to eStargz and push it under another name.
    Convert(cmd::convert::Args),
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
    /// Log in to a registry (checks the credentials, then stores them as docker does).
    Login(cmd::login::Args),
    /// Forget a registry's stored credentials.
    Logout(cmd::login::LogoutArgs),
    /// Run a command in a running container.
    Exec(cmd::exec::Args),
    /// List containers.
    Ps(cmd::ps::Args),
    /// Print a detached container's output.
    Logs(cmd::logs::Args),
    /// Stop running containers (SIGTERM, then SIGKILL).
    Stop(cmd::stop::Args),
    /// Send a signal (SIGKILL by default) to running containers.
    Kill(cmd::kill::Args),
    /// Remove containers.
    Rm(cmd::rm::Args),
    /// Manage networks: create, ls, rm.
    Network(cmd::network::Args),
    /// Prefetch profiles: push, pull or show an image's recorded start-up reads.
    Profile(cmd::profile::Args),
    /// Run the resident daemon serving every mount of the root; or `status` / `stop` it.
    Daemon(daemon::Args),
    /// Serve a lazy, range-caching pull-through mirror of one registry.
    Mirror(cmd::mirror::Args),
}

fn main() -> ExitCode {
    // `skiff container-init`: a container's setup, which `skiff run` and `skiff exec`
    // execute afresh in their forked child (container::reexec). Not a user command,
    // so not one of clap's, and checked before anything starts a thread.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == container::reexec::SUBCOMMAND)
    {
        container::reexec::main();
    }
    // Big freed buffers (index decoding, inode tables) go back to the kernel.
    skiff_fs::tree::tune_allocator();
    // Like docker, a usage error exits 125 (clap's default would be 2).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 125 } else { 0 });
        }
    };
    cmd::init_tracing(cli.global.verbose.saturating_add(cli.verbose_short));
    // Before any command writes under the root: host users must not reach the image
    // content and container trees skiff keeps there (see skiff_proto::store::secure_root).
    if let Err(e) = skiff_proto::store::secure_root(&cli.global.layout()) {
        tracing::warn!(root = %cli.global.root.display(), "securing the skiff root: {e}");
    }
    let result = match cli.command {
        Command::Pull(a) => cmd::pull::run(&cli.global, a),
        Command::Inspect(a) => cmd::inspect::run(&cli.global, a),
        Command::Images(a) => cmd::images::run(&cli.global, a),
        Command::Commit(a) => cmd::commit::run(&cli.global, a),
        Command::Push(a) => cmd::push::run(&cli.global, a),
        Command::Tag(a) => cmd::tag::run(&cli.global, a),
        Command::Rmi(a) => cmd::rmi::run(&cli.global, a),
        Command::Index(a) => cmd::index::run(&cli.global, a),
        Command::Convert(a) => cmd::convert::run(&cli.global, a),
        Command::Mount(a) => cmd::mount::run(&cli.global, a),
        Command::Umount(a) => cmd::mount::umount(&cli.global, a),
        Command::Stats(a) => cmd::mount::stats(&cli.global, a),
        Command::Gc(a) => cmd::mount::gc(&cli.global, a),
        Command::Run(a) => cmd::run::run(&cli.global, a),
        Command::Exec(a) => cmd::exec::run(&cli.global, a),
        Command::Login(a) => cmd::login::run(&cli.global, a),
        Command::Logout(a) => cmd::login::logout(&cli.global, a),
        Command::Ps(a) => cmd::ps::run(&cli.global, a),
        Command::Logs(a) => cmd::logs::run(&cli.global, a),
        Command::Stop(a) => cmd::stop::run(&cli.global, a),
        Command::Kill(a) => cmd::kill::run(&cli.global, a),
        Command::Rm(a) => cmd::rm::run(&cli.global, a),
        Command::Network(a) => cmd::network::run(&cli.global, a),
        Command::Profile(a) => cmd::profile::run(&cli.global, a),
        Command::Daemon(a) => daemon::run(&cli.global, a),
        Command::Mirror(a) => cmd::mirror::run(&cli.global, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::from(125)
        }
    }
}
