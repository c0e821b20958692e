//! Request extractors whose failures are API errors that name the field at fault.
//!
//! axum's own `Json` answers malformed bodies with plain text and no field name; agents need a JSON
//! body they can parse, so this wraps `serde_path_to_error` to report the path of the bad field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest JSON request body accepted (file uploads use the streamed `PUT` instead); the router's
/// `DefaultBodyLimit` enforces it for every extractor that buffers a body.
pub const MAX_JSON_BODY: usize = vivarium_api::limits::MAX_JSON_BODY_BYTES;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!(
                    "JSON request bodies are at most {MAX_JSON_BODY} bytes (send file contents \
                     with PUT /v1/runs/{{id}}/files)"
                ))
            } else {
                ApiError::invalid("body", format!("could not read the request body: {e}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body; an empty body is read as `{}` so requests whose fields are all optional work
/// without one.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // Every body is an object; serde would also read a struct from an array (`[null, null]`).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "body",
            "the request body must be a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid("body", format!("malformed JSON: {inner}"));
        }
        let msg = inner.to_string();
        // Unknown and missing fields are reported at the parent path; name the field itself.
        let field = if let Some(name) = quoted_after(&msg, "unknown field `") {
            join(&path, &name)
        } else if let Some(name) = quoted_after(&msg, "missing field `") {
            join(&path, &name)
        } else if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(field, msg)
    })
}

fn quoted_after(msg: &str, prefix: &str) -> Option<String> {
    let rest = &msg[msg.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

fn join(path: &str, name: &str) -> String {
    // serde_path_to_error already ends the path with an unknown field's name.
    if path == name || path.ends_with(&format!(".{name}")) {
        path.to_string()
    } else if path == "." || path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Query string parsed with the same error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded_de(q);
        de.map(ApiQuery)
    }
}

fn serde_urlencoded_de<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    // axum's Query uses serde_urlencoded; go through its map form to keep one dependency.
    let pairs: Vec<(String, String)> = url_pairs(q);
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let value = serde_json::Value::Object(map);
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let msg = err.into_inner().to_string();
        let field = quoted_after(&msg, "missing field `").unwrap_or(path);
        ApiError::invalid(field, msg)
    })
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vivarium_api::CreateRunRequest;

    #[test]
    fn names_the_bad_field() {
        let e = parse_json::<CreateRunRequest>(br#"{"image":"a:1","mem_mib":-5}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("mem_mib"));
        let e = parse_json::<CreateRunRequest>(br#"{"image":"a:1","bogus":1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("bogus"));
        let e = parse_json::<CreateRunRequest>(br#"{"image": "#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
        assert!(e.message.contains("malformed JSON"));
        let e = parse_json::<vivarium_api::SetTimeoutRequest>(b"{}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timeout_s"));
        let e = parse_json::<CreateRunRequest>(br#"{"env":{"A":1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("env.A"));
    }

    #[test]
    fn only_objects() {
        for bad in [&b"[null, null]"[..], b"null", b"5", b"\"x\""] {
            let e = parse_json::<CreateRunRequest>(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("body"));
        }
        assert!(parse_json::<CreateRunRequest>(b" {} ").is_ok());
    }

    #[test]
    fn empty_body_is_empty_object() {
        let r: CreateRunRequest = parse_json(b"").unwrap();
        assert!(r.image.is_none());
    }
}
