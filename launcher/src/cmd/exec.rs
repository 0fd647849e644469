//! `skiff exec`: run a command in a running container (see
//! [`crate::container::exec`]).

use super::Global;
use crate::container::exec::{self, ExecOptions, ExecProcess};
use crate::container::state::{self, Status};

/// Arguments of `skiff exec`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in the background: start the command and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// User to run as: name|uid[:group|gid], looked up in the container's files
    /// (default: the container's user).
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Set environment variables (K=V, or K to copy the host's value).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container (default: the container's).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// CONTAINER COMMAND [ARG...].
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CONTAINER COMMAND"
    )]
    pub args: Vec<String>,
}

/// Runs `skiff exec`: the command's exit status (128+N when killed by signal N), 125
/// when skiff fails, 126/127 when the command cannot be run or is not found.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let Some((key, command)) = args.args.split_first().filter(|(_, c)| !c.is_empty()) else {
        anyhow::bail!(
            "\"skiff exec\" requires at least 2 arguments: CONTAINER COMMAND [ARG...]\n\
             See 'skiff exec --help'."
        );
    };
    if args.detach && args.tty {
        anyhow::bail!("-d with -t is not supported");
    }
    let container = state::find(&global.root, key)?;
    let pid1 = match (container.status, container.pid1) {
        (Status::Running, Some(p)) if p.alive() => p,
        _ => anyhow::bail!("container {} is not running", container.name),
    };
    let Some(defaults) = &container.process else {
        anyhow::bail!(
            "container {} was started by an older skiff that did not record its \
             process settings; restart it to use exec",
            container.name
        );
    };
    let opts = ExecOptions {
        command: command.to_vec(),
        env: args.env,
        user: args.user,
        workdir: args.workdir,
        tty: args.tty,
        interactive: args.interactive,
        detach: args.detach,
    };
    let process = ExecProcess::new(defaults, &opts)?;
    match exec::exec(pid1.pid, &process, args.tty) {
        Ok(Some(status)) => Ok(status.code()),
        Ok(None) => Ok(0),
        Err(e) => {
            eprintln!("skiff: {e}");
            Ok(e.exit_code())
        }
    }
}
