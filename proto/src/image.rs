//! The image model: indexes, manifests, descriptors, platforms and configs.
//!
//! Descriptors, manifests and indexes are small serde types of our own so that digests
//! are [`Digest`]s (the type the layer indexes use) and unknown media types and
//! annotations pass through untouched. The image configuration is oci-spec's
//! [`ImageConfiguration`] (Entrypoint, Cmd, Env, User… for `skiff run`), with the raw
//! bytes kept beside it since they are what the config digest covers.

use crate::digest::Digest;
use crate::reference::Reference;
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker manifest list.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How a layer blob is encoded, as its media type says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerEncoding {
    /// Uncompressed tar.
    Tar,
    /// gzip-compressed tar.
    TarGzip,
    /// zstd-compressed tar.
    TarZstd,
}

/// Every layer media type Skiff reads, with its encoding: the one table that
/// classifies layers (indexing, unpacking). OCI's nondistributable types are
/// deprecated but still met in the wild; Docker's foreign layers are gzip tars.
pub const LAYER_MEDIA_TYPES: &[(&str, LayerEncoding)] = &[
    (MEDIA_OCI_LAYER_TAR, LayerEncoding::Tar),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        LayerEncoding::Tar,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        LayerEncoding::Tar,
    ),
    (MEDIA_OCI_LAYER_GZIP, LayerEncoding::TarGzip),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        LayerEncoding::TarGzip,
    ),
    (MEDIA_DOCKER_LAYER_GZIP, LayerEncoding::TarGzip),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        LayerEncoding::TarGzip,
    ),
    (MEDIA_OCI_LAYER_ZSTD, LayerEncoding::TarZstd),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        LayerEncoding::TarZstd,
    ),
];

/// The encoding of a layer of `media_type`, `None` if it is not a layer type Skiff
/// reads (artifacts, unknown compressions).
pub fn layer_encoding(media_type: &str) -> Option<LayerEncoding> {
    LAYER_MEDIA_TYPES
        .iter()
        .find(|(t, _)| *t == media_type)
        .map(|(_, e)| *e)
}

/// The OCI empty descriptor's media type (the config of an artifact).
pub const MEDIA_OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The OCI empty JSON config, the content [`MEDIA_OCI_EMPTY`] describes.
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// `artifactType` of a Skiff layer-index artifact (see [`crate::index::artifact`]).
pub const INDEX_ARTIFACT_TYPE: &str = "application/vnd.skiff.layer-index.v1";
/// Annotation of an index artifact listed in an image index beside the manifest it
/// describes (`skiff index --bind`): that manifest's digest. Bound this way, the
/// layer indexes are covered by the image index's digest (and any signature over it),
/// unlike an artifact found through the referrers API.
pub const BOUND_SUBJECT_ANNOTATION: &str = "dev.skiff.index.subject";
/// Media type of one layer's encoded index in a layer-index artifact.
pub const INDEX_LAYER_MEDIA_TYPE: &str = "application/vnd.skiff.layer-index.v1.postcard";
/// `artifactType` of a Skiff prefetch-profile artifact.
pub const PROFILE_ARTIFACT_TYPE: &str = "application/vnd.skiff.prefetch-profile.v1";
/// Media type of a prefetch profile (JSON) in a profile artifact.
pub const PROFILE_MEDIA_TYPE: &str = "application/vnd.skiff.prefetch-profile.v1+json";

/// The `Accept` list for manifest requests: every manifest type Skiff understands.
pub const MANIFEST_ACCEPT: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
];

/// Errors from interpreting image documents.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A JSON document did not parse as the expected type.
    #[error("parsing {what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The image config did not parse.
    #[error("parsing image config {digest}: {message}")]
    Config {
        /// The config's digest.
        digest: Digest,
        /// The parse error.
        message: String,
    },
    /// A manifest's media type is not one Skiff can use.
    #[error(
        "unsupported manifest media type {0:?} (expected an OCI or Docker v2 manifest or index)"
    )]
    UnsupportedManifest(String),
    /// A `--platform` string is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64/v8")]
    BadPlatform(String),
}

/// A content descriptor: what a manifest or index says about one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's digest.
    #[serde(with = "crate::digest::as_text")]
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Alternate download locations (rarely used; kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations, e.g. eStargz's TOC digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform, in index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifact type (OCI 1.1), kept as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor with no urls, annotations or platform.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
        }
    }

    /// The same descriptor as oci-spec's type (what [`crate::index::open_index`]
    /// takes).
    pub fn to_oci(&self) -> Result<oci_spec::image::Descriptor, ImageError> {
        serde_json::to_value(self)
            .and_then(serde_json::from_value)
            .map_err(|source| ImageError::Json {
                what: format!("descriptor of {}", self.digest),
                source,
            })
    }

    /// The descriptor of `data` as a blob of `media_type`.
    pub fn of(media_type: &str, data: &[u8]) -> Descriptor {
        Descriptor::new(media_type, Digest::of(data), data.len() as u64)
    }

    /// The layer's encoding from its media type (see [`LAYER_MEDIA_TYPES`]).
    pub fn layer_encoding(&self) -> Option<LayerEncoding> {
        layer_encoding(&self.media_type)
    }
}

/// An image manifest (OCI image manifest or Docker v2 schema 2; same shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's media type, when it declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An OCI manifest over `config` and `layers`.
    pub fn oci(config: Descriptor, layers: Vec<Descriptor>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_MANIFEST.to_string()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// An OCI 1.1 artifact manifest of `artifact_type` over `layers`, with the empty
    /// config, referring to the manifest `subject` describes (its annotations and
    /// platform are not repeated).
    pub fn artifact(
        subject: &Descriptor,
        artifact_type: &str,
        layers: Vec<Descriptor>,
    ) -> Manifest {
        Manifest {
            artifact_type: Some(artifact_type.to_string()),
            subject: Some(Descriptor::new(
                &subject.media_type,
                subject.digest,
                subject.size,
            )),
            ..Manifest::oci(Descriptor::of(MEDIA_OCI_EMPTY, EMPTY_CONFIG), layers)
        }
    }

    /// Parses manifest JSON; `what` names it in errors.
    pub fn from_slice(what: &str, bytes: &[u8]) -> Result<Manifest, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: what.to_string(),
            source,
        })
    }

    /// Canonical JSON bytes (what gets pushed and digested).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's media type, when it declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One descriptor per platform-specific manifest (or nested index).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// An OCI index over `manifests`.
    pub fn oci(manifests: Vec<Descriptor>) -> Index {
        Index {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.to_string()),
            manifests,
            annotations: BTreeMap::new(),
        }
    }

    /// Parses index JSON; `what` names it in errors.
    pub fn from_slice(what: &str, bytes: &[u8]) -> Result<Index, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: what.to_string(),
            source,
        })
    }

    /// Canonical JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The entry whose platform best matches `want`: exact variant first, then any
    /// entry with the same os/arch when `want` names no variant.
    pub fn select(&self, want: &Platform) -> Option<&Descriptor> {
        // Artifacts listed beside images (bound indexes) are never the image.
        let candidates = || {
            self.manifests.iter().filter(|d| {
                d.artifact_type.is_none() && d.platform.as_ref().is_some_and(|p| p.matches(want))
            })
        };
        candidates()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.variant_eq(want)))
            .or_else(|| candidates().next())
    }
}

/// What kind of document a manifest response holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (boxed: it is much larger than an index).
    Manifest(Box<Manifest>),
    /// An index / manifest list.
    Index(Index),
}

impl ManifestKind {
    /// Classifies and parses `bytes` using the response's `Content-Type` (falling back
    /// to the document's own `mediaType`, then to its shape).
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ManifestKind, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Peek {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let peek: Peek = serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: "manifest".into(),
            source,
        })?;
        let ct = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .filter(|c| MANIFEST_ACCEPT.contains(&c.as_str()))
            .or(peek.media_type);
        match ct.as_deref() {
            Some(MEDIA_OCI_INDEX) | Some(MEDIA_DOCKER_LIST) => {
                Index::from_slice("image index", bytes).map(ManifestKind::Index)
            }
            Some(MEDIA_OCI_MANIFEST) | Some(MEDIA_DOCKER_MANIFEST) => {
                Manifest::from_slice("image manifest", bytes)
                    .map(|m| ManifestKind::Manifest(Box::new(m)))
            }
            None if peek.manifests.is_some() => {
                Index::from_slice("image index", bytes).map(ManifestKind::Index)
            }
            None => Manifest::from_slice("image manifest", bytes)
                .map(|m| ManifestKind::Manifest(Box::new(m))),
            Some(other) => Err(ImageError::UnsupportedManifest(other.to_string())),
        }
    }
}

/// An OS/architecture pair, as in index entries and `--platform`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`…
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`.
    pub architecture: String,
    /// CPU variant: `v7` for arm, `v8` for arm64…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Windows build.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
}

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
            os_features: Vec::new(),
        }
    }

    /// The platform this process runs on, in GOARCH spelling.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform::new("linux", arch, variant)
    }

    /// Same os and architecture, and compatible variants (no variant on either side
    /// matches anything; arm64's missing variant means v8).
    pub fn matches(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (want.variant.is_none() || self.variant.is_none() || self.variant_eq(want))
    }

    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            (_, v) => v,
        }
    }

    /// Whether both name the same variant (after arm64's default).
    pub fn variant_eq(&self, other: &Platform) -> bool {
        self.normalized_variant() == other.normalized_variant()
    }
}

impl FromStr for Platform {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(ImageError::BadPlatform(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A reference resolved to one platform's manifest and config, with the raw bytes the
/// digests cover. `skiff pull`, `inspect`, `mount` and `run` all start from this.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference as the user gave it (normalized).
    pub reference: Reference,
    /// Digest of the index the reference named, if it named one.
    pub index_digest: Option<Digest>,
    /// Raw index bytes, if any.
    pub index_bytes: Option<Vec<u8>>,
    /// Digest of the platform-specific image manifest.
    pub manifest_digest: Digest,
    /// Media type of that manifest.
    pub manifest_media_type: String,
    /// Raw manifest bytes (they hash to `manifest_digest`).
    pub manifest_bytes: Vec<u8>,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The platform selected (from the index entry, else from the config).
    pub platform: Platform,
    /// Raw config bytes (they hash to `manifest.config.digest`).
    pub config_bytes: Vec<u8>,
    /// The parsed config.
    pub config: ImageConfiguration,
}

impl ResolvedImage {
    /// The layers, bottom first.
    pub fn layers(&self) -> &[Descriptor] {
        &self.manifest.layers
    }

    /// The index artifacts the image index binds to this manifest (`skiff index
    /// --bind`): entries of [`INDEX_ARTIFACT_TYPE`] whose
    /// [`BOUND_SUBJECT_ANNOTATION`] names [`ResolvedImage::manifest_digest`].
    pub fn bound_index_artifacts(&self) -> Vec<Descriptor> {
        let Some(bytes) = &self.index_bytes else {
            return Vec::new();
        };
        let Ok(index) = serde_json::from_slice::<Index>(bytes) else {
            return Vec::new();
        };
        let subject = self.manifest_digest.to_string();
        index
            .manifests
            .into_iter()
            .filter(|d| {
                d.artifact_type.as_deref() == Some(INDEX_ARTIFACT_TYPE)
                    && d.annotations.get(BOUND_SUBJECT_ANNOTATION) == Some(&subject)
            })
            .collect()
    }

    /// The descriptor of the platform manifest (what artifacts name as `subject`).
    pub fn manifest_descriptor(&self) -> Descriptor {
        Descriptor::new(
            &self.manifest_media_type,
            self.manifest_digest,
            self.manifest_bytes.len() as u64,
        )
    }

    /// Sum of the layers' (compressed) sizes.
    pub fn total_layer_size(&self) -> u64 {
        self.manifest
            .layers
            .iter()
            .fold(0u64, |acc, l| acc.saturating_add(l.size))
    }
}

/// Parses config bytes with oci-spec.
pub fn parse_config(digest: Digest, bytes: &[u8]) -> Result<ImageConfiguration, ImageError> {
    ImageConfiguration::from_reader(bytes).map_err(|e| ImageError::Config {
        digest,
        message: e.to_string(),
    })
}

/// The platform an image config declares (`os`, `architecture`, `variant`).
pub fn config_platform(config: &ImageConfiguration) -> Platform {
    Platform::new(
        &config.os().to_string(),
        &config.architecture().to_string(),
        config.variant().as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_and_select() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        let d = |arch: &str, variant: Option<&str>, byte: u8| {
            let mut d = Descriptor::new(MEDIA_OCI_MANIFEST, Digest::of(&[byte]), 1);
            d.platform = Some(Platform::new("linux", arch, variant));
            d
        };
        let idx = Index::oci(vec![
            d("amd64", None, 1),
            d("arm", Some("v6"), 2),
            d("arm", Some("v7"), 3),
            d("arm64", None, 4),
        ]);
        let pick = |s: &str| idx.select(&s.parse().unwrap()).map(|d| d.digest);
        assert_eq!(pick("linux/amd64"), Some(Digest::of(&[1])));
        assert_eq!(pick("linux/arm/v7"), Some(Digest::of(&[3])));
        assert_eq!(pick("linux/arm"), Some(Digest::of(&[2])));
        assert_eq!(pick("linux/arm64/v8"), Some(Digest::of(&[4])));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("windows/amd64"), None);
    }

    #[test]
    fn manifest_kinds_and_media_types() {
        let m = Manifest::oci(
            Descriptor::of(MEDIA_OCI_CONFIG, b"{}"),
            vec![Descriptor::of(MEDIA_DOCKER_LAYER_GZIP, b"x")],
        );
        let bytes = m.to_bytes();
        // Digests are written as OCI text, not as byte arrays.
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(&format!("\"digest\":\"{}\"", Digest::of(b"x"))),
            "{text}"
        );
        match ManifestKind::parse(None, &bytes).unwrap() {
            ManifestKind::Manifest(back) => {
                assert_eq!(*back, m);
                assert_eq!(
                    back.layers[0].layer_encoding(),
                    Some(LayerEncoding::TarGzip)
                );
            }
            other => panic!("{other:?}"),
        }
        let i = Index::oci(vec![]);
        assert!(matches!(
            ManifestKind::parse(Some(MEDIA_OCI_INDEX), &i.to_bytes()).unwrap(),
            ManifestKind::Index(_)
        ));
        assert!(matches!(
            ManifestKind::parse(
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                b"{\"mediaType\":\"x\"}"
            ),
            Err(ImageError::UnsupportedManifest(_))
        ));
    }

    #[test]
    fn layer_media_type_table() {
        use LayerEncoding::*;
        for (media_type, want) in [
            ("application/vnd.oci.image.layer.v1.tar", Tar),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                Tar,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar", Tar),
            ("application/vnd.oci.image.layer.v1.tar+gzip", TarGzip),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                TarGzip,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", TarGzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                TarGzip,
            ),
            ("application/vnd.oci.image.layer.v1.tar+zstd", TarZstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                TarZstd,
            ),
        ] {
            assert_eq!(layer_encoding(media_type), Some(want), "{media_type}");
        }
        assert_eq!(
            LAYER_MEDIA_TYPES.len(),
            9,
            "every table row is tested above"
        );
        for not_a_layer in [
            MEDIA_OCI_CONFIG,
            MEDIA_OCI_MANIFEST,
            INDEX_LAYER_MEDIA_TYPE,
            PROFILE_MEDIA_TYPE,
            "application/x-not-a-layer",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "",
        ] {
            assert_eq!(layer_encoding(not_a_layer), None, "{not_a_layer}");
        }
    }

    #[test]
    fn to_oci_keeps_media_type_digest_size_and_annotations() {
        let mut d = Descriptor::of("application/vnd.oci.image.layer.v1.tar+gzip", b"layer");
        d.annotations = std::collections::BTreeMap::from([(
            crate::index::estargz::TOC_DIGEST_ANNOTATION.to_string(),
            Digest::of(b"toc").to_string(),
        )]);
        let o = d.to_oci().unwrap();
        assert_eq!(o.media_type().to_string(), d.media_type);
        assert_eq!(o.digest().to_string(), d.digest.to_string());
        assert_eq!(o.size(), 5);
        assert_eq!(
            o.annotations()
                .as_ref()
                .and_then(|a| a.get(crate::index::estargz::TOC_DIGEST_ANNOTATION))
                .cloned(),
            Some(Digest::of(b"toc").to_string())
        );
    }
}
