use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use vivarium_api::{
    BuildImageRequest, DefaultImageStatus, ErrorBody, Image, ImageList, ImageProgress,
    ImportImageRequest, PushImageRequest, PushImageResponse,
};
use vivarium_image::{ImageStore, PullProgress};

use super::AppStateRef;
use crate::convert::{self, image_error};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;

/// The stored images.
#[utoipa::path(
    get,
    path = "/v1/images",
    operation_id = "list_images",
    tag = "images",
    responses(
        (status = 200, description = "The images", body = ImageList),
    ),
    security(("bearer" = []))
)]
pub async fn list(State(s): AppStateRef) -> ApiResult<Json<ImageList>> {
    let images = s.runner.images.list().map_err(image_error)?;
    Ok(Json(ImageList {
        images: images.iter().map(convert::image).collect(),
    }))
}

/// The image a create that names none gets, and how far its preparation is (the built-in
/// desktop image is built and imported on first need; this shows its progress).
#[utoipa::path(
    get,
    path = "/v1/images/default",
    operation_id = "get_default_image",
    tag = "images",
    responses(
        (status = 200, description = "The default image and its state", body = DefaultImageStatus),
    ),
    security(("bearer" = []))
)]
pub async fn default_status(State(s): AppStateRef) -> Json<DefaultImageStatus> {
    Json(s.runner.default_image_status())
}

/// Prepares the default image now (builds and imports the built-in desktop image if it is not
/// stored yet) and answers when it is ready, so the first create does not wait for it.
#[utoipa::path(
    post,
    path = "/v1/images/default",
    operation_id = "prepare_default_image",
    tag = "images",
    responses(
        (status = 200, description = "The default image is ready", body = DefaultImageStatus),
        (status = 503, description = "It could not be prepared (`default_image_unavailable`; the message says why)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn prepare_default(State(s): AppStateRef) -> ApiResult<Json<DefaultImageStatus>> {
    s.runner.default_image_reference().await?;
    Ok(Json(s.runner.default_image_status()))
}

/// One stored image.
#[utoipa::path(
    get,
    path = "/v1/images/{reference}",
    operation_id = "get_image",
    tag = "images",
    params(("reference" = String, Path, description = "An image reference (`busybox:1.36`, may contain `/`) or a digest (`sha256:...`)")),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 400, description = "Not a valid reference", body = ErrorBody),
        (status = 404, description = "Not stored here (`image_not_found`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(State(s): AppStateRef, Path(reference): Path<String>) -> ApiResult<Json<Image>> {
    let r = ImageStore::parse_reference(&reference)
        .map_err(|e| image_error(e).with_field("reference"))?;
    let info = s.runner.images.get(&r).map_err(image_error)?;
    info.map(|i| Json(convert::image(&i))).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "image_not_found",
            format!("image {reference} is not stored here"),
        )
    })
}

#[utoipa::path(
    post,
    path = "/v1/images/build",
    operation_id = "build_image",
    tag = "images",
    request_body = BuildImageRequest,
    responses(
        (status = 200, description = "With `Accept: application/x-ndjson`: one `ImageProgress` per line, ending in `done` or `error`",
         content_type = "application/x-ndjson", body = ImageProgress),
        (status = 201, description = "The stored image", body = Image),
        (status = 400, description = "Not a pinned reference (`unpinned_tag`) or invalid", body = ErrorBody),
        (status = 404, description = "The registry has no such image (`image_not_found`)", body = ErrorBody),
        (status = 502, description = "The registry is unreachable (`registry_unreachable`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// Pulls and prepares an image ahead of use. With `Accept: application/x-ndjson` the answer is a
/// stream of progress lines ending in `done` or `error`; otherwise the finished image.
pub async fn build(
    State(s): AppStateRef,
    headers: HeaderMap,
    ApiJson(req): ApiJson<BuildImageRequest>,
) -> ApiResult<Response> {
    let r =
        ImageStore::parse_reference(&req.image).map_err(|e| image_error(e).with_field("image"))?;
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("ndjson"));
    if !wants_stream {
        let info = s
            .runner
            .images
            .pull(&r, None)
            .await
            .map_err(|e| image_error(e).with_field("image"))?;
        return Ok((StatusCode::CREATED, Json(convert::image(&info))).into_response());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PullProgress>();
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let images = s.runner.images.clone();
    tokio::spawn(async move {
        let pull = images.pull(&r, Some(tx));
        tokio::pin!(pull);
        let result = loop {
            tokio::select! {
                res = &mut pull => break res,
                Some(p) = rx.recv() => {
                    if out_tx.send(Ok(line(&convert::progress(p)))).await.is_err() { /* client left; keep pulling */ }
                }
            }
        };
        while let Ok(p) = rx.try_recv() {
            let _ = out_tx.send(Ok(line(&convert::progress(p)))).await;
        }
        let last = match result {
            Ok(info) => ImageProgress::Done {
                image: convert::image(&info),
            },
            Err(e) => ImageProgress::Error {
                error: image_error(e).with_field("image").detail(),
            },
        };
        let _ = out_tx.send(Ok(line(&last))).await;
    });
    let body = Body::from_stream(tokio_stream_from(out_rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

fn line<T: serde::Serialize>(v: &T) -> Bytes {
    let mut l = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    l.push(b'\n');
    Bytes::from(l)
}

/// Imports an OCI layout (directory or tar) that is on the runner's host.
#[utoipa::path(
    post,
    path = "/v1/images/import",
    operation_id = "import_image",
    tag = "images",
    request_body = ImportImageRequest,
    responses(
        (status = 201, description = "The stored image", body = Image),
        (status = 400, description = "Bad path, tag or layout", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn import(
    State(s): AppStateRef,
    ApiJson(req): ApiJson<ImportImageRequest>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    let path = std::path::PathBuf::from(&req.path);
    if !path.is_absolute() {
        return Err(ApiError::invalid(
            "path",
            "path must be an absolute path on the runner's host",
        ));
    }
    if !path.exists() {
        return Err(ApiError::invalid(
            "path",
            format!("{} does not exist on the runner's host", req.path),
        ));
    }
    ImageStore::parse_reference(&req.tag).map_err(|e| image_error(e).with_field("tag"))?;
    let info = s
        .runner
        .images
        .import(&path, &req.tag)
        .await
        .map_err(|e| image_error(e).with_field("path"))?;
    Ok((StatusCode::CREATED, Json(convert::image(&info))))
}

/// Pushes a stored image to a registry.
#[utoipa::path(
    post,
    path = "/v1/images/push",
    operation_id = "push_image",
    tag = "images",
    request_body = PushImageRequest,
    responses(
        (status = 200, description = "Pushed", body = PushImageResponse),
        (status = 400, description = "Bad reference", body = ErrorBody),
        (status = 404, description = "No such stored image", body = ErrorBody),
        (status = 502, description = "The registry is unreachable or refused", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn push(
    State(s): AppStateRef,
    ApiJson(req): ApiJson<PushImageRequest>,
) -> ApiResult<Json<PushImageResponse>> {
    let target = ImageStore::parse_reference(&req.target)
        .map_err(|e| image_error(e).with_field("target"))?;
    let digest = s
        .runner
        .images
        .push(&req.image, &target)
        .await
        .map_err(|e| image_error(e).with_field("image"))?;
    Ok(Json(PushImageResponse {
        target: req.target,
        digest,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/images/{reference}",
    operation_id = "delete_image",
    tag = "images",
    params(("reference" = String, Path, description = "An image reference (`busybox:1.36`, may contain `/`) or a digest (`sha256:...`)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "Not stored here", body = ErrorBody),
        (status = 409, description = "A running sandbox uses it (`image_in_use`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// Removes a stored image, unless a sandbox still runs on it (its rootfs is that sandbox's lower dir).
pub async fn remove(State(s): AppStateRef, Path(reference): Path<String>) -> ApiResult<StatusCode> {
    let digest = if reference.starts_with("sha256:") {
        Some(reference.clone())
    } else {
        let r = ImageStore::parse_reference(&reference)
            .map_err(|e| image_error(e).with_field("reference"))?;
        s.runner
            .images
            .get(&r)
            .map_err(image_error)?
            .map(|i| i.digest)
    };
    if let Some(digest) = digest {
        let users = s.runner.sandboxes_using(&digest);
        if !users.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "image_in_use",
                format!(
                    "image {reference} is used by running sandboxes {}; delete them first",
                    users.join(", ")
                ),
            )
            .with_field("reference"));
        }
    }
    s.runner
        .images
        .remove(&reference)
        .await
        .map_err(|e| image_error(e).with_field("reference"))?;
    Ok(StatusCode::NO_CONTENT)
}
