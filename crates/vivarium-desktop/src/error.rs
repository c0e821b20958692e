//! Typed errors of the desktop library.

use std::path::PathBuf;

/// Everything that can go wrong talking to the X server or supervising the session.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    #[error("cannot connect to X display {display:?}: {source}")]
    Connect {
        display: String,
        #[source]
        source: x11rb::errors::ConnectError,
    },
    #[error("X connection failed during {context}: {source}")]
    Connection {
        context: &'static str,
        #[source]
        source: x11rb::errors::ConnectionError,
    },
    #[error("X request failed during {context}: {source}")]
    Reply {
        context: &'static str,
        #[source]
        source: x11rb::errors::ReplyError,
    },
    #[error("X resource id allocation failed: {0}")]
    IdAlloc(#[from] x11rb::errors::ReplyOrIdError),
    #[error("the X server lacks the {0} extension")]
    MissingExtension(&'static str),
    #[error("coordinates ({x}, {y}) are outside the {width}x{height} screen")]
    OutOfBounds {
        x: i32,
        y: i32,
        width: u32,
        height: u32,
    },
    #[error("region {x},{y} {w}x{h} is not inside the {width}x{height} screen")]
    BadRegion {
        x: i32,
        y: i32,
        w: u32,
        h: u32,
        width: u32,
        height: u32,
    },
    #[error("invalid size {width}x{height}: {reason}")]
    BadSize {
        width: u32,
        height: u32,
        reason: &'static str,
    },
    #[error("unknown key name {0:?} (use X keysym names like Return, ctrl+a, alt+F4, or a single character)")]
    UnknownKey(String),
    #[error("empty key combination")]
    EmptyKey,
    #[error("no spare keycode left to type {0:?}")]
    NoSpareKeycode(char),
    #[error("unsupported pixel format: {0}")]
    PixelFormat(String),
    #[error("{format} encoding failed: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
    #[error("scaling failed: {0}")]
    Scale(String),
    #[error("cannot read image {path}: {message}")]
    ImageFile { path: PathBuf, message: String },
    #[error("window {0:#x} does not exist")]
    NoSuchWindow(u32),
    #[error("no EWMH window manager is running (root has no _NET_SUPPORTING_WM_CHECK)")]
    NoWindowManager,
    #[error("clipboard: {0}")]
    Clipboard(String),
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout { what: String, ms: u128 },
    #[error("RandR: {0}")]
    Randr(String),
    #[error("shared memory: {0}")]
    Shm(String),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{component} exited before it was ready ({status})")]
    EarlyExit { component: String, status: String },
    #[error("I/O during {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = DesktopError> = std::result::Result<T, E>;

/// Attach a context label to x11rb errors.
pub(crate) trait XContext<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T> XContext<T> for Result<T, x11rb::errors::ConnectionError> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|source| DesktopError::Connection { context, source })
    }
}

impl<T> XContext<T> for Result<T, x11rb::errors::ReplyError> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|source| DesktopError::Reply { context, source })
    }
}
