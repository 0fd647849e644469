//! Image references: `[registry/]repository[:tag][@digest]`, normalized as Docker does.
//!
//! `busybox` becomes `docker.io/library/busybox:latest`; `user/app` becomes
//! `docker.io/user/app:latest`; a first component containing `.` or `:`, or equal to
//! `localhost`, names a registry (`localhost:5000/app`, `ghcr.io/o/app`). Requests for
//! `docker.io` go to `registry-1.docker.io` ([`Reference::api_host`]).

use crate::digest::{Digest, DigestError};
use std::fmt;
use std::str::FromStr;

/// The registry Docker Hub names live in.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's registry API answers on.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name (with registry) Docker accepts.
const MAX_NAME_LEN: usize = 255;
/// Longest tag Docker accepts.
const MAX_TAG_LEN: usize = 128;

/// Why a reference could not be parsed. Each variant names the offending part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// The reference was empty (or only whitespace).
    #[error("empty image reference")]
    Empty,
    /// The registry part is not a valid `host[:port]`.
    #[error("invalid registry {registry:?} in image reference {input:?}")]
    Registry {
        /// The whole input.
        input: String,
        /// The registry part.
        registry: String,
    },
    /// A repository path component is empty or has characters outside `[a-z0-9._-]`.
    #[error("invalid repository component {component:?} in image reference {input:?}: {why}")]
    Repository {
        /// The whole input.
        input: String,
        /// The bad component.
        component: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The repository name (with registry) is longer than 255 characters.
    #[error("repository name in {input:?} is {len} characters long (at most 255 allowed)")]
    NameTooLong {
        /// The whole input.
        input: String,
        /// Its length.
        len: usize,
    },
    /// The tag is empty, too long, or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid tag {tag:?} in image reference {input:?}: tags are 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag {
        /// The whole input.
        input: String,
        /// The bad tag.
        tag: String,
    },
    /// The digest after `@` is malformed or uses an unsupported algorithm.
    #[error("invalid digest in image reference {input:?}: {source}")]
    Digest {
        /// The whole input.
        input: String,
        /// Why the digest was rejected.
        #[source]
        source: DigestError,
    },
}

/// A parsed, normalized image reference.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes `input` (same as `input.parse()`).
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        input.parse()
    }

    /// Builds a reference from parts already known to be valid-looking; they are checked
    /// like parsed input.
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
    ) -> Result<Reference, ReferenceError> {
        let mut text = format!("{registry}/{repository}");
        if let Some(tag) = tag {
            text.push(':');
            text.push_str(tag);
        }
        text.parse()
    }

    /// The registry as named (`docker.io`, `localhost:5000`, `ghcr.io`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host:port to send API requests to (`registry-1.docker.io` for `docker.io`).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if one was given or defaulted (a digest-only reference has none).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<Digest> {
        self.digest
    }

    /// What to put in `/v2/<repo>/manifests/<here>`: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository with a different tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        Reference::new(&self.registry, &self.repository, Some(tag))
    }

    /// The same repository pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// The host to send API requests to for `registry` (maps `docker.io` to its API host).
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == "index.docker.io" {
        DOCKER_HUB_API
    } else {
        registry
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let owned = || trimmed.to_string();

        // Split off `@digest` first: digests contain ':' which would confuse tag parsing.
        let (rest, digest) = match trimmed.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest {
                        input: owned(),
                        source,
                    })?;
                (rest, Some(digest))
            }
            None => (trimmed, None),
        };

        // A tag is whatever follows the last ':' after the last '/' (a ':' before the
        // last '/' is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::Tag {
                    input: owned(),
                    tag: tag.to_string(),
                });
            }
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if !valid_registry(&registry) {
            return Err(ReferenceError::Registry {
                input: owned(),
                registry,
            });
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for component in repository.split('/') {
            if let Err(why) = check_component(component) {
                return Err(ReferenceError::Repository {
                    input: owned(),
                    component: component.to_string(),
                    why,
                });
            }
        }
        let len = registry.len() + 1 + repository.len();
        if len > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong {
                input: owned(),
                len,
            });
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => {}
        _ => return false,
    }
    bytes.len() <= MAX_TAG_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
}

/// `host[:port]` where host is DNS-like labels or a bracketed IPv6 address.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, after)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match after {
                    "" => return true,
                    p => match p.strip_prefix(':') {
                        Some(port) => ("", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host.is_empty() {
        return registry.starts_with('[');
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty path component");
    }
    if c.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository names must be lowercase");
    }
    if !c
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("only [a-z0-9._-] are allowed");
    }
    let bytes = c.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return Err("must start and end with a letter or digit");
    }
    // Separators: one '.', one or two '_', or any run of '-'; never mixed.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err("separators must be '.', '_', '__' or a run of '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_hub_normalization() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.manifest_reference(), "latest");
    }

    #[test]
    fn registries_ports_and_digests() {
        let r = Reference::parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "a/b", Some("v1"))
        );
        assert_eq!(r.api_host(), "localhost:5000");
        let r = Reference::parse("localhost/app").unwrap();
        assert_eq!(r.registry(), "localhost");
        let r = Reference::parse("127.0.0.1:5000/app").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.tag(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/o/app@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.to_string(), format!("ghcr.io/o/app@{d}"));
        let r = Reference::parse(&format!("app:v2@{d}")).unwrap();
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.manifest_reference(), d);
        let r = Reference::parse("[::1]:5000/app").unwrap();
        assert_eq!(r.registry(), "[::1]:5000");
        // A first component without '.'/':' is a Docker Hub user, not a host.
        let r = Reference::parse("myhost/app").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "myhost/app");
    }

    #[test]
    fn bad_input_names_the_bad_part() {
        assert_eq!(Reference::parse("  "), Err(ReferenceError::Empty));
        let e = Reference::parse("Busybox").unwrap_err();
        assert!(
            matches!(&e, ReferenceError::Repository { component, .. } if component == "Busybox"),
            "{e}"
        );
        assert!(e.to_string().contains("lowercase"));
        let e = Reference::parse("busybox:bad!tag").unwrap_err();
        assert!(
            matches!(&e, ReferenceError::Tag { tag, .. } if tag == "bad!tag"),
            "{e}"
        );
        let e = Reference::parse("busybox:").unwrap_err();
        assert!(matches!(e, ReferenceError::Tag { .. }));
        let e = Reference::parse("busybox@sha256:123").unwrap_err();
        assert!(matches!(e, ReferenceError::Digest { .. }));
        assert!(e.to_string().contains("sha256:123"));
        let e = Reference::parse("a//b").unwrap_err();
        assert!(matches!(&e, ReferenceError::Repository { why, .. } if why.contains("empty")));
        let e = Reference::parse("a/-b").unwrap_err();
        assert!(matches!(&e, ReferenceError::Repository { component, .. } if component == "-b"));
        let e = Reference::parse("a/b..c").unwrap_err();
        assert!(matches!(&e, ReferenceError::Repository { component, .. } if component == "b..c"));
        let e = Reference::parse("bad_host.com:port/app").unwrap_err();
        assert!(
            matches!(&e, ReferenceError::Registry { registry, .. } if registry == "bad_host.com:port"),
            "{e}"
        );
        let long = format!("x/{}", "a".repeat(300));
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::NameTooLong { .. })
        ));
        assert!(matches!(
            Reference::parse(&format!("a:{}", "t".repeat(129))),
            Err(ReferenceError::Tag { .. })
        ));
        assert!(Reference::parse("a/b__c/d-e--f/g.h:t_1.2-3").is_ok());
    }
}
