//! Calling CNI plugins as the CNI spec (1.0) says a runtime does: exec the plugin named
//! by each `type` with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and
//! `CNI_PATH` in its environment and its config on stdin, and read its result (or
//! error) from stdout. ADD runs a network's plugins in order, each given the previous
//! one's result as `prevResult`; DEL runs them in reverse, each given ADD's final
//! result. Runtime config (here `portMappings`) goes only to plugins that declare the
//! capability.

use super::NetworkError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The CNI spec version skiff speaks (Debian 12's plugins, v1.1.1, do too).
pub const CNI_VERSION: &str = "1.0.0";

/// Where plugins are looked up: `$CNI_PATH` if set, else Debian's and the upstream
/// directory.
pub fn plugin_dirs() -> Vec<PathBuf> {
    match std::env::var_os("CNI_PATH") {
        Some(p) => std::env::split_paths(&p).collect(),
        None => vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
    }
}

/// One attachment of a container to a network, as the plugins see it.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`: a path to the container's network namespace.
    pub netns: &'a Path,
    /// `CNI_IFNAME`: the interface inside the container.
    pub ifname: &'a str,
    /// Runtime config offered to plugins by capability (`{"portMappings": [...]}`).
    pub runtime_config: &'a Value,
}

/// The parts of a CNI result skiff uses (the whole JSON is kept for DEL).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CniResult {
    /// Addresses given to interfaces.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

/// One address of a CNI result.
#[derive(Debug, Clone, Deserialize)]
pub struct IpConfig {
    /// `A.B.C.D/N`.
    pub address: String,
    /// The gateway, if the plugin set one.
    #[serde(default)]
    pub gateway: Option<String>,
}

impl CniResult {
    /// The first address without its prefix length, and its gateway.
    pub fn first_ip(&self) -> Option<(String, Option<String>)> {
        let ip = self.ips.first()?;
        let addr = ip.address.split('/').next().unwrap_or(&ip.address);
        Some((addr.to_string(), ip.gateway.clone()))
    }
}

/// ADD: runs the network's plugins in order and returns the final result. If a plugin
/// fails, the ones before it are undone (DEL of the whole list, as libcni does).
pub fn add(conflist: &Value, att: &Attachment<'_>) -> Result<Value, NetworkError> {
    let mut prev: Option<Value> = None;
    for plugin in plugins(conflist)? {
        let stdin = plugin_config(conflist, plugin, prev.as_ref(), att.runtime_config);
        match exec(plugin, "ADD", att, &stdin) {
            Ok(result) => prev = Some(result),
            Err(e) => {
                let _ = del(conflist, att, prev.as_ref());
                return Err(e);
            }
        }
    }
    prev.ok_or_else(|| NetworkError::BadConfig("a network without plugins".into()))
}

/// DEL: runs the network's plugins in reverse order with ADD's result as
/// `prevResult`. Every plugin runs even if one fails; the first failure is returned.
pub fn del(
    conflist: &Value,
    att: &Attachment<'_>,
    add_result: Option<&Value>,
) -> Result<(), NetworkError> {
    let mut first_err = None;
    for plugin in plugins(conflist)?.iter().rev() {
        let stdin = plugin_config(conflist, plugin, add_result, att.runtime_config);
        if let Err(e) = exec(plugin, "DEL", att, &stdin) {
            tracing::warn!("{e}");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn plugins(conflist: &Value) -> Result<&Vec<Value>, NetworkError> {
    conflist["plugins"]
        .as_array()
        .ok_or_else(|| NetworkError::BadConfig("no \"plugins\" list".into()))
}

/// One plugin's stdin: its own object plus the list's `cniVersion` and `name`,
/// `prevResult`, and the runtime config entries it has the capability for.
fn plugin_config(
    conflist: &Value,
    plugin: &Value,
    prev: Option<&Value>,
    runtime_config: &Value,
) -> Value {
    let mut conf = plugin.clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    let mut rc = serde_json::Map::new();
    if let (Some(caps), Some(offered)) = (
        plugin["capabilities"].as_object(),
        runtime_config.as_object(),
    ) {
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = offered.get(cap) {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
    }
    if !rc.is_empty() {
        conf["runtimeConfig"] = Value::Object(rc);
    }
    conf
}

/// Finds the plugin binary for `type` in the plugin directories.
fn find_plugin(kind: &str) -> Result<PathBuf, NetworkError> {
    if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
        return Err(NetworkError::BadConfig(format!("plugin type {kind:?}")));
    }
    plugin_dirs()
        .into_iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| NetworkError::MissingPlugin(kind.to_string()))
}

/// Runs one plugin command; returns its result (`{}` for DEL, which prints nothing).
fn exec(
    plugin: &Value,
    command: &str,
    att: &Attachment<'_>,
    stdin: &Value,
) -> Result<Value, NetworkError> {
    let kind = plugin["type"].as_str().unwrap_or("");
    let path = find_plugin(kind)?;
    let failed = |msg: String| NetworkError::Plugin {
        plugin: kind.to_string(),
        command: command.to_string(),
        msg,
    };
    let cni_path = std::env::join_paths(plugin_dirs()).unwrap_or_default();
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", att.container_id)
        .env("CNI_NETNS", att.netns)
        .env("CNI_IFNAME", att.ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("starting {}: {e}", path.display())))?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(stdin.to_string().as_bytes())
            .map_err(|e| failed(format!("writing its config: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("waiting: {e}")))?;
    tracing::debug!(plugin = kind, command, status = ?out.status, "cni plugin ran");
    if !out.status.success() {
        // The spec's error object: {"code": N, "msg": "...", "details": "..."}.
        let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let msg = match (err["msg"].as_str(), err["details"].as_str()) {
            (Some(m), Some(d)) if !d.is_empty() => format!("{m}: {d}"),
            (Some(m), _) => m.to_string(),
            _ => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        };
        return Err(failed(msg));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("its result is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_get_list_fields_prev_result_and_their_capabilities_only() {
        let list = json!({"cniVersion": "1.0.0", "name": "n", "plugins": []});
        let rc = json!({"portMappings": [{"hostPort": 1}], "bandwidth": {}});
        let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        let prev = json!({"ips": []});
        let conf = plugin_config(&list, &portmap, Some(&prev), &rc);
        assert_eq!(conf["name"], "n");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["prevResult"], prev);
        assert_eq!(
            conf["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 1}]})
        );
        let bridge = plugin_config(&list, &json!({"type": "bridge"}), None, &rc);
        assert!(bridge.get("runtimeConfig").is_none() && bridge.get("prevResult").is_none());
    }

    #[test]
    fn first_ip_drops_the_prefix() {
        let r: CniResult = serde_json::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0"}],
            "ips": [{"address": "10.89.0.2/16", "gateway": "10.89.0.1", "interface": 0}]
        }))
        .unwrap();
        assert_eq!(
            r.first_ip(),
            Some(("10.89.0.2".to_string(), Some("10.89.0.1".to_string())))
        );
        assert!(find_plugin("../bin/sh").is_err());
    }
}
