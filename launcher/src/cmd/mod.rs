//! One module per subcommand; each has an `Args` (clap) and a `run` returning the
//! process exit status.

pub mod commit;
pub mod convert;
pub mod exec;
pub mod images;
pub mod index;
pub mod inspect;
pub mod kill;
pub mod lazy;
pub mod local_image;
pub mod login;
pub mod logs;
pub mod mirror;
pub mod mount;
pub mod network;
pub mod profile;
pub mod ps;
pub mod pull;
pub mod push;
pub mod registry_args;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod stop;
pub mod tag;

use skiff_proto::store::RootLayout;
use std::path::PathBuf;

/// Options every subcommand takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Where Skiff keeps its store, indexes and cache.
    #[arg(
        long,
        env = "SKIFF_ROOT",
        default_value = "/var/lib/skiff",
        global = true
    )]
    pub root: PathBuf,
    /// More logging (once info, twice debug, three times trace); RUST_LOG overrides.
    /// The short `-v` is taken before the subcommand (`skiff -v pull …`), because
    /// `skiff run -v` is a volume, as in docker.
    #[arg(long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl Global {
    /// The paths under `--root`.
    pub fn layout(&self) -> RootLayout {
        RootLayout::new(&self.root)
    }
}

/// Runs `act` on each container named on the command line, as docker's `stop`, `kill`
/// and `rm` do: each name printed once done, each failure printed and the rest still
/// done; exit status 1 if any failed.
pub fn each_container(
    names: &[String],
    mut act: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<u8> {
    let mut code = 0;
    for name in names {
        match act(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("skiff: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Sets up `tracing` on stderr: `RUST_LOG` if set, else a level from `-v`.
pub fn init_tracing(verbose: u8) {
    // fuser logs requests it has no handler for (e.g. ioctl) as warnings: noise for a
    // user, so it speaks only from -vv on.
    let default = match verbose {
        0 => "warn,fuser=error",
        1 => "info,fuser=error",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
