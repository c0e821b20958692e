//! Framing: how messages travel over one byte stream (a Unix socket, later a virtio-serial port).
//!
//! A frame is a `u32` big-endian length (tokio-util's [`LengthDelimitedCodec`]) followed by
//!
//! ```text
//! [u32 BE header length][header: JSON][payload: raw bytes, possibly empty]
//! ```
//!
//! The header is `{"v": PROTOCOL_VERSION, "stream": <u64>, "msg": {"type": "...", ...}}`. The `v` and
//! `stream` keys are frozen for all protocol versions, so a peer can always read them and answer a
//! frame of another version with a typed `version_mismatch` error on the right stream. The stream id
//! lets many requests share one transport (a virtio-serial port has exactly one stream); with one
//! connection per request it is simply 1.
//!
//! A malformed frame or a version mismatch does not end the connection: the decoder yields a
//! [`Rejected`] item and keeps decoding the frames that follow.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::PROTOCOL_VERSION;

/// Largest frame either side accepts (header + payload). Chosen to hold a whole-file read of
/// [`crate::MAX_WHOLE_FILE`] or a buffered exec with two full 16 MiB outputs, plus headers.
pub const MAX_FRAME_LEN: usize = 40 * 1024 * 1024;

/// Payload bytes per frame that senders of streams (stdout, file chunks) aim for.
pub const STREAM_CHUNK: usize = 256 * 1024;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<M> {
    pub stream: u64,
    pub msg: M,
    pub payload: Bytes,
}

impl<M> Frame<M> {
    pub fn new(stream: u64, msg: M) -> Self {
        Frame {
            stream,
            msg,
            payload: Bytes::new(),
        }
    }

    pub fn with_payload(stream: u64, msg: M, payload: Bytes) -> Self {
        Frame {
            stream,
            msg,
            payload,
        }
    }
}

/// A frame that was read completely but could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("peer speaks protocol version {remote}, this side speaks {local} (stream {stream})")]
    VersionMismatch {
        stream: u64,
        remote: u32,
        local: u32,
    },
    #[error("malformed frame on stream {stream:?}: {reason}")]
    Malformed { stream: Option<u64>, reason: String },
}

impl Rejected {
    /// The stream the rejected frame belonged to, when it could be read.
    pub fn stream(&self) -> Option<u64> {
        match self {
            Rejected::VersionMismatch { stream, .. } => Some(*stream),
            Rejected::Malformed { stream, .. } => *stream,
        }
    }
}

/// Fatal transport errors; the connection is unusable afterwards.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    #[error("encoding a frame header: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge { len: usize },
}

#[derive(Serialize)]
struct HeaderOut<'a, M> {
    v: u32,
    stream: u64,
    msg: &'a M,
}

/// The frozen part of every header.
#[derive(Deserialize)]
struct HeaderHead {
    v: u32,
    stream: u64,
}

#[derive(Deserialize)]
struct HeaderMsg<M> {
    msg: M,
}

/// Codec that decodes frames carrying `In` and encodes frames carrying `Out`.
///
/// The host uses `FrameCodec<Response, Request>`, the agent `FrameCodec<Request, Response>`.
pub struct FrameCodec<In, Out> {
    inner: LengthDelimitedCodec,
    _marker: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new() -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .big_endian()
                .length_field_length(4)
                .max_frame_length(MAX_FRAME_LEN)
                .new_codec(),
            _marker: PhantomData,
        }
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = Result<Frame<In>, Rejected>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        let Some(body) = self.inner.decode(src)? else {
            return Ok(None);
        };
        Ok(Some(parse_body(body.freeze())))
    }
}

fn parse_body<In: DeserializeOwned>(mut body: Bytes) -> Result<Frame<In>, Rejected> {
    let malformed = |stream, reason: String| Rejected::Malformed { stream, reason };
    if body.len() < 4 {
        return Err(malformed(
            None,
            "frame shorter than its header length".into(),
        ));
    }
    let header_len = body.get_u32() as usize;
    if header_len > body.len() {
        return Err(malformed(
            None,
            format!(
                "header length {header_len} exceeds frame body of {}",
                body.len()
            ),
        ));
    }
    let header = body.split_to(header_len);
    let head: HeaderHead = serde_json::from_slice(&header)
        .map_err(|e| malformed(None, format!("frame header: {e}")))?;
    if head.v != PROTOCOL_VERSION {
        return Err(Rejected::VersionMismatch {
            stream: head.stream,
            remote: head.v,
            local: PROTOCOL_VERSION,
        });
    }
    let msg: HeaderMsg<In> = serde_json::from_slice(&header)
        .map_err(|e| malformed(Some(head.stream), format!("message: {e}")))?;
    Ok(Frame {
        stream: head.stream,
        msg: msg.msg,
        payload: body,
    })
}

impl<In, Out: Serialize> Encoder<Frame<Out>> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame<Out>, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_with_version(PROTOCOL_VERSION, &frame, dst)
    }
}

/// Encodes a frame stamped with an explicit protocol version (tests use it to play an old peer).
pub fn encode_with_version<M: Serialize>(
    version: u32,
    frame: &Frame<M>,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let header = serde_json::to_vec(&HeaderOut {
        v: version,
        stream: frame.stream,
        msg: &frame.msg,
    })
    .map_err(CodecError::Encode)?;
    let body_len = 4 + header.len() + frame.payload.len();
    if body_len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge { len: body_len });
    }
    // Written by hand instead of through LengthDelimitedCodec::encode, which takes one contiguous
    // buffer: that would copy the payload twice. The layout is the codec's (u32 BE length prefix),
    // and the decoder side does go through LengthDelimitedCodec.
    dst.reserve(4 + body_len);
    dst.put_u32(body_len as u32);
    dst.put_u32(header.len() as u32);
    dst.extend_from_slice(&header);
    dst.extend_from_slice(&frame.payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    fn roundtrip_req(frame: Frame<Request>) -> Frame<Request> {
        let mut enc: FrameCodec<Response, Request> = FrameCodec::new();
        let mut dec: FrameCodec<Request, Response> = FrameCodec::new();
        let mut buf = BytesMut::new();
        enc.encode(frame, &mut buf).expect("encode");
        let out = dec
            .decode(&mut buf)
            .expect("decode")
            .expect("complete frame");
        assert!(buf.is_empty(), "decoder must consume the whole frame");
        out.expect("accepted")
    }

    #[test]
    fn request_round_trips_with_payload() {
        let mut spec = ExecSpec {
            argv: vec!["sh".into(), "-c".into(), "cat".into()],
            cwd: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            timeout_ms: Some(1500),
            ..ExecSpec::default()
        };
        spec.env.insert("A".into(), "b c".into());
        let payload = Bytes::from_static(b"\x00\x01binary\xff");
        let frame = Frame::with_payload(42, Request::Exec(spec), payload);
        assert_eq!(roundtrip_req(frame.clone()), frame);
    }

    #[test]
    fn every_simple_request_round_trips() {
        let reqs = vec![
            Request::Info,
            Request::StdinClose,
            Request::ListProcesses,
            Request::Signal { pid: 7, signal: 15 },
            Request::Wait {
                pid: 7,
                timeout_ms: None,
            },
            Request::ReadFileStream {
                path: "/a".into(),
                chunk_size: Some(10),
            },
            Request::WriteFileStream {
                path: "/a".into(),
                options: WriteOptions {
                    mode: Some(0o600),
                    create_parents: true,
                    atomic: false,
                },
            },
            Request::ListDir {
                path: "/".into(),
                depth: 2,
            },
            Request::Remove {
                path: "/x".into(),
                recursive: true,
            },
            Request::Mkdir {
                path: "/x".into(),
                mode: None,
                parents: true,
            },
            Request::Cancel,
        ];
        for (i, r) in reqs.into_iter().enumerate() {
            let f = Frame::new(u64::MAX - i as u64, r);
            assert_eq!(roundtrip_req(f.clone()), f);
        }
    }

    #[test]
    fn header_is_tagged_snake_case_json() {
        let mut buf = BytesMut::new();
        let frame = Frame::new(3, Request::Signal { pid: 9, signal: 2 });
        encode_with_version(PROTOCOL_VERSION, &frame, &mut buf).expect("encode");
        let hlen = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
        let header: serde_json::Value = serde_json::from_slice(&buf[8..8 + hlen]).expect("json");
        assert_eq!(
            header,
            serde_json::json!({"v": 1, "stream": 3, "msg": {"type": "signal", "pid": 9, "signal": 2}})
        );
    }

    #[test]
    fn response_round_trips() {
        let mut enc: FrameCodec<Request, Response> = FrameCodec::new();
        let mut dec: FrameCodec<Response, Request> = FrameCodec::new();
        let mut buf = BytesMut::new();
        let frames = vec![
            Frame::with_payload(
                1,
                Response::ExecDone(ExecDone {
                    status: ExitStatus {
                        exit_code: Some(3),
                        signal: None,
                        timed_out: false,
                    },
                    duration_ms: 5,
                    stdout_len: 2,
                    stdout_truncated: false,
                    stderr_truncated: true,
                }),
                Bytes::from_static(b"okerr"),
            ),
            Frame::new(1, Response::error(ErrorCode::NotFound, "no such file: /x")),
            Frame::new(
                2,
                Response::Exited(ExitStatus {
                    exit_code: None,
                    signal: Some(9),
                    timed_out: true,
                }),
            ),
        ];
        for f in &frames {
            enc.encode(f.clone(), &mut buf).expect("encode");
        }
        for f in frames {
            let got = dec.decode(&mut buf).expect("decode").expect("frame");
            assert_eq!(got.expect("accepted"), f);
        }
        assert!(dec.decode(&mut buf).expect("decode").is_none());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut buf = BytesMut::new();
        encode_with_version(
            PROTOCOL_VERSION,
            &Frame::with_payload(5, Request::WriteChunk, Bytes::from(vec![7u8; 1000])),
            &mut buf,
        )
        .expect("encode");
        let full = buf.split();
        let mut dec: FrameCodec<Request, Response> = FrameCodec::new();
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert!(dec.decode(&mut partial).expect("decode").is_none());
        partial.extend_from_slice(&full[full.len() - 1..]);
        let f = dec
            .decode(&mut partial)
            .expect("decode")
            .expect("frame")
            .expect("ok");
        assert_eq!(f.payload.len(), 1000);
    }

    #[test]
    fn version_mismatch_is_rejected_and_decoding_continues() {
        let mut buf = BytesMut::new();
        encode_with_version(7, &Frame::new(11, Request::Info), &mut buf).expect("encode");
        encode_with_version(PROTOCOL_VERSION, &Frame::new(12, Request::Info), &mut buf)
            .expect("encode");
        let mut dec: FrameCodec<Request, Response> = FrameCodec::new();
        let first = dec.decode(&mut buf).expect("decode").expect("frame");
        assert_eq!(
            first,
            Err(Rejected::VersionMismatch {
                stream: 11,
                remote: 7,
                local: PROTOCOL_VERSION
            })
        );
        let second = dec.decode(&mut buf).expect("decode").expect("frame");
        assert_eq!(second.expect("accepted").stream, 12);
    }

    #[test]
    fn unknown_message_type_is_malformed_with_stream() {
        let mut buf = BytesMut::new();
        let header = br#"{"v":1,"stream":4,"msg":{"type":"teleport"}}"#;
        buf.put_u32((4 + header.len()) as u32);
        buf.put_u32(header.len() as u32);
        buf.extend_from_slice(header);
        let mut dec: FrameCodec<Request, Response> = FrameCodec::new();
        match dec.decode(&mut buf).expect("decode").expect("frame") {
            Err(Rejected::Malformed { stream, reason }) => {
                assert_eq!(stream, Some(4));
                assert!(reason.contains("teleport"), "{reason}");
            }
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn unknown_error_code_decodes_as_unknown() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"code":"quota_exceeded","message":"m"}"#).expect("json");
        assert_eq!(body.code, ErrorCode::Unknown);
    }

    #[test]
    fn oversized_frame_is_a_fatal_error() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_LEN + 1) as u32);
        let mut dec: FrameCodec<Request, Response> = FrameCodec::new();
        assert!(dec.decode(&mut buf).is_err());
        let too_big = Frame::with_payload(
            1,
            Request::WriteChunk,
            Bytes::from(vec![0u8; MAX_FRAME_LEN]),
        );
        assert!(matches!(
            encode_with_version(1, &too_big, &mut BytesMut::new()),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
