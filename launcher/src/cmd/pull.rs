//! `skiff pull`.

use super::Global;

/// Arguments of `skiff pull`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference.
    pub image: Option<String>,
}

/// Runs `skiff pull`.
pub fn run(_global: &Global, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("skiff pull is not implemented yet")
}
