//! vivarium-proto: the versioned, typed protocol between the runner (host) and the guest agent
//! that runs as PID 1 in every sandbox, defined once for both ends.
//!
//! - [`messages`]: the request/response enums and their structs.
//! - [`frame`]: framing over any byte stream (length-delimited frames of JSON header + raw payload,
//!   with a stream id for multiplexing and the protocol version in every header).
//! - [`client`]: the host-side [`client::AgentClient`].

pub mod client;
pub mod frame;
pub mod messages;

pub use client::{AgentClient, ClientError, ExecEvents, ExecStdin, ExecStream};
pub use frame::{CodecError, Frame, FrameCodec, Rejected, MAX_FRAME_LEN, STREAM_CHUNK};
pub use messages::*;

/// Version of the wire protocol; carried in every frame header. Peers with different versions
/// answer each other's frames with [`ErrorCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u32 = 1;
