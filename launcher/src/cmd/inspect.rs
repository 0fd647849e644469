//! `skiff inspect`.

use super::Global;

/// Arguments of `skiff inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference.
    pub image: Option<String>,
}

/// Runs `skiff inspect`.
pub fn run(_global: &Global, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("skiff inspect is not implemented yet")
}
