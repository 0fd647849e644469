//! Mirror configuration in containerd's `hosts.toml` format
//! (<https://github.com/containerd/containerd/blob/main/docs/hosts.md>).
//!
//! `<hosts-dir>/<registry host[:port]>/hosts.toml` (or `<host>_<port>_`, or
//! `_default/hosts.toml` for registries without their own directory) lists the hosts to
//! try, in file order, before the registry itself:
//!
//! ```toml
//! server = "https://registry-1.docker.io"
//!
//! [host."http://mirror.lan:5000"]
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = false
//!   ca = "mirror-ca.pem"                  # or a list; relative to the registry's dir
//!   client = [["client.pem", "client.key"]]
//!   override_path = false                 # true: the URL path is the API root as-is
//!   header = { x-custom = "value" }
//! ```
//!
//! This module only reads the files; [`super::endpoint`] turns each entry into a host
//! requests can be sent to.

use std::path::{Path, PathBuf};
use url::Url;

/// Name of the file in each registry's directory.
pub const HOSTS_FILE: &str = "hosts.toml";
/// Directory whose `hosts.toml` applies to registries without their own.
pub const DEFAULT_DIR: &str = "_default";

/// Reading or interpreting a `hosts.toml` failed.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has fields of the wrong type.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// A value is not what containerd accepts there.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A certificate or key named by `ca` or `client` could not be loaded.
    #[error("TLS setup for {host}: {message}")]
    Tls {
        /// The host the certificate is for.
        host: String,
        /// What failed.
        message: String,
    },
}

/// What a host may be asked for (containerd's `capabilities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch blobs and manifests by digest.
    pub pull: bool,
    /// Resolve a tag to a manifest.
    pub resolve: bool,
    /// Push (Skiff pushes only to the registry itself; kept for completeness).
    pub push: bool,
}

impl Capabilities {
    /// Everything: containerd's default when `capabilities` is left out.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One host of a `hosts.toml`: a `[host."…"]` entry, or the file's top level (the
/// registry's own server).
#[derive(Clone, Debug, PartialEq)]
pub struct HostEntry {
    /// The API root, ending in `/` (`https://mirror:5000/v2/`; with `override_path`, the
    /// URL's own path).
    pub api_root: Url,
    /// What the host may be asked for.
    pub capabilities: Capabilities,
    /// Accept any certificate (`skip_verify`); `None` when not set.
    pub skip_verify: Option<bool>,
    /// CA certificate files trusted in addition to the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificate and key files (`None`: the key is in the certificate file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra headers sent with every request to the host.
    pub headers: Vec<(String, String)>,
}

impl HostEntry {
    /// `host[:port]` of the entry, for logs and `ns` decisions.
    pub fn authority(&self) -> String {
        authority(&self.api_root)
    }
}

/// `host[:port]` of a URL (the port only when it is not the scheme's default).
pub fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// A parsed `hosts.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostsFile {
    /// The `[host."…"]` entries, in file order (tried first).
    pub mirrors: Vec<HostEntry>,
    /// The registry's own server when `server` is given (else the registry as named).
    pub server: Option<HostEntry>,
    /// Settings of the file's top level (TLS, headers, capabilities) for the server,
    /// even when `server` is not given: the API root is then left to the caller.
    pub server_settings: ServerSettings,
    /// The file the configuration came from.
    pub path: PathBuf,
}

/// The top-level settings of a `hosts.toml`, which apply to the registry's own server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerSettings {
    /// `skip_verify`.
    pub skip_verify: Option<bool>,
    /// `ca`.
    pub ca: Vec<PathBuf>,
    /// `client`.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// `header`.
    pub headers: Vec<(String, String)>,
}

/// The fields one host table (or the top level) may carry.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RawHost {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<RawClient>,
    skip_verify: Option<bool>,
    header: Option<toml::Table>,
    override_path: bool,
}

/// `"a"` or `["a", "b"]`.
#[derive(serde::Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `client`: a file with both, a list of such files, or a list of `[cert, key]` pairs.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RawClient {
    One(String),
    Many(Vec<OneOrMany>),
}

/// The directory whose `hosts.toml` configures `registry` (as named in references, e.g.
/// `docker.io`, `localhost:5000`), as containerd looks for it: `host_port_`, then
/// `host:port`, then `_default`. `None` if none of them holds a `hosts.toml`.
pub fn find(hosts_dir: &Path, registry: &str) -> Option<PathBuf> {
    let mut names = Vec::new();
    let with_port = registry
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if let Some((host, port)) = with_port {
        names.push(format!("{host}_{port}_"));
    }
    names.push(registry.to_string());
    names.push(DEFAULT_DIR.to_string());
    names
        .into_iter()
        .map(|n| hosts_dir.join(n).join(HOSTS_FILE))
        .find(|p| p.is_file())
}

/// Loads the configuration for `registry` from `hosts_dir` (`None`: no file applies).
pub fn load(hosts_dir: &Path, registry: &str) -> Result<Option<HostsFile>, HostsError> {
    let Some(path) = find(hosts_dir, registry) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| HostsError::Read {
        path: path.clone(),
        source,
    })?;
    tracing::debug!(path = %path.display(), registry, "using hosts.toml");
    parse(&text, &path).map(Some)
}

/// Parses the text of `path` (relative `ca`/`client` paths are taken from its directory).
pub fn parse(text: &str, path: &Path) -> Result<HostsFile, HostsError> {
    let invalid = |message: String| HostsError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let parse_err = |e: toml::de::Error| HostsError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    };
    let mut table: toml::Table = text.parse().map_err(parse_err)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let server = match table.remove("server") {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(other) => {
            return Err(invalid(format!(
                "server must be a string, not a {}",
                other.type_str()
            )))
        }
    };
    // Preserve the order of `[host."…"]` tables: containerd tries them as written.
    let hosts = match table.remove("host") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            return Err(invalid(
                "host must be a table of [host.\"URL\"] entries".into(),
            ))
        }
    };
    let top: RawHost = toml::Value::Table(table).try_into().map_err(parse_err)?;
    let mut mirrors = Vec::new();
    for (url, value) in hosts {
        let raw: RawHost = value.try_into().map_err(parse_err)?;
        mirrors.push(entry(&url, raw, base).map_err(invalid)?);
    }
    let server_settings = ServerSettings {
        skip_verify: top.skip_verify,
        ca: files(top.ca.clone(), base),
        client: client_pairs(top.client.as_ref(), base).map_err(invalid)?,
        headers: headers(top.header.as_ref()).map_err(invalid)?,
    };
    let server = server
        .map(|s| entry(&s, top, base))
        .transpose()
        .map_err(invalid)?;
    Ok(HostsFile {
        mirrors,
        server,
        server_settings,
        path: path.to_path_buf(),
    })
}

/// One host entry from its URL (scheme defaults to https, as containerd's) and fields.
fn entry(url: &str, raw: RawHost, base: &Path) -> Result<HostEntry, String> {
    let with_scheme = if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let mut parsed = Url::parse(&with_scheme).map_err(|e| format!("host {url:?}: {e}"))?;
    if parsed.host_str().is_none() {
        return Err(format!("host {url:?} names no host"));
    }
    let path = parsed.path().trim_end_matches('/').to_string();
    let api_path = if raw.override_path || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    parsed.set_path(&format!("{api_path}/"));
    parsed.set_query(None);
    parsed.set_fragment(None);
    let capabilities = match &raw.capabilities {
        None => Capabilities::ALL,
        Some(list) => {
            let mut caps = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for c in list {
                match c.to_ascii_lowercase().as_str() {
                    "pull" => caps.pull = true,
                    "resolve" => caps.resolve = true,
                    "push" => caps.push = true,
                    other => return Err(format!("host {url:?}: unknown capability {other:?}")),
                }
            }
            caps
        }
    };
    Ok(HostEntry {
        api_root: parsed,
        capabilities,
        skip_verify: raw.skip_verify,
        ca: files(raw.ca, base),
        client: client_pairs(raw.client.as_ref(), base)?,
        headers: headers(raw.header.as_ref())?,
    })
}

/// Paths relative to the registry's directory made absolute.
fn files(list: Option<OneOrMany>, base: &Path) -> Vec<PathBuf> {
    list.map(OneOrMany::into_vec)
        .unwrap_or_default()
        .into_iter()
        .map(|p| base.join(p))
        .collect()
}

fn client_pairs(
    raw: Option<&RawClient>,
    base: &Path,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let items: Vec<&OneOrMany> = match raw {
        RawClient::One(s) => return Ok(vec![(base.join(s), None)]),
        RawClient::Many(list) => list.iter().collect(),
    };
    items
        .into_iter()
        .map(|item| match item {
            OneOrMany::One(cert) => Ok((base.join(cert), None)),
            OneOrMany::Many(pair) => match pair.as_slice() {
                [cert, key] if key.is_empty() => Ok((base.join(cert), None)),
                [cert, key] => Ok((base.join(cert), Some(base.join(key)))),
                _ => Err(format!("client pair {pair:?} must be [certificate, key]")),
            },
        })
        .collect()
}

fn headers(raw: Option<&toml::Table>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, value) in raw.into_iter().flatten() {
        match value {
            toml::Value::String(s) => out.push((name.clone(), s.clone())),
            toml::Value::Array(list) => {
                for v in list {
                    let s = v.as_str().ok_or_else(|| {
                        format!("header {name:?}: a {} is not a string", v.type_str())
                    })?;
                    out.push((name.clone(), s.to_string()));
                }
            }
            other => {
                return Err(format!(
                    "header {name:?}: a {} is not a string",
                    other.type_str()
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_at(text: &str) -> HostsFile {
        parse(
            text,
            Path::new("/etc/containerd/certs.d/docker.io/hosts.toml"),
        )
        .unwrap()
    }

    #[test]
    fn parses_containerd_example_in_order() {
        let f = parse_at(
            r#"
server = "https://registry-1.docker.io"

[host."https://mirror-b.lan"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
  client = [["/abs/c.pem", "c.key"], "both.pem"]
  skip_verify = true
  header = { x-a = "1", x-b = ["2", "3"] }

[host."http://mirror-a.lan:5000/prefix"]
  capabilities = ["pull"]
  override_path = true

[host."mirror-c.lan"]
"#,
        );
        let roots: Vec<&str> = f.mirrors.iter().map(|m| m.api_root.as_str()).collect();
        assert_eq!(
            roots,
            [
                "https://mirror-b.lan/v2/",
                "http://mirror-a.lan:5000/prefix/",
                "https://mirror-c.lan/v2/"
            ]
        );
        let b = &f.mirrors[0];
        assert_eq!(
            b.capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
        assert_eq!(b.skip_verify, Some(true));
        assert_eq!(
            b.ca,
            [PathBuf::from("/etc/containerd/certs.d/docker.io/ca.pem")]
        );
        assert_eq!(
            b.client,
            [
                (
                    PathBuf::from("/abs/c.pem"),
                    Some(PathBuf::from("/etc/containerd/certs.d/docker.io/c.key"))
                ),
                (
                    PathBuf::from("/etc/containerd/certs.d/docker.io/both.pem"),
                    None
                )
            ]
        );
        assert_eq!(
            b.headers,
            [
                ("x-a".to_string(), "1".to_string()),
                ("x-b".into(), "2".into()),
                ("x-b".into(), "3".into())
            ]
        );
        assert!(!f.mirrors[1].capabilities.resolve);
        assert_eq!(f.mirrors[1].authority(), "mirror-a.lan:5000");
        assert_eq!(f.mirrors[2].capabilities, Capabilities::ALL);
        assert_eq!(
            f.server.unwrap().api_root.as_str(),
            "https://registry-1.docker.io/v2/"
        );
    }

    #[test]
    fn top_level_settings_without_server() {
        let f = parse_at("skip_verify = true\nca = [\"a.pem\", \"/b.pem\"]\n");
        assert!(f.mirrors.is_empty());
        assert!(f.server.is_none());
        assert_eq!(f.server_settings.skip_verify, Some(true));
        assert_eq!(f.server_settings.ca.len(), 2);
    }

    #[test]
    fn rejects_bad_files() {
        let p = Path::new("/x/hosts.toml");
        assert!(matches!(
            parse("[host.\"http://m\"]\ncapabilities = [\"fly\"]\n", p),
            Err(HostsError::Invalid { .. })
        ));
        assert!(matches!(
            parse("server = [", p),
            Err(HostsError::Parse { .. })
        ));
        assert!(parse("[host.\"http://m\"]\nclient = [[\"a\", \"b\", \"c\"]]\n", p).is_err());
        assert!(parse("[host.\"http://m\"]\nskip_verify = \"yes\"\n", p).is_err());
    }

    #[test]
    fn finds_the_registry_dir_then_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path(), "reg.lan:5000"), None);
        let default = dir.path().join("_default");
        std::fs::create_dir(&default).unwrap();
        std::fs::write(default.join(HOSTS_FILE), "").unwrap();
        assert_eq!(
            find(dir.path(), "reg.lan:5000"),
            Some(default.join(HOSTS_FILE))
        );
        let own = dir.path().join("reg.lan:5000");
        std::fs::create_dir(&own).unwrap();
        std::fs::write(own.join(HOSTS_FILE), "").unwrap();
        assert_eq!(find(dir.path(), "reg.lan:5000"), Some(own.join(HOSTS_FILE)));
        let underscored = dir.path().join("reg.lan_5000_");
        std::fs::create_dir(&underscored).unwrap();
        std::fs::write(underscored.join(HOSTS_FILE), "").unwrap();
        assert_eq!(
            find(dir.path(), "reg.lan:5000"),
            Some(underscored.join(HOSTS_FILE))
        );
        assert_eq!(
            find(dir.path(), "docker.io"),
            Some(default.join(HOSTS_FILE))
        );
    }
}
