//! `skiff login` / `skiff logout`: check credentials against a registry and keep them
//! where docker keeps them (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`,
//! or the credential helper that file names), so `skiff pull`, `run` and the daemon
//! (and docker, podman, skopeo) use them. See [`skiff_proto::registry::login`].

use super::registry_args::runtime;
use super::Global;
use anyhow::{bail, Context};
use skiff_proto::registry::credentials::docker_config_path;
use skiff_proto::registry::login::DockerConfigFile;
use skiff_proto::registry::{Client, ClientOptions, Credentials};
use std::io::{BufRead, IsTerminal, Read, Write};

/// Arguments of `skiff login`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// User name (asked for on a terminal when missing).
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (visible to other users in the process list: prefer
    /// --password-stdin).
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Reach this registry (host[:port]) over plain HTTP. Loopback registries always
    /// use plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// The registry (default: Docker Hub).
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

/// Arguments of `skiff logout`.
#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// The registry (default: Docker Hub).
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

/// The registry as references name it, from what docker accepts after `login`
/// (`host[:port]`, with or without a scheme or path; Docker Hub's aliases).
pub fn registry_name(server: Option<&str>) -> String {
    let s = server.unwrap_or("docker.io").trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    match s.split('/').next().unwrap_or(s) {
        "" | "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        host => host.to_string(),
    }
}

/// The config file `login` and `logout` change.
fn config_file() -> anyhow::Result<DockerConfigFile> {
    let Some(path) = docker_config_path() else {
        bail!("neither DOCKER_CONFIG nor HOME is set: no place for docker's config.json");
    };
    Ok(DockerConfigFile::open(&path)?)
}

/// Runs `skiff login`: exits 0 once the registry accepted the credentials and they
/// are stored, 1 when the registry refused them (nothing is written then).
pub fn run(_global: &Global, args: Args) -> anyhow::Result<u8> {
    let registry = registry_name(args.server.as_deref());
    let username = match &args.username {
        Some(u) => u.clone(),
        None if args.password_stdin => bail!("--password-stdin needs --username"),
        None => prompt("Username: ", false)?,
    };
    if username.is_empty() {
        bail!("a user name is required");
    }
    let password = match (&args.password, args.password_stdin) {
        (Some(p), _) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p.clone()
        }
        (None, true) => {
            let mut p = String::new();
            std::io::stdin()
                .read_to_string(&mut p)
                .context("reading the password from stdin")?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => prompt("Password: ", true)?,
    };
    if password.is_empty() {
        bail!("a password is required");
    }
    let credentials = Credentials::basic(&username, &password);
    let client = Client::new(
        &registry,
        ClientOptions {
            credentials: Some(credentials),
            // Only the credentials being checked, never those stored already.
            use_docker_config: false,
            insecure_registries: args.insecure_registries.clone(),
            ..ClientOptions::default()
        },
    )
    .with_context(|| format!("setting up a client for {registry}"))?;
    if let Err(e) = runtime()?.block_on(client.ping()) {
        eprintln!("skiff: login to {registry} failed: {e}");
        return Ok(1);
    }
    let mut file = config_file()?;
    file.store(&registry, &username, &password)?;
    file.save()?;
    println!("Login Succeeded");
    Ok(0)
}

/// Runs `skiff logout`.
pub fn logout(_global: &Global, args: LogoutArgs) -> anyhow::Result<u8> {
    let registry = registry_name(args.server.as_deref());
    let mut file = config_file()?;
    let had = file.erase(&registry)?;
    file.save()?;
    if had {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(0)
}

/// Asks on the terminal (stdin) for one line; `secret` turns echo off meanwhile.
fn prompt(question: &str, secret: bool) -> anyhow::Result<String> {
    use nix::sys::termios::{self, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "cannot ask for {question:?} without a terminal: use --username and --password-stdin"
        );
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let saved = termios::tcgetattr(&stdin).ok();
    if let (true, Some(t)) = (secret, &saved) {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let (true, Some(t)) = (secret, &saved) {
        let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, t);
        eprintln!();
    }
    read.context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_read_like_docker() {
        assert_eq!(registry_name(None), "docker.io");
        assert_eq!(
            registry_name(Some("https://index.docker.io/v1/")),
            "docker.io"
        );
        assert_eq!(registry_name(Some("localhost:5000")), "localhost:5000");
        assert_eq!(
            registry_name(Some("http://127.0.0.1:5000/v2/")),
            "127.0.0.1:5000"
        );
    }
}
