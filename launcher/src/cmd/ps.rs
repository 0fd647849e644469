//! `skiff ps`: list containers.

use super::Global;
use crate::container::state::{self, Status};

/// Arguments of `skiff ps`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show all containers (default shows just running).
    #[arg(short, long)]
    pub all: bool,
    /// Only print the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs `skiff ps`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let all = state::list(&global.root)?;
    if !args.quiet {
        println!(
            "{:<12}  {:<24}  {:<20}  {:<16}",
            "CONTAINER ID", "COMMAND", "STATUS", "NAMES"
        );
    }
    for s in all
        .iter()
        .filter(|s| args.all || s.status == Status::Running)
    {
        if args.quiet {
            println!("{}", &s.id[..12.min(s.id.len())]);
            continue;
        }
        let status = match (s.status, s.exit_code) {
            (Status::Running, _) => "Up".to_string(),
            (Status::Created, _) => "Created".to_string(),
            (Status::Exited, Some(c)) => format!("Exited ({c})"),
            (Status::Exited, None) => "Exited".to_string(),
        };
        let mut command = format!("\"{}\"", s.command.join(" "));
        if command.len() > 24 {
            command.truncate(20);
            command.push_str("...\"");
        }
        println!(
            "{:<12}  {:<24}  {:<20}  {:<16}",
            &s.id[..12.min(s.id.len())],
            command,
            status,
            s.name
        );
    }
    Ok(0)
}
