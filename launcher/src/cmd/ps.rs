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
    /// match), name=NAME, status=running|restarting|exited|created.
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
            Some(("status", st)) => status_name(s.status) == st,
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

/// docker's name of a status (`ps --filter status=`, `inspect`'s State.Status).
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Running => "running",
        Status::Restarting => "restarting",
        Status::Created => "created",
        Status::Exited => "exited",
    }
}

/// The STATUS column, as docker writes it: `Up 5 seconds`, `Restarting (1) 2
/// seconds ago` (with the last exit code), `Exited (0) 3 minutes ago`, `Created`.
fn status_text(s: &state::ContainerState, now: u64) -> String {
    let ago = |t: Option<u64>| t.map(|t| human_duration(now.saturating_sub(t)));
    match (s.status, s.exit_code) {
        (Status::Running, _) => match ago(s.started_at) {
            Some(d) => format!("Up {d}"),
            None => "Up".to_string(),
        },
        (Status::Created, _) => "Created".to_string(),
        (Status::Restarting, code) => {
            let mut t = format!("Restarting ({})", code.unwrap_or_default());
            if let Some(d) = ago(s.finished_at) {
                t.push_str(&format!(" {d} ago"));
            }
            t
        }
        (Status::Exited, code) => {
            let mut t = match code {
                Some(c) => format!("Exited ({c})"),
                None => "Exited".to_string(),
            };
            if let Some(d) = ago(s.finished_at) {
                t.push_str(&format!(" {d} ago"));
            }
            t
        }
    }
}

/// A duration in seconds as docker's `units.HumanDuration` writes it.
fn human_duration(secs: u64) -> String {
    let (minutes, hours, days) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".to_string(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if days < 14 => format!("{days} days"),
        _ if days < 60 => format!("{} weeks", days / 7),
        _ if days < 365 * 2 => format!("{} months", days / 30),
        _ => format!("{} years", days / 365),
    }
}

/// Runs `skiff ps`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let all = state::list(&global.root)?;
    if !args.quiet {
        println!(
            "{:<12}  {:<24}  {:<28}  {:<16}",
            "CONTAINER ID", "COMMAND", "STATUS", "NAMES"
        );
    }
    let now = state::now();
    for s in all
        .iter()
        // docker's `ps` lists restarting containers as running ones.
        .filter(|s| args.all || matches!(s.status, Status::Running | Status::Restarting))
    {
        if !matches(s, &args.filter)? {
            continue;
        }
        if args.quiet {
            println!("{}", &s.id[..12.min(s.id.len())]);
            continue;
        }
        let status = status_text(s, now);
        let mut command = format!("\"{}\"", s.command.join(" "));
        if command.len() > 24 {
            command.truncate(20);
            command.push_str("...\"");
        }
        println!(
            "{:<12}  {:<24}  {:<28}  {:<16}",
            &s.id[..12.min(s.id.len())],
            command,
            status,
            s.name
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_docker_writes_them() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(60), "About a minute");
        assert_eq!(human_duration(150), "2 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(20 * 86400), "2 weeks");
        assert_eq!(human_duration(90 * 86400), "3 months");
        assert_eq!(human_duration(800 * 86400), "2 years");
    }
}
