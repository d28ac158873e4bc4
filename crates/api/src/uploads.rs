//! Code uploads received to disk as they arrive: `POST /v1/uploads` takes the raw archive (or
//! source file, or component) as its body and answers with an id; a function's create or
//! update then names it (`"code": {"filename": ..., "upload": ID}`). An upload holds one chunk
//! of memory at a time however large it is, unlike base64 code inside a JSON body.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use gust_api_types::{ErrorBody, UploadView};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::{ApiError, Shared};

/// Largest upload, as large as a JSON body's code could be.
pub const MAX_UPLOAD_BYTES: u64 = 128 * 1024 * 1024;
/// How long an upload may pause between two pieces before it is abandoned.
const UPLOAD_STALL: Duration = Duration::from_secs(30);

#[utoipa::path(post, path = "/uploads", tag = "functions", request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the code: a source file, an archive or a component, up to 128 MB"), responses((status = 201, body = UploadView), (status = 413, description = "the upload is over 128 MB", body = ErrorBody)))]
pub async fn create(
    State(state): Shared,
    body: Body,
) -> Result<(StatusCode, Json<UploadView>), ApiError> {
    let (id, file) = state
        .blocking(|s| s.code.begin_upload().map_err(ApiError::from))
        .await?;
    let received = receive(body, tokio::fs::File::from_std(file)).await;
    match received {
        Ok(size_bytes) => Ok((
            StatusCode::CREATED,
            Json(UploadView {
                upload: id,
                size_bytes,
            }),
        )),
        Err(err) => {
            let discarded = id.clone();
            let _ = state
                .blocking(move |s| {
                    s.code.discard_upload(&discarded);
                    Ok(())
                })
                .await;
            Err(err)
        }
    }
}

/// Writes `body` to `file` piece by piece, within [`MAX_UPLOAD_BYTES`] and [`UPLOAD_STALL`].
async fn receive(mut body: Body, mut file: tokio::fs::File) -> Result<u64, ApiError> {
    let mut size: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(UPLOAD_STALL, body.frame()).await {
            Err(_) => {
                return Err(ApiError::Invalid(format!(
                    "the upload paused for more than {UPLOAD_STALL:?}"
                )));
            }
            Ok(None) => break,
            Ok(Some(frame)) => {
                frame.map_err(|e| ApiError::Invalid(format!("the upload was cut off: {e}")))?
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > MAX_UPLOAD_BYTES {
            return Err(ApiError::Invalid(format!(
                "the upload is larger than {} MB",
                MAX_UPLOAD_BYTES / (1024 * 1024)
            )));
        }
        file.write_all(&data)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot store the upload: {e}")))?;
    }
    if size == 0 {
        return Err(ApiError::Invalid("the upload is empty".to_owned()));
    }
    file.sync_all()
        .await
        .map_err(|e| ApiError::Internal(format!("cannot store the upload: {e}")))?;
    Ok(size)
}
