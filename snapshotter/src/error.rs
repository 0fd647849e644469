//! The one error type of the snapshotter, and how each kind reaches containerd: the
//! gRPC code is what containerd's client turns back into its `errdefs` error, and the
//! unpacker depends on it (`AlreadyExists` after a remote Prepare means "skip the
//! download").

use std::path::PathBuf;

/// What went wrong in a snapshot operation.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot of that key (or parent).
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    /// A snapshot of that key or name exists already (also: a remote Prepare that
    /// committed its target).
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the operation (committing a view,
    /// removing a parent, a parent that is not committed).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed (empty key, unknown update field).
    #[error("{0}")]
    InvalidArgument(String),
    /// The metadata database failed.
    #[error("snapshot database: {0}")]
    Database(String),
    /// A record in the database could not be read back.
    #[error("snapshot record {key}: {message}")]
    Corrupt {
        /// The snapshot key.
        key: String,
        /// What the decoder said.
        message: String,
    },
    /// A file system operation on a snapshot directory failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The lazy layer source failed (mounting a view).
    #[error("lazy layers: {0}")]
    Remote(String),
}

impl SnapshotError {
    /// An [`SnapshotError::Io`] for `what` on `path`.
    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SnapshotError {
        let path = path.into();
        move |source| SnapshotError::Io { what, path, source }
    }
}

/// Any of redb's error types, as a database error.
pub(crate) fn db(e: impl Into<redb::Error>) -> SnapshotError {
    SnapshotError::Database(e.into().to_string())
}

impl From<SnapshotError> for tonic::Status {
    fn from(e: SnapshotError) -> tonic::Status {
        let message = e.to_string();
        match e {
            SnapshotError::NotFound(_) => tonic::Status::not_found(message),
            SnapshotError::AlreadyExists(_) => tonic::Status::already_exists(message),
            SnapshotError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            SnapshotError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            SnapshotError::Database(_)
            | SnapshotError::Corrupt { .. }
            | SnapshotError::Io { .. }
            | SnapshotError::Remote(_) => tonic::Status::internal(message),
        }
    }
}
