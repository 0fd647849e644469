//! `skiff run`.

use super::Global;

/// Arguments of `skiff run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference.
    pub image: Option<String>,
}

/// Runs `skiff run`.
pub fn run(_global: &Global, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("skiff run is not implemented yet")
}
