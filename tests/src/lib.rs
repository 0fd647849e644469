//! Harness for Skiff's end-to-end tests: real services on loopback, started per test
//! and stopped by `Drop`.
//!
//! - [`registry::Registry`]: a real `docker-registry` (Debian package) with its own
//!   storage directory, optionally behind htpasswd Basic auth or Bearer token auth.
//! - [`token::TokenIssuer`]: a small Bearer token endpoint signing RS256 JWTs with a
//!   throwaway key (the registry trusts its certificate via `rootcertbundle`).
//! - [`proxy::FaultProxy`]: an HTTP proxy in front of a registry that injects 5xx,
//!   dropped connections, truncation, a corrupted byte, stripped Range headers, and
//!   redirects, and records every request (with whether `Authorization` was sent).
//! - [`fixtures`]: images built from code (trees → tar/tar+gzip layers → config →
//!   manifest → pushed with Skiff's own client), multi-layer and multi-platform.
//! - [`cli`]: runs the `skiff` binary (built on demand with `cargo build -p skiff`).
//! - [`guard`]: cleanup on drop (containers, spawned processes, mounts) for tests
//!   that fail halfway.
//!
//! Needs on PATH: `docker-registry`, `htpasswd` (apache2-utils), `openssl`, and for
//! interop tests `skopeo`. Interop tests whose tools are missing skip with a note
//! ([`tools_or_skip`]), unless `SKIFF_TEST_REQUIRE_TOOLS=1` (set by `scripts/test.sh`):
//! then a missing tool fails the test and names the tool.

pub mod cli;
pub mod containerd;
pub mod cri;
pub mod fixtures;
pub mod guard;
pub mod pki;
pub mod proxy;
pub mod registry;
pub mod token;
pub mod walk;
pub mod xattrs;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Environment variable that turns a skipped interop test into a failed one: set (to
/// anything but `0` or empty) by `scripts/test.sh`, which installs every tool, so a
/// missing tool there is a broken setup rather than a reason to pass.
pub const REQUIRE_TOOLS_ENV: &str = "SKIFF_TEST_REQUIRE_TOOLS";

/// Whether [`REQUIRE_TOOLS_ENV`] is set.
pub fn tools_required() -> bool {
    std::env::var(REQUIRE_TOOLS_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether `tool` is found on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// True when we are root and every tool in `tools` is on PATH. Otherwise false with a
/// note on stderr (the caller returns, and the test passes without checking anything),
/// or — under [`REQUIRE_TOOLS_ENV`] — a panic naming what is missing. `why_root` says
/// what the test needs root for.
pub fn tools_or_skip(tools: &[&str], why_root: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if root && missing.is_empty() {
        return true;
    }
    let mut problems = Vec::new();
    if !root {
        problems.push(format!("needs root ({why_root})"));
    }
    if !missing.is_empty() {
        problems.push(format!("missing tools: {}", missing.join(", ")));
    }
    let problems = problems.join("; ");
    if tools_required() {
        panic!("{problems} ({REQUIRE_TOOLS_ENV} is set, so this is a failure, not a skip)");
    }
    eprintln!("skipping: {problems}");
    false
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Waits until something accepts connections on `addr`; false after `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Client options for tests: no Docker config lookup, fast retries.
pub fn test_client_options() -> skiff_proto::registry::ClientOptions {
    skiff_proto::registry::ClientOptions {
        use_docker_config: false,
        retry: skiff_proto::registry::RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..Default::default()
    }
}

/// A client for `host` (`127.0.0.1:port`) with [`test_client_options`].
pub fn client(host: &str) -> skiff_proto::registry::Client {
    skiff_proto::registry::Client::new(host, test_client_options()).expect("creating client")
}
