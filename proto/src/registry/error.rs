//! Errors from talking to a registry.

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
    /// The registry answered a Range request with the whole blob (status 200).
    #[error("registry ignored the Range header for blob {digest} (answered 200 instead of 206); lazy reads need Range support")]
    RangeIgnored {
        /// The blob.
        digest: String,
    },
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
