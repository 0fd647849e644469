//! `skiff network create|ls|rm`: the CNI networks containers attach to with
//! `--network NAME`; and the network flags of `skiff run` (`-p`, `--dns*`,
//! `--add-host`).

use super::Global;
use crate::network::attach::{self, NetworkFlags};
use crate::network::ipv4::Ipv4Net;
use crate::network::store::NetworkStore;
use crate::network::NetworkError;

/// Arguments of `skiff network`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(clap::Subcommand, Debug)]
enum NetworkCommand {
    /// Create a bridge network (its own Linux bridge, subnet and outbound NAT).
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls,
    /// Remove networks no container uses.
    #[command(alias = "remove")]
    Rm(RmArgs),
}

/// Arguments of `skiff network create`.
#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// IPv4 subnet (default: the first free /24 of 10.90.0.0/16; for the network named
    /// `bridge`, the default network, 10.89.0.0/16). The gateway is its first address.
    #[arg(long, value_name = "CIDR")]
    subnet: Option<String>,
    /// The network's name.
    name: String,
}

/// Arguments of `skiff network rm`.
#[derive(clap::Args, Debug)]
struct RmArgs {
    /// Networks to remove.
    #[arg(required = true)]
    names: Vec<String>,
}

/// The network flags of `skiff run` (`--network` itself is `run`'s own).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunNetworkArgs {
    /// Publish a container port: [IP:]HOST:CONTAINER[/tcp|udp] (bridge networks).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/PROTO]"
    )]
    pub publish: Vec<String>,
    /// Nameserver for the container's resolv.conf (replaces the host's).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// DNS search domain ("." for none).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// resolv.conf option (e.g. ndots:2).
    #[arg(long = "dns-option", value_name = "OPT")]
    pub dns_option: Vec<String>,
    /// Add HOST:IP to /etc/hosts (IP may be host-gateway: the network's gateway).
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_host: Vec<String>,
}

impl RunNetworkArgs {
    /// These flags with `--network`'s value.
    pub fn flags(&self, network: Option<&str>) -> NetworkFlags {
        NetworkFlags {
            network: network.map(str::to_string),
            publish: self.publish.clone(),
            dns: self.dns.clone(),
            dns_search: self.dns_search.clone(),
            dns_option: self.dns_option.clone(),
            add_host: self.add_host.clone(),
        }
    }
}

/// Runs `skiff network`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let store = NetworkStore::new(&global.root);
    match args.command {
        NetworkCommand::Create(a) => {
            let subnet = a
                .subnet
                .as_deref()
                .map(|s| Ipv4Net::parse(s).ok_or_else(|| NetworkError::BadSubnet(s.into())))
                .transpose()?;
            let _lock = store.lock()?;
            store.create(&a.name, subnet)?;
            println!("{}", a.name);
            Ok(0)
        }
        NetworkCommand::Ls => {
            println!("{:<20} {:<10} SUBNET", "NAME", "BRIDGE");
            for n in store.list()? {
                let subnet = n.subnet().map(|s| s.to_string()).unwrap_or_default();
                println!("{:<20} {:<10} {subnet}", n.name, n.bridge().unwrap_or(""));
            }
            Ok(0)
        }
        NetworkCommand::Rm(a) => {
            // Containers whose skiff was killed are detached first.
            crate::container::state::list(&global.root)?;
            let mut code = 0;
            for name in &a.names {
                let _lock = store.lock()?;
                let users = attach::users_of(&global.root, name);
                let removed = if users.is_empty() {
                    store.remove(name)
                } else {
                    Err(NetworkError::InUse(name.clone(), users.join(", ")))
                };
                match removed {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("skiff: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}
