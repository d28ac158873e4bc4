//! Turns `--code PATH` into an upload: a file goes as it is (archives too), a directory is
//! packed into a gzipped tar with its symlinks kept as links. The bytes go to `/v1/uploads`
//! (streamed to disk by Gust); the function's body then names the upload.

use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use gust_api_types::{CodeSource, UploadView};
use http::Method;

use crate::client::{ApiClient, ApiPath};

/// Packs `path` and sends it to Gust; returns what the function's body names.
pub async fn upload(client: &ApiClient, path: &Path) -> anyhow::Result<CodeSource> {
    let (filename, bytes) = pack(path)?;
    send(client, filename, bytes).await
}

/// Sends packed code to Gust; returns what the function's body names.
pub async fn send(
    client: &ApiClient,
    filename: String,
    bytes: Vec<u8>,
) -> anyhow::Result<CodeSource> {
    let response = client
        .send(
            Method::POST,
            &ApiPath::new(["v1", "uploads"]),
            &[(
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            )],
            Bytes::from(bytes),
        )
        .await?
        .success()?;
    let answer: UploadView =
        serde_json::from_slice(&response.body).context("the API answered with unexpected JSON")?;
    Ok(CodeSource {
        filename,
        content_base64: None,
        upload: Some(answer.upload),
    })
}

/// The upload's file name and bytes: a file as it is, a directory as a gzipped tar.
pub fn pack(path: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read code at {}", path.display()))?;
    let (filename, bytes) = if meta.is_dir() {
        ("code.tar.gz".to_owned(), pack_dir(path)?)
    } else if meta.is_file() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", path.display()))?
            .to_owned();
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        (name, bytes)
    } else {
        bail!("{} is neither a file nor a directory", path.display());
    };
    Ok((filename, bytes))
}

fn pack_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    let gz = tar.into_inner().context("cannot finish the archive")?;
    gz.finish().context("cannot compress the archive")
}
