//! What `login` and `logout` change, as docker does: the registry's entry in
//! `config.json`'s `auths` (`auth` = base64 of `user:password`), or, when the file
//! names a credential helper for the registry (`credHelpers`) or for all
//! (`credsStore`), `docker-credential-<helper> store` / `erase` (with an empty
//! `auths` entry, as docker leaves one). Every other key of the file is kept; the file
//! is written whole (temp file + rename) with mode 0600, its directory created 0700.

use super::credentials::{call_helper, keys_for, server_url};
use base64::Engine as _;
use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors reading or writing docker's config file, or from a credential helper.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Reading or writing the config file (or its directory) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The config file is not a JSON object.
    #[error("{path} is not a docker config file: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A credential helper could not be run or refused.
    #[error("{program} {action}: {message}")]
    Helper {
        /// `docker-credential-<name>`.
        program: String,
        /// `store` or `erase`.
        action: &'static str,
        /// What it said.
        message: String,
    },
}

/// Docker's config file, as JSON, to change and write back.
pub struct DockerConfigFile {
    path: PathBuf,
    doc: Map<String, Value>,
    /// Where helpers are looked for instead of `$PATH` (tests).
    helper_dir: Option<PathBuf>,
}

impl DockerConfigFile {
    /// Reads `path` (a missing file is an empty config).
    pub fn open(path: &Path) -> Result<DockerConfigFile, LoginError> {
        let doc = match std::fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(LoginError::Malformed {
                        path: path.to_path_buf(),
                        message: "not a JSON object".into(),
                    })
                }
                Err(e) => {
                    return Err(LoginError::Malformed {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(source) => {
                return Err(LoginError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(DockerConfigFile {
            path: path.to_path_buf(),
            doc,
            helper_dir: None,
        })
    }

    /// Looks for credential helpers in `dir` instead of on `$PATH`.
    pub fn with_helper_dir(mut self, dir: &Path) -> DockerConfigFile {
        self.helper_dir = Some(dir.to_path_buf());
        self
    }

    /// The key `registry` (as in references, e.g. `docker.io`) is filed under.
    pub fn key_for(registry: &str) -> String {
        server_url(registry)
    }

    /// The credential helper configured for `registry`, if any: its own
    /// (`credHelpers`), else the default store (`credsStore`).
    pub fn helper_for(&self, registry: &str) -> Option<String> {
        let helpers = self.doc.get("credHelpers").and_then(Value::as_object);
        keys_for(registry)
            .iter()
            .find_map(|k| helpers?.get(k)?.as_str())
            .or_else(|| self.doc.get("credsStore")?.as_str())
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    /// Records `username`/`password` for `registry`: in the helper if one is
    /// configured, else in `auths`. Call [`DockerConfigFile::save`] afterwards.
    pub fn store(
        &mut self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), LoginError> {
        let key = Self::key_for(registry);
        let entry = match self.helper_for(registry) {
            Some(helper) => {
                let request = serde_json::json!({
                    "ServerURL": key,
                    "Username": username,
                    "Secret": password,
                });
                self.run_helper(&helper, "store", request.to_string().as_bytes())?;
                Map::new()
            }
            None => {
                let auth = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                let mut entry = Map::new();
                entry.insert("auth".into(), Value::String(auth));
                entry
            }
        };
        // Older spellings of the same registry would shadow the new entry.
        self.remove_entries(registry);
        self.auths_mut().insert(key, Value::Object(entry));
        Ok(())
    }

    /// Forgets `registry`'s credentials (in its helper too, if one is configured).
    /// Returns whether there were any in the file.
    pub fn erase(&mut self, registry: &str) -> Result<bool, LoginError> {
        let had = self.remove_entries(registry);
        if let Some(helper) = self.helper_for(registry) {
            self.run_helper(&helper, "erase", Self::key_for(registry).as_bytes())?;
        }
        Ok(had)
    }

    /// Writes the file: a temp file with mode 0600 in the same directory (created
    /// 0700 if missing), renamed over the old one.
    pub fn save(&self) -> Result<(), LoginError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LoginError::Io { path, source }
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let mut json = serde_json::to_vec_pretty(&self.doc).map_err(|e| LoginError::Malformed {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        json.push(b'\n');
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The mode above is masked by the umask; say it again, exactly.
        let set = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
        let written = set
            .and_then(|()| file.write_all(&json))
            .and_then(|()| file.sync_all());
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &self.path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(LoginError::Io {
                path: self.path.clone(),
                source: e,
            });
        }
        Ok(())
    }

    /// `auths`, created if missing (or not an object).
    fn auths_mut(&mut self) -> &mut Map<String, Value> {
        let slot = self
            .doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        match slot {
            Value::Object(m) => m,
            _ => unreachable!("just made an object"),
        }
    }

    /// Removes every `auths` entry of `registry`; whether there was one.
    fn remove_entries(&mut self, registry: &str) -> bool {
        let keys = keys_for(registry);
        let auths = self.auths_mut();
        let mut had = false;
        for k in &keys {
            had |= auths.remove(k).is_some();
        }
        had
    }

    /// Runs `docker-credential-<helper> <action>` with `input` on stdin.
    fn run_helper(
        &self,
        helper: &str,
        action: &'static str,
        input: &[u8],
    ) -> Result<(), LoginError> {
        let program = format!("docker-credential-{helper}");
        let fail = |message: String| LoginError::Helper {
            program: program.clone(),
            action,
            message,
        };
        let out = call_helper(helper, self.helper_dir.as_deref(), action, input)
            .map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(if out.stderr.is_empty() {
                &out.stdout
            } else {
                &out.stderr
            })
            .trim()
            .to_string();
            return Err(fail(format!("{} ({said})", out.status)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::credentials::from_docker_config_file;
    use super::super::Credentials;
    use super::*;

    #[test]
    fn store_and_erase_keep_the_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"auths":{"other:1":{"auth":"eDp5"},"https://reg:5000":{"auth":"old"}},"proxies":{"default":{}},"detachKeys":"ctrl-x"}"#,
        )
        .unwrap();
        let mut f = DockerConfigFile::open(&path).unwrap();
        f.store("reg:5000", "ann", "pw:1").unwrap();
        f.save().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            from_docker_config_file(&path, "reg:5000").unwrap(),
            Some(Credentials::basic("ann", "pw:1"))
        );
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["detachKeys"], "ctrl-x");
        assert!(v["proxies"]["default"].is_object());
        assert_eq!(v["auths"]["other:1"]["auth"], "eDp5");
        assert!(
            v["auths"].get("https://reg:5000").is_none(),
            "old spelling gone"
        );

        let mut f = DockerConfigFile::open(&path).unwrap();
        assert!(f.erase("reg:5000").unwrap());
        assert!(!f.erase("reg:5000").unwrap());
        f.save().unwrap();
        assert_eq!(from_docker_config_file(&path, "reg:5000").unwrap(), None);
        assert_eq!(
            DockerConfigFile::key_for("docker.io"),
            "https://index.docker.io/v1/"
        );
    }

    #[test]
    fn a_new_file_and_directory_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/config.json");
        let mut f = DockerConfigFile::open(&path).unwrap();
        f.store("r:1", "u", "p").unwrap();
        f.save().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        std::fs::write(&path, "[1]").unwrap();
        assert!(matches!(
            DockerConfigFile::open(&path),
            Err(LoginError::Malformed { .. })
        ));
    }

    #[test]
    fn helpers_store_and_erase() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = dir.path().join("log");
        let helper = bin.join("docker-credential-fake");
        std::fs::write(
            &helper,
            format!(
                "#!/bin/sh\n{{ echo \"$1\"; cat; echo; }} >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"credHelpers":{"helped:1":"fake"}}"#).unwrap();
        let mut f = DockerConfigFile::open(&path).unwrap().with_helper_dir(&bin);
        assert_eq!(f.helper_for("helped:1").as_deref(), Some("fake"));
        assert_eq!(f.helper_for("plain:1"), None);
        f.store("helped:1", "u", "s").unwrap();
        f.erase("helped:1").unwrap();
        let said = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines.len(), 4, "{said}");
        assert_eq!(
            (lines[0], lines[2], lines[3]),
            ("store", "erase", "helped:1")
        );
        let request: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            request,
            serde_json::json!({"ServerURL": "helped:1", "Username": "u", "Secret": "s"})
        );
        // The file keeps an empty entry, as docker leaves one.
        f.store("helped:1", "u", "s").unwrap();
        f.save().unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["auths"]["helped:1"], serde_json::json!({}));
        // A helper that fails is an error.
        let mut f = DockerConfigFile::open(&path)
            .unwrap()
            .with_helper_dir(dir.path());
        assert!(matches!(
            f.store("helped:1", "u", "s"),
            Err(LoginError::Helper { .. })
        ));
    }
}
