//! `skiff logs`: print a detached container's output.

use super::Global;
use crate::container::state::{self, ContainerState, Status};
use std::io::{Read, Seek, Write};

/// Arguments of `skiff logs`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Follow the output until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    /// Container id, id prefix or name.
    pub container: String,
}

/// Runs `skiff logs`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let s = state::find(&global.root, &args.container)?;
    let path = ContainerState::log_path(&global.root, &s.id);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) if !s.detached => anyhow::bail!(
            "container {} was not detached: its output went to the terminal",
            args.container
        ),
        Err(e) => return Err(anyhow::anyhow!("opening {}: {e}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
        if !args.follow {
            break;
        }
        let now = state::find(&global.root, &s.id)?;
        if now.status == Status::Exited {
            buf.clear();
            file.read_to_end(&mut buf)?;
            out.write_all(&buf)?;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let _ = file.stream_position();
    }
    Ok(0)
}
