//! `skiff mount` and `skiff umount`.

use super::Global;
use std::path::PathBuf;

/// Arguments of `skiff mount`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference.
    pub image: String,
    /// Where to mount the merged view.
    pub dir: PathBuf,
}

/// Arguments of `skiff umount`.
#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mount point.
    pub dir: PathBuf,
}

/// Runs `skiff mount`.
pub fn run(_global: &Global, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("skiff mount is not implemented yet")
}

/// Runs `skiff umount`.
pub fn umount(_global: &Global, _args: UmountArgs) -> anyhow::Result<u8> {
    anyhow::bail!("skiff umount is not implemented yet")
}
