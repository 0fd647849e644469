//! Running the `skiff` binary from tests.
//!
//! The binary lives in another package, so Cargo does not build it for this one's
//! tests. [`skiff_bin`] runs `cargo build -p skiff` once per test process (a no-op when
//! it is fresh; `$CARGO` is set by `cargo test`) and returns
//! `<target>/debug/skiff`, found next to the test executable (`target/debug/deps/..`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Path of a fresh `skiff` binary (built on first use).
pub fn skiff_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> → target/<profile>/skiff
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable is under target/<profile>/deps");
        let bin = profile_dir.join("skiff");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "skiff", "--manifest-path"])
            .arg(&manifest);
        // `cargo test` gives this process the test package's CARGO_MANIFEST_DIR,
        // CARGO_PKG_* and so on. Build scripts that watch them (ring's watches
        // CARGO_MANIFEST_DIR) would see a change against a plain `cargo build` and
        // rebuild the TLS stack and all that depends on it, about a minute, each time
        // the two alternate.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(k.as_ref());
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build -p skiff");
        assert!(status.success(), "cargo build -p skiff failed");
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

/// The `skiff` binary with its own store root.
pub struct Skiff {
    /// `--root` for every command.
    pub root: PathBuf,
    /// The binary run: [`skiff_bin`] unless [`Skiff::with_binary`] chose a copy.
    binary: Option<PathBuf>,
}

impl Skiff {
    /// A `skiff` using `root` as its store.
    pub fn new(root: &Path) -> Skiff {
        Skiff {
            root: root.to_path_buf(),
            binary: None,
        }
    }

    /// A `skiff` running the binary at `binary` (a copy a test may see damaged)
    /// with `root` as its store.
    pub fn with_binary(root: &Path, binary: &Path) -> Skiff {
        Skiff {
            root: root.to_path_buf(),
            binary: Some(binary.to_path_buf()),
        }
    }

    /// A command with `--root` set, no inherited Docker config and no mirrors (the
    /// machine's `/etc/containerd/certs.d` is not consulted unless `--hosts-dir` says).
    pub fn command(&self) -> Command {
        let mut c = Command::new(self.binary.clone().unwrap_or_else(skiff_bin));
        c.arg("--root").arg(&self.root);
        c.env("DOCKER_CONFIG", self.root.join("no-docker-config"));
        c.env("SKIFF_HOSTS_DIR", self.root.join("no-hosts-dir"));
        // `skiff run` defaults to the bridge network; tests stay off the host's.
        c.env("SKIFF_NETWORK", "none");
        c.stdin(Stdio::null());
        c
    }

    /// A guard that removes this root's containers and unmounts what is left below
    /// `dir` when dropped (see [`crate::guard::ContainerGuard`]).
    pub fn guard(&self, dir: &Path) -> crate::guard::ContainerGuard {
        crate::guard::ContainerGuard::new(&skiff_bin(), &self.root, dir)
    }

    /// `skiff run --rm --background-fetch=false IMAGE cat PATH`: a cold start that reads
    /// one file, with no background fetch adding bytes the command never read.
    pub fn run_cat(&self, image: &str, path: &str) -> Output {
        self.run(&[
            "run",
            "--rm",
            "--background-fetch=false",
            image,
            "cat",
            path,
        ])
    }

    /// Runs `skiff <args>` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running skiff")
    }
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn describe(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
