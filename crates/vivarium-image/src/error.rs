//! Errors of the image store, with a coarse [`ErrorKind`] the HTTP layer maps to a status code.

use std::sync::Arc;

/// What kind of failure an [`ImageError`] is, for mapping to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's input is wrong (bad or unpinned reference, bad archive): 400.
    InvalidInput,
    /// The image (or a blob of it) does not exist: 404.
    NotFound,
    /// The registry failed us (unreachable, refused credentials, sent bad data): 502.
    Upstream,
    /// Local failure (disk, metadata): 500.
    Internal,
}

/// Every error the image store returns. `Clone` so that concurrent pulls sharing one download
/// can all receive the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error(
        "image reference `{reference}` is not pinned: {reason}; use a fixed tag \
         (e.g. `busybox:1.36.1`) or a digest (`busybox@sha256:…`)"
    )]
    UnpinnedTag { reference: String, reason: String },

    #[error("image `{reference}` not found: {detail}")]
    NotFound { reference: String, detail: String },

    #[error("registry `{registry}` is unreachable: {detail}")]
    Unreachable { registry: String, detail: String },

    #[error("registry `{registry}` denied access to `{reference}`: {detail}")]
    Unauthorized {
        registry: String,
        reference: String,
        detail: String,
    },

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("image `{reference}` has no linux/amd64 variant: {detail}")]
    UnsupportedPlatform { reference: String, detail: String },

    #[error("image `{reference}` uses unsupported media type `{media_type}`")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },

    #[error("layer entry `{path}` would escape the root filesystem")]
    PathEscape { path: String },

    #[error("invalid image {what}: {detail}")]
    InvalidImage { what: String, detail: String },

    #[error("registry `{registry}` error for `{reference}`: {detail}")]
    Registry {
        registry: String,
        reference: String,
        detail: String,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: Arc<std::io::Error>,
    },

    #[error("image store metadata `{path}`: {source}")]
    Metadata {
        path: String,
        #[source]
        source: Arc<serde_json::Error>,
    },

    #[error("internal error: {0}")]
    Internal(String),
}

impl ImageError {
    /// The coarse kind, for the HTTP layer (400 / 404 / 502 / 500).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::InvalidReference { .. }
            | ImageError::UnpinnedTag { .. }
            | ImageError::PathEscape { .. }
            | ImageError::InvalidImage { .. }
            | ImageError::UnsupportedMediaType { .. }
            | ImageError::UnsupportedPlatform { .. } => ErrorKind::InvalidInput,
            ImageError::NotFound { .. } => ErrorKind::NotFound,
            ImageError::Unreachable { .. }
            | ImageError::Unauthorized { .. }
            | ImageError::DigestMismatch { .. }
            | ImageError::Registry { .. } => ErrorKind::Upstream,
            ImageError::Io { .. } | ImageError::Metadata { .. } | ImageError::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// A stable machine-readable code (`"unpinned_tag"`, `"not_found"`, …) for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::InvalidReference { .. } => "invalid_reference",
            ImageError::UnpinnedTag { .. } => "unpinned_tag",
            ImageError::NotFound { .. } => "image_not_found",
            ImageError::Unreachable { .. } => "registry_unreachable",
            ImageError::Unauthorized { .. } => "registry_unauthorized",
            ImageError::DigestMismatch { .. } => "digest_mismatch",
            ImageError::UnsupportedPlatform { .. } => "unsupported_platform",
            ImageError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ImageError::PathEscape { .. } => "path_escape",
            ImageError::InvalidImage { .. } => "invalid_image",
            ImageError::Registry { .. } => "registry_error",
            ImageError::Io { .. } => "io_error",
            ImageError::Metadata { .. } => "metadata_error",
            ImageError::Internal(_) => "internal_error",
        }
    }

    /// HTTP status the API should answer with.
    pub fn http_status(&self) -> u16 {
        match self.kind() {
            ErrorKind::InvalidInput => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Upstream => 502,
            ErrorKind::Internal => 500,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, detail: impl ToString) -> Self {
        ImageError::InvalidImage {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// `result.map_err(io_ctx(|| format!("…")))` helper.
pub(crate) fn io_ctx<F: FnOnce() -> String>(f: F) -> impl FnOnce(std::io::Error) -> ImageError {
    move |e| ImageError::io(f(), e)
}
