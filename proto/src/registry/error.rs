//! Errors from talking to a registry, and the error bodies registries send
//! ([`ErrorEnvelope`]: `{"errors":[{"code","message","detail"}]}`).

use crate::digest::DigestError;
use crate::image::ImageError;

/// What went wrong talking to a registry. Messages say which request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no manifest under that tag or digest (404 MANIFEST_UNKNOWN).
    #[error("manifest unknown: {reference} (the registry has no such tag or digest)")]
    ManifestUnknown {
        /// The full reference asked for.
        reference: String,
    },
    /// The registry has no such blob in that repository (404 BLOB_UNKNOWN).
    #[error("blob unknown: {digest} in {repository}")]
    BlobUnknown {
        /// The repository.
        repository: String,
        /// The blob's digest.
        digest: String,
    },
    /// The repository does not exist (404 NAME_UNKNOWN).
    #[error("repository not found: {repository} on {registry}")]
    NameUnknown {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
    },
    /// The registry refused our credentials (401 even after authenticating).
    #[error("unauthorized: {registry} refused access to {repository}{detail}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// Extra words from the registry or about missing credentials.
        detail: String,
    },
    /// The registry forbids the operation (403 DENIED).
    #[error("denied: {url}: {message}")]
    Denied {
        /// The request URL.
        url: String,
        /// The registry's message.
        message: String,
    },
    /// Getting a Bearer token failed.
    #[error("getting a token from {realm}: {message}")]
    Token {
        /// The token endpoint.
        realm: String,
        /// What went wrong.
        message: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: unexpected status {status}: {message}")]
    Status {
        /// The HTTP method.
        method: String,
        /// The request URL.
        url: String,
        /// The status code.
        status: u16,
        /// The registry's error message or body excerpt.
        message: String,
    },
    /// A network error that retrying did not cure (or that is not worth retrying).
    #[error("{method} {url}: {source}")]
    Network {
        /// The HTTP method.
        method: String,
        /// The request URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The TLS handshake was refused: the registry's certificate is not trusted or not
    /// valid for its name. Not retried.
    #[error("{method} {url}: TLS handshake refused: {reason}")]
    TlsRejected {
        /// The HTTP method.
        method: String,
        /// The request URL.
        url: String,
        /// What the TLS library said (e.g. "invalid peer certificate: UnknownIssuer").
        reason: String,
    },
    /// Retries ran out on a transient failure (5xx, 429, dropped connections).
    #[error("{method} {url}: giving up after {attempts} attempts; last error: {last}")]
    RetriesExhausted {
        /// The HTTP method.
        method: String,
        /// The request URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Content did not match its digest (never served).
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The mirror configuration (`hosts.toml`) could not be used.
    #[error(transparent)]
    Hosts(#[from] super::hosts::HostsError),
    /// The response was malformed (wrong length, bad header, bad JSON…).
    #[error("bad response from {url}: {message}")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// An image document could not be interpreted.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// No manifest in the index matches the wanted platform.
    #[error("no manifest for platform {wanted} in {reference}; available: {available}")]
    NoMatchingPlatform {
        /// The image.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index offers.
        available: String,
    },
    /// Too many redirects for one request.
    #[error("too many redirects fetching {url}")]
    TooManyRedirects {
        /// The original URL.
        url: String,
    },
    /// Loading credentials failed (config file, credential helper).
    #[error("credentials for {registry}: {message}")]
    Credentials {
        /// The registry.
        registry: String,
        /// What failed.
        message: String,
    },
    /// Local I/O while saving downloaded content.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for registry operations.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// An error code from the distribution spec (`errors[].code`), or one it does not list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The blob is unknown to the registry.
    BlobUnknown,
    /// The blob upload encountered an error and can no longer proceed.
    BlobUploadInvalid,
    /// The blob upload is unknown to the registry.
    BlobUploadUnknown,
    /// The provided digest did not match the uploaded content.
    DigestInvalid,
    /// The manifest references a blob the registry does not have.
    ManifestBlobUnknown,
    /// The manifest is invalid.
    ManifestInvalid,
    /// The manifest is unknown to the registry.
    ManifestUnknown,
    /// The repository name is invalid.
    NameInvalid,
    /// The repository name is not known to the registry.
    NameUnknown,
    /// The provided length did not match the content length.
    SizeInvalid,
    /// Authentication is required.
    Unauthorized,
    /// The requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// A code the spec does not list, kept as sent.
    Other(String),
}

impl ErrorCode {
    /// The code as the registry spells it.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Other(s) => s,
        }
    }
}

impl From<String> for ErrorCode {
    fn from(code: String) -> Self {
        match code.as_str() {
            "BLOB_UNKNOWN" => ErrorCode::BlobUnknown,
            "BLOB_UPLOAD_INVALID" => ErrorCode::BlobUploadInvalid,
            "BLOB_UPLOAD_UNKNOWN" => ErrorCode::BlobUploadUnknown,
            "DIGEST_INVALID" => ErrorCode::DigestInvalid,
            "MANIFEST_BLOB_UNKNOWN" => ErrorCode::ManifestBlobUnknown,
            "MANIFEST_INVALID" => ErrorCode::ManifestInvalid,
            "MANIFEST_UNKNOWN" => ErrorCode::ManifestUnknown,
            "NAME_INVALID" => ErrorCode::NameInvalid,
            "NAME_UNKNOWN" => ErrorCode::NameUnknown,
            "SIZE_INVALID" => ErrorCode::SizeInvalid,
            "UNAUTHORIZED" => ErrorCode::Unauthorized,
            "DENIED" => ErrorCode::Denied,
            "UNSUPPORTED" => ErrorCode::Unsupported,
            "TOOMANYREQUESTS" => ErrorCode::TooManyRequests,
            _ => ErrorCode::Other(code),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(ErrorCode::from)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a distribution-spec error body.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct ErrorEntry {
    /// What kind of error (an empty [`ErrorCode::Other`] if the registry sent none).
    #[serde(default = "no_code")]
    pub code: ErrorCode,
    /// The registry's words for it.
    #[serde(default)]
    pub message: String,
    /// Anything else the registry attached (free-form JSON).
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

fn no_code() -> ErrorCode {
    ErrorCode::Other(String::new())
}

/// A distribution-spec error body: `{"errors":[{"code","message","detail"}]}`.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct ErrorEnvelope {
    /// The errors, most relevant first.
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
}

impl ErrorEnvelope {
    /// The envelope in an error response body; `None` when the body is not one (an
    /// HTML page from a proxy, an empty body, a list with no entries).
    pub fn parse(body: &[u8]) -> Option<ErrorEnvelope> {
        serde_json::from_slice::<ErrorEnvelope>(body)
            .ok()
            .filter(|e| !e.errors.is_empty())
    }

    /// The first error's code.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.errors.first().map(|e| &e.code)
    }

    /// `CODE: message` of the first error, for messages.
    pub fn summary(&self) -> String {
        let Some(e) = self.errors.first() else {
            return String::new();
        };
        format!("{}: {}", e.code, e.message)
            .trim_matches([' ', ':'])
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spec_code_and_keeps_unknown_ones() {
        for code in [
            ErrorCode::BlobUnknown,
            ErrorCode::BlobUploadInvalid,
            ErrorCode::BlobUploadUnknown,
            ErrorCode::DigestInvalid,
            ErrorCode::ManifestBlobUnknown,
            ErrorCode::ManifestInvalid,
            ErrorCode::ManifestUnknown,
            ErrorCode::NameInvalid,
            ErrorCode::NameUnknown,
            ErrorCode::SizeInvalid,
            ErrorCode::Unauthorized,
            ErrorCode::Denied,
            ErrorCode::Unsupported,
            ErrorCode::TooManyRequests,
        ] {
            assert_eq!(ErrorCode::from(code.as_str().to_string()), code);
        }
        assert_eq!(
            ErrorCode::from("PAYMENT_REQUIRED".to_string()),
            ErrorCode::Other("PAYMENT_REQUIRED".into())
        );
    }

    #[test]
    fn parses_an_envelope_with_detail() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{"name":"nope"}},{"code":"DENIED","message":"x"}]}"#;
        let e = ErrorEnvelope::parse(body).unwrap();
        assert_eq!(e.code(), Some(&ErrorCode::NameUnknown));
        assert_eq!(e.errors.len(), 2);
        assert_eq!(
            e.errors[0].detail,
            Some(serde_json::json!({"name": "nope"}))
        );
        assert_eq!(
            e.summary(),
            "NAME_UNKNOWN: repository name not known to registry"
        );
    }

    #[test]
    fn missing_message_and_odd_bodies() {
        let e = ErrorEnvelope::parse(br#"{"errors":[{"code":"TOOMANYREQUESTS"}]}"#).unwrap();
        assert_eq!(e.summary(), "TOOMANYREQUESTS");
        assert_eq!(e.errors[0].detail, None);
        assert!(ErrorEnvelope::parse(b"<html>502 bad gateway</html>").is_none());
        assert!(ErrorEnvelope::parse(b"").is_none());
        assert!(ErrorEnvelope::parse(br#"{"errors":[]}"#).is_none());
        let e = ErrorEnvelope::parse(br#"{"errors":[{"message":"no code"}]}"#).unwrap();
        assert_eq!(e.summary(), "no code");
    }
}
