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
    /// Only containers matching: label=KEY or label=KEY=VALUE (repeatable: all must
    /// match), name=NAME, status=running|exited|created.
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// Whether container `s` passes every `--filter`.
fn matches(s: &state::ContainerState, filters: &[String]) -> anyhow::Result<bool> {
    for f in filters {
        let ok = match f.split_once('=') {
            Some(("label", want)) => s
                .labels
                .iter()
                .any(|l| l == want || l.split_once('=').map(|(k, _)| k) == Some(want)),
            Some(("name", name)) => s.name == name,
            Some(("status", st)) => {
                let now = match s.status {
                    Status::Running => "running",
                    Status::Created => "created",
                    Status::Exited => "exited",
                };
                now == st
            }
            _ => anyhow::bail!(
                "invalid --filter {f:?}: want label=KEY[=VALUE], name=NAME or status=STATUS"
            ),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
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
        if !matches(s, &args.filter)? {
            continue;
        }
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
