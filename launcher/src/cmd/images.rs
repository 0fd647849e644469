//! `skiff images`: what the local store holds.

use super::pull::human;
use super::registry_args::Format;
use super::Global;
use skiff_proto::store::Store;

/// Arguments of `skiff images`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Runs `skiff images`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let store = Store::open(&global.root)?;
    let images = store.images()?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&images)?),
        Format::Text => {
            println!(
                "{:<50} {:<19} {:<14} {:>6} {:>10}",
                "REFERENCE", "DIGEST", "PLATFORM", "LAYERS", "SIZE"
            );
            for i in images {
                let digest = i.manifest_digest.to_string();
                println!(
                    "{:<50} {:<19} {:<14} {:>6} {:>10}",
                    i.reference,
                    digest.get(..19).unwrap_or(&digest),
                    i.platform,
                    i.layers,
                    human(i.size)
                );
            }
        }
    }
    Ok(0)
}
