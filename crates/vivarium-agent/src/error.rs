//! The agent's error type: a protocol [`ErrorCode`] plus a message with context.

use vivarium_proto::{ErrorBody, ErrorCode, Response};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field the error is about, when there is one.
    pub field: Option<String>,
}

impl AgentError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AgentError {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the request field the error is about (`x`, `keys`, `id`...).
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// An OS error with what was being done, e.g. `io(e, format!("open {path}"))`.
    pub fn io(err: std::io::Error, context: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::from_io(&err), format!("{context}: {err}"))
    }

    pub fn into_response(self) -> Response {
        Response::Error(ErrorBody {
            code: self.code,
            message: self.message,
            field: self.field,
        })
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
