//! Typed errors for the library.
//!
//! Every error that a client can cause carries the OCI distribution-spec error code it maps to
//! ([`Error::code`]); the HTTP layer turns that into status + JSON body in one place
//! (`server::error`). Storage code never sees HTTP types.

use crate::vocab::digest::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(Digest),
    /// A file under a blob's name that ferry will not read as content (a FIFO, a socket, a
    /// directory, a symlink leaving the layout): treated as absent, and named.
    #[error("blob {digest} is {why}; treated as absent")]
    BlobUnreadable { digest: Digest, why: String },
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references a blob or manifest that is not in the registry: {0}")]
    ManifestBlobUnknown(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry: {0}")]
    ManifestUnknown(String),
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("manifest too large: {size} bytes (limit {limit})")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error("requested range not satisfiable: {0}")]
    RangeInvalid(String),
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    #[error("invalid pagination parameter: {0}")]
    PaginationInvalid(String),
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no space left on the registry's disk")]
    NoSpace,
    #[error("the data directory is not a valid OCI image layout: {0}")]
    Layout(String),
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
    /// The object store failed or refused (unreachable, bad credentials, no such bucket, a 5xx):
    /// `what` names the store and the operation.
    #[error("{what}: {message}")]
    Storage { what: String, message: String },
    /// A command line or a file given by the user is wrong.
    #[error("{0}")]
    Usage(String),
    /// A remote registry failed or refused.
    #[error("registry {registry}: {message}")]
    Remote { registry: String, message: String },
    /// Content that does not hash to its digest (a corrupt source or a lying upstream).
    #[error("{digest}: content does not match its digest ({detail})")]
    Corrupt { digest: Digest, detail: String },
    /// An archive (`oci-archive:`, `docker-archive:`, split volumes) that cannot be read or
    /// written as it is: the message names the file and what is wrong.
    #[error("archive {0}")]
    Archive(String),
    /// A signed trip that does not verify: unsigned, another key, or content that differs
    /// from its statement (named).
    #[error("trip refused: {0}")]
    Trip(String),
    /// A delta cannot be applied: these blobs are neither in it nor at the destination.
    #[error("{} blob(s) missing from both the delta and the destination: {}", .0.len(), .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))]
    MissingBlobs(Vec<Digest>),
    /// A layer carried as a patch could not be rebuilt exactly (a missing or wrong base, a
    /// truncated or tampered patch, a digest mismatch): nothing of it is published.
    #[error("{digest}: not rebuilt from its patch: {detail}")]
    Patch { digest: Digest, detail: String },
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC / EDQUOT deserve their own answer: the client cannot fix them by retrying at once.
        match e.raw_os_error() {
            Some(28) | Some(122) => Error::NoSpace,
            _ => Error::Io(e),
        }
    }
}

impl Error {
    /// The distribution-spec error code (`errors[].code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::BlobUnknown(_) | Error::BlobUnreadable { .. } => "BLOB_UNKNOWN",
            Error::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Error::BlobUploadInvalid(_) => "BLOB_UPLOAD_INVALID",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            Error::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            Error::ManifestInvalid(_) => "MANIFEST_INVALID",
            Error::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Error::NameInvalid(_) => "NAME_INVALID",
            Error::NameUnknown(_) => "NAME_UNKNOWN",
            Error::SizeInvalid(_) => "SIZE_INVALID",
            Error::ManifestTooLarge { .. } => "SIZE_INVALID",
            Error::RangeInvalid(_) => "BLOB_UPLOAD_INVALID",
            Error::TagInvalid(_) => "MANIFEST_INVALID",
            Error::PaginationInvalid(_) => "PAGINATION_NUMBER_INVALID",
            Error::Unsupported(_) => "UNSUPPORTED",
            Error::NoSpace => "NO_SPACE",
            Error::TooManyRequests(_) => "TOOMANYREQUESTS",
            Error::Tls(_) => "UNKNOWN",
            Error::Layout(_) | Error::Io(_) | Error::Storage { .. } => "UNKNOWN",
            Error::Usage(_) | Error::Remote { .. } | Error::MissingBlobs(_) => "UNKNOWN",
            Error::Archive(_) | Error::Trip(_) | Error::Patch { .. } => "UNKNOWN",
            Error::Corrupt { .. } => "DIGEST_INVALID",
        }
    }
}
