//! Where registry credentials come from: explicit flags, or Docker's config file
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) with its `auths`,
//! `credHelpers` and `credsStore` (`docker-credential-<name> get`).

use super::error::{RegistryError, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (Basic auth, and Basic on the token endpoint).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// An OAuth2 refresh token ("identity token") exchanged at the token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

impl Credentials {
    /// Username/password credentials.
    pub fn basic(username: &str, password: &str) -> Credentials {
        Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

/// The Docker config file Skiff reads: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Keys a registry may be filed under in `auths` (Docker Hub has legacy spellings).
pub(crate) fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if registry == "docker.io"
        || registry == "registry-1.docker.io"
        || registry == "index.docker.io"
    {
        keys.insert(0, "https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
        keys.push("docker.io".into());
        keys.push("registry-1.docker.io".into());
    }
    keys
}

/// The name docker files `registry`'s credentials under (in `auths` and credential
/// helpers): Docker Hub's legacy URL, else the registry as named.
pub(crate) fn server_url(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// Credentials for `registry` (as named in references, e.g. `docker.io`) from the
/// default Docker config file; `Ok(None)` when there are none.
pub fn from_docker_config(registry: &str) -> Result<Option<Credentials>> {
    match docker_config_path() {
        Some(path) => from_docker_config_file(&path, registry),
        None => Ok(None),
    }
}

/// Like [`from_docker_config`] with an explicit config file. A missing file means no
/// credentials; an unreadable or malformed one is an error.
pub fn from_docker_config_file(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    lookup(path, registry, None)
}

/// The lookup, with credential helpers optionally taken from `helper_dir` instead of
/// `$PATH` (tests use this to avoid changing the process environment).
fn lookup(path: &Path, registry: &str, helper_dir: Option<&Path>) -> Result<Option<Credentials>> {
    let err = |message: String| RegistryError::Credentials {
        registry: registry.to_string(),
        message,
    };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("reading {}: {e}", path.display()))),
    };
    let config: DockerConfig = serde_json::from_slice(&text)
        .map_err(|e| err(format!("parsing {}: {e}", path.display())))?;
    let keys = keys_for(registry);
    // A per-registry helper wins, then entries in `auths`, then the default store.
    if let Some(helper) = keys.iter().find_map(|k| config.cred_helpers.get(k)) {
        return run_helper(helper, registry, helper_dir);
    }
    if let Some(entry) = keys.iter().find_map(|k| config.auths.get(k)) {
        if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken(token.clone())));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials::basic(u, p)));
        }
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| {
                    err(format!(
                        "auths entry in {} is not base64: {e}",
                        path.display()
                    ))
                })?;
            let text = String::from_utf8(decoded)
                .map_err(|_| err(format!("auths entry in {} is not UTF-8", path.display())))?;
            let (u, p) = text.split_once(':').ok_or_else(|| {
                err(format!(
                    "auths entry in {} is not user:password",
                    path.display()
                ))
            })?;
            return Ok(Some(Credentials::basic(u, p)));
        }
    }
    if let Some(store) = &config.creds_store {
        return run_helper(store, registry, helper_dir);
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> <action>` (from `helper_dir` instead of `$PATH`
/// if given) with `input` on stdin; its output, whatever its exit status.
pub(crate) fn call_helper(
    helper: &str,
    helper_dir: Option<&Path>,
    action: &str,
    input: &[u8],
) -> std::io::Result<std::process::Output> {
    let program = format!("docker-credential-{helper}");
    let path = match helper_dir {
        Some(dir) => dir.join(&program),
        None => PathBuf::from(&program),
    };
    let mut child = Command::new(&path)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    child.wait_with_output()
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin.
fn run_helper(
    helper: &str,
    registry: &str,
    helper_dir: Option<&Path>,
) -> Result<Option<Credentials>> {
    let err = |message: String| RegistryError::Credentials {
        registry: registry.to_string(),
        message,
    };
    let program = format!("docker-credential-{helper}");
    let server = server_url(registry);
    let out = call_helper(helper, helper_dir, "get", server.as_bytes())
        .map_err(|e| err(format!("running {program}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Helpers report "credentials not found in native keychain" for unknown servers.
        if stdout.contains("credentials not found") || stderr.contains("credentials not found") {
            return Ok(None);
        }
        return Err(err(format!(
            "{program} get failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|e| err(format!("{program} printed malformed JSON: {e}")))?;
    if reply.username == "<token>" {
        Ok(Some(Credentials::IdentityToken(reply.secret)))
    } else {
        Ok(Some(Credentials::basic(&reply.username, &reply.secret)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_auths_helpers_and_store() {
        let dir = tempfile::tempdir().unwrap();
        let helper_dir = dir.path().join("bin");
        std::fs::create_dir(&helper_dir).unwrap();
        let helper = helper_dir.join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\nif [ \"$server\" = helped.example ]; then echo '{\"ServerURL\":\"x\",\"Username\":\"hu\",\"Secret\":\"hs\"}'; else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"auths":{{"reg.example:5000":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"identitytoken":"tok"}}}},
                   "credHelpers":{{"helped.example":"fake"}},"credsStore":"fake"}}"#
            ),
        )
        .unwrap();
        let get = |registry: &str| lookup(&cfg, registry, Some(&helper_dir));
        assert_eq!(
            get("reg.example:5000").unwrap(),
            Some(Credentials::basic("alice", "s3cret"))
        );
        assert_eq!(
            get("docker.io").unwrap(),
            Some(Credentials::IdentityToken("tok".into()))
        );
        assert_eq!(
            get("helped.example").unwrap(),
            Some(Credentials::basic("hu", "hs"))
        );
        // Falls through to credsStore, which knows nothing about it.
        assert_eq!(get("other.example").unwrap(), None);
        assert_eq!(
            from_docker_config_file(&dir.path().join("missing.json"), "x").unwrap(),
            None
        );
    }
}
