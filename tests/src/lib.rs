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
//!
//! Needs on PATH: `docker-registry`, `htpasswd` (apache2-utils), `openssl`, and for
//! interop tests `skopeo`.

pub mod cli;
pub mod fixtures;
pub mod proxy;
pub mod registry;
pub mod token;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

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
