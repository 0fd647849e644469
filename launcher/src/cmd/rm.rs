//! `skiff rm`: remove stopped containers' state.

use super::Global;
use crate::container::state::{self, Status};

/// Arguments of `skiff rm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stop (SIGKILL) running containers first.
    #[arg(short, long)]
    pub force: bool,
    /// Container ids, id prefixes or names.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Runs `skiff rm`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let mut code = 0;
    for c in &args.containers {
        let result = (|| -> anyhow::Result<()> {
            let s = state::find(&global.root, c)?;
            if matches!(s.status, Status::Running | Status::Restarting) {
                if !args.force {
                    anyhow::bail!("container {c} is running: stop it first or use --force");
                }
                super::stop::stop(global, &s.id, std::time::Duration::ZERO)?;
            }
            let paths = global.layout().container(&s.id);
            // A monitor that died may have left its view with the daemon.
            crate::daemon::release(&global.root, &paths.rootfs());
            let dir = paths.dir().to_path_buf();
            std::fs::remove_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
            Ok(())
        })();
        match result {
            Ok(()) => println!("{c}"),
            Err(e) => {
                eprintln!("skiff: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}
