//! `skiff images`.

use super::Global;

/// Arguments of `skiff images`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference.
    pub image: Option<String>,
}

/// Runs `skiff images`.
pub fn run(_global: &Global, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("skiff images is not implemented yet")
}
