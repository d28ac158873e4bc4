//! Turns `--code PATH` into an upload: a file goes as it is (archives too), a directory is
//! packed into a gzipped tar with its symlinks kept as links.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct CodeUpload {
    pub filename: String,
    pub content_base64: String,
}

pub fn pack(path: &Path) -> anyhow::Result<CodeUpload> {
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
    Ok(CodeUpload {
        filename,
        content_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
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
