//! Content-addressed function code: uploads are unpacked into a private staging directory
//! under strict limits, hashed, and published as `<root>/<sha256>` with one rename, so a tree
//! is either complete or absent.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use gust_model::CodeRef;
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Bounds on what one upload may unpack to (zip bombs, file floods).
#[derive(Debug, Clone, Copy)]
pub struct CodeLimits {
    pub max_files: usize,
    pub max_total_bytes: u64,
}

impl Default for CodeLimits {
    fn default() -> Self {
        Self {
            max_files: 10_000,
            max_total_bytes: 256 * 1024 * 1024,
        }
    }
}

/// One upload as the API received it.
pub struct CodeUpload<'a> {
    /// The uploaded file's name; its suffix says what it is (`.zip`, `.tar.gz`, `.tgz`,
    /// `.tar`, anything else is a single source file).
    pub filename: &'a str,
    pub bytes: &'a [u8],
}

enum UploadKind {
    Zip,
    TarGz,
    Tar,
    File,
}

impl UploadKind {
    fn of(filename: &str) -> Self {
        let lower = filename.to_ascii_lowercase();
        if lower.ends_with(".zip") {
            Self::Zip
        } else if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Self::TarGz
        } else if lower.ends_with(".tar") {
            Self::Tar
        } else {
            Self::File
        }
    }
}

pub struct CodeStore {
    root: PathBuf,
    limits: CodeLimits,
    /// Held shared by whoever publishes a tree and then refers to it in metadata
    /// ([`CodeStore::hold`]), exclusive by garbage collection ([`CodeStore::retain`]): a tree
    /// is never collected between its upload and the revision that refers to it.
    in_use: std::sync::RwLock<()>,
    /// Trees in use by work in progress (a build between making its tree and the revision
    /// that refers to it), by digest and count: garbage collection leaves them.
    pinned: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// Keeps one tree from garbage collection while held (see [`CodeStore::pin`]).
pub struct CodePin {
    store: std::sync::Arc<CodeStore>,
    digest: String,
}

impl CodePin {
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl Drop for CodePin {
    fn drop(&mut self) {
        let mut pinned = self
            .store
            .pinned
            .lock()
            .expect("pin lock is never poisoned");
        if let Some(count) = pinned.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                pinned.remove(&self.digest);
            }
        }
    }
}

/// Keeps garbage collection away while held (see [`CodeStore::hold`]).
pub struct CodeHold<'a> {
    _guard: std::sync::RwLockReadGuard<'a, ()>,
}

const STAGING_PREFIX: &str = ".staging-";
/// An upload received to disk, waiting for the function that will use it; named
/// `.staging-upload-<id>` so that collection skips it and a restart deletes it.
const UPLOAD_PREFIX: &str = ".staging-upload-";
/// Uploads waiting at once; more are refused until one is used or expires.
const MAX_PENDING_UPLOADS: usize = 16;

/// What an upload is read from: the bytes of a JSON body, or a file it was received into.
enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

impl<'a> Source<'a> {
    fn open(&self) -> Result<Box<dyn ReadSeek + 'a>, StoreError> {
        Ok(match *self {
            Source::Bytes(bytes) => Box::new(io::Cursor::new(bytes)),
            Source::File(path) => Box::new(io::BufReader::new(
                File::open(path).map_err(StoreError::io(path))?,
            )),
        })
    }
}

impl CodeStore {
    /// Opens (creating) the store and removes staging directories a crash left behind.
    pub fn open(root: &Path, limits: CodeLimits) -> Result<Self, StoreError> {
        fs::create_dir_all(root).map_err(StoreError::io(root))?;
        for entry in fs::read_dir(root).map_err(StoreError::io(root))? {
            let entry = entry.map_err(StoreError::io(root))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&path).map_err(StoreError::io(&path))?;
                } else {
                    fs::remove_file(&path).map_err(StoreError::io(&path))?;
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
            limits,
            in_use: std::sync::RwLock::new(()),
            pinned: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Hold this from before an upload is ingested until the metadata that refers to it is
    /// stored: garbage collection waits meanwhile.
    pub fn hold(&self) -> CodeHold<'_> {
        CodeHold {
            _guard: self.in_use.read().expect("the code lock is never poisoned"),
        }
    }

    /// Deletes every tree whose digest `referenced` does not return; returns how many.
    /// `referenced` reads the digests every stored revision refers to; uploads wait from
    /// before it runs until the deleting is done, so none is lost in between.
    pub fn retain(
        &self,
        referenced: impl FnOnce() -> Result<std::collections::HashSet<String>, StoreError>,
    ) -> Result<usize, StoreError> {
        let _exclusive = self
            .in_use
            .write()
            .expect("the code lock is never poisoned");
        let keep = referenced()?;
        // Held through the sweep: a tree pinned before it is published is never taken.
        let pinned = self.pinned.lock().expect("pin lock is never poisoned");
        let mut removed = 0;
        for entry in fs::read_dir(&self.root).map_err(StoreError::io(&self.root))? {
            let entry = entry.map_err(StoreError::io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING_PREFIX)
                || keep.contains(&name)
                || pinned.contains_key(&name)
            {
                continue;
            }
            // Renamed out of the way first: a tree deleted half-way (a crash, an error) must
            // not stay under its digest, where it would be taken for whole.
            let path = entry.path();
            let doomed = self.root.join(format!("{STAGING_PREFIX}deleting-{name}"));
            fs::rename(&path, &doomed).map_err(StoreError::io(&path))?;
            fs::remove_dir_all(&doomed).map_err(StoreError::io(&doomed))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The directory holding the tree with this digest.
    pub fn tree(&self, digest: &str) -> PathBuf {
        self.root.join(digest)
    }

    /// Unpacks, validates and publishes an upload; the same content always yields the same
    /// digest and is stored once.
    pub fn ingest(&self, upload: &CodeUpload<'_>) -> Result<CodeRef, StoreError> {
        self.ingest_from(upload.filename, Source::Bytes(upload.bytes))
    }

    /// Starts receiving an upload to disk: its id and the file to write it to. At most
    /// [`MAX_PENDING_UPLOADS`] wait at once.
    pub fn begin_upload(&self) -> Result<(String, File), StoreError> {
        let pending = fs::read_dir(&self.root)
            .map_err(StoreError::io(&self.root))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(UPLOAD_PREFIX))
            .count();
        if pending >= MAX_PENDING_UPLOADS {
            return Err(StoreError::invalid_code(format!(
                "{MAX_PENDING_UPLOADS} uploads are already waiting to be used; use or wait for them"
            )));
        }
        let mut random = [0u8; 16];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(StoreError::io("/dev/urandom"))?;
        let id = hex::encode(random);
        let path = self.upload_file(&id)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        Ok((id, file))
    }

    /// The file an upload was received into; `NotFound` for an id that is not waiting.
    pub fn upload_file(&self, id: &str) -> Result<PathBuf, StoreError> {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(StoreError::NotFound {
                kind: "upload",
                name: id.to_owned(),
            });
        }
        Ok(self.root.join(format!("{UPLOAD_PREFIX}{id}")))
    }

    /// Publishes a received upload as [`CodeStore::ingest`] does, then deletes it.
    pub fn ingest_upload(&self, id: &str, filename: &str) -> Result<CodeRef, StoreError> {
        let path = self.upload_file(id)?;
        if !path.is_file() {
            return Err(StoreError::NotFound {
                kind: "upload",
                name: id.to_owned(),
            });
        }
        let ingested = self.ingest_from(filename, Source::File(&path));
        self.discard_upload(id);
        ingested
    }

    /// Deletes a received upload (best effort).
    pub fn discard_upload(&self, id: &str) {
        if let Ok(path) = self.upload_file(id) {
            let _ = fs::remove_file(path);
        }
    }

    /// Deletes uploads received longer than `max_age` ago and never used; returns how many.
    pub fn expire_uploads(&self, max_age: std::time::Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(UPLOAD_PREFIX))
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > max_age))
            })
            .filter(|e| fs::remove_file(e.path()).is_ok())
            .count()
    }

    fn ingest_from(&self, filename: &str, source: Source<'_>) -> Result<CodeRef, StoreError> {
        let (_staging, tree) = self.staging_tree()?;
        let mut unpacker = Unpacker {
            root: &tree,
            limits: self.limits,
            files: 0,
            bytes: 0,
            sync_each_file: true,
        };
        let file = match UploadKind::of(filename) {
            UploadKind::Zip => {
                unpacker.zip(source.open()?)?;
                None
            }
            UploadKind::TarGz => {
                unpacker.tar(flate2::read::GzDecoder::new(source.open()?))?;
                None
            }
            UploadKind::Tar => {
                unpacker.tar(source.open()?)?;
                None
            }
            UploadKind::File => {
                let name = single_file_name(filename)?;
                unpacker.file(Path::new(&name), &mut source.open()?, false, None)?;
                Some(name)
            }
        };
        if unpacker.files == 0 {
            return Err(StoreError::invalid_code("the upload contains no files"));
        }
        // Each link stayed inside lexically; chained through other links it may not.
        check_links_resolve_inside(&tree)?;
        let digest = digest_tree(&tree)?;
        self.publish(&tree, &digest)?;
        Ok(CodeRef {
            digest,
            file,
            size_bytes: unpacker.bytes,
        })
    }

    /// An empty tree being made, in a staging directory that goes when dropped (and at the
    /// next start, after a crash).
    fn staging_tree(&self) -> Result<(tempfile::TempDir, PathBuf), StoreError> {
        let staging = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(&self.root)
            .map_err(StoreError::io(&self.root))?;
        let tree = staging.path().join("tree");
        fs::create_dir(&tree).map_err(StoreError::io(&tree))?;
        Ok((staging, tree))
    }

    /// Moves a complete tree to its place under `digest`, once.
    fn publish(&self, tree: &Path, digest: &str) -> Result<(), StoreError> {
        let target = self.tree(digest);
        if !target.exists() {
            sync_dir(tree)?;
            match fs::rename(tree, &target) {
                Ok(()) => sync_dir(&self.root)?,
                // Another upload of the same content won the race: same bytes, nothing to do.
                Err(_) if target.exists() => {}
                Err(err) => return Err(StoreError::io(&target)(err)),
            }
        }
        Ok(())
    }

    /// Keeps the tree `digest` (existing or about to be) from garbage collection while the
    /// pin is held.
    pub fn pin(self: &std::sync::Arc<Self>, digest: &str) -> CodePin {
        *self
            .pinned
            .lock()
            .expect("pin lock is never poisoned")
            .entry(digest.to_owned())
            .or_default() += 1;
        CodePin {
            store: self.clone(),
            digest: digest.to_owned(),
        }
    }

    /// Unpacks a tar stream a build wrote (untrusted: the same checks as an upload, within
    /// `limits`) and publishes it, pinned; returns the pin and the tree's size. An empty
    /// stream is an empty tree.
    pub fn ingest_tar_stream(
        self: &std::sync::Arc<Self>,
        reader: impl Read,
        limits: CodeLimits,
    ) -> Result<(CodePin, u64), StoreError> {
        let (_staging, tree) = self.staging_tree()?;
        let mut unpacker = Unpacker {
            root: &tree,
            limits,
            files: 0,
            bytes: 0,
            sync_each_file: false,
        };
        unpacker.tar(reader)?;
        check_links_resolve_inside(&tree)?;
        sync_filesystem(&tree)?;
        let digest = digest_tree(&tree)?;
        let pin = self.pin(&digest);
        self.publish(&tree, &digest)?;
        Ok((pin, unpacker.bytes))
    }

    /// A package: the tree `dependencies` with the tree `source` laid over it (the uploaded
    /// files win where both have a file: nothing installed can replace the function's own
    /// code), made of hard links to both, so assembling costs no copy. Its digest is derived from the two digests.
    pub fn assemble(&self, source: &CodeRef, dependencies: &str) -> Result<CodeRef, StoreError> {
        let mut hasher = Sha256::new();
        hasher.update(b"gust package v2\0");
        hasher.update(source.digest.as_bytes());
        hasher.update([0]);
        hasher.update(dependencies.as_bytes());
        let digest = hex::encode(hasher.finalize());
        let bytes = source.size_bytes + tree_bytes(&self.tree(dependencies))?;
        if !self.tree(&digest).exists() {
            let (_staging, tree) = self.staging_tree()?;
            link_over(&self.tree(dependencies), &tree)?;
            link_over(&self.tree(&source.digest), &tree)?;
            check_links_resolve_inside(&tree)?;
            sync_filesystem(&tree)?;
            self.publish(&tree, &digest)?;
        }
        Ok(CodeRef {
            digest,
            file: None,
            size_bytes: bytes,
        })
    }

    /// Writes the tree `digest` as a tar stream: how a tree travels to the other nodes of a
    /// cluster. Modes and modification times are kept; links stay links.
    pub fn export_tar(&self, digest: &str, writer: impl Write) -> Result<(), StoreError> {
        let tree = self.tree(&checked_digest(digest)?);
        let mut archive = tar::Builder::new(writer);
        archive.follow_symlinks(false);
        archive
            .append_dir_all(".", &tree)
            .and_then(|()| archive.into_inner().map(drop))
            .map_err(StoreError::io(&tree))
    }

    /// Unpacks a tar stream that [`CodeStore::export_tar`] wrote on another node (checked
    /// like any upload, within the store's limits) and publishes it as `digest`. A tree
    /// already here is left as it is.
    pub fn import_tar(&self, digest: &str, reader: impl Read) -> Result<(), StoreError> {
        let digest = checked_digest(digest)?;
        if self.tree(&digest).exists() {
            return Ok(());
        }
        let (_staging, tree) = self.staging_tree()?;
        let mut unpacker = Unpacker {
            root: &tree,
            limits: self.limits,
            files: 0,
            bytes: 0,
            sync_each_file: false,
        };
        unpacker.tar(reader)?;
        check_links_resolve_inside(&tree)?;
        sync_filesystem(&tree)?;
        self.publish(&tree, &digest)
    }

    /// A stored tree as a revision's code (a directory, its bytes counted).
    pub fn tree_ref(&self, digest: &str) -> Result<CodeRef, StoreError> {
        Ok(CodeRef {
            digest: digest.to_owned(),
            file: None,
            size_bytes: tree_bytes(&self.tree(digest))?,
        })
    }

    /// Reads a regular file of a stored tree, at most `limit` bytes (`None` when absent).
    pub fn read_file(
        &self,
        digest: &str,
        name: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.tree(digest).join(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(StoreError::invalid_code(format!(
                    "{name} must be a regular file"
                )));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(StoreError::io(&path)(err)),
        }
        let mut content = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut content))
            .map_err(StoreError::io(&path))?;
        if content.len() as u64 > limit {
            return Err(StoreError::invalid_code(format!(
                "{name} is larger than {limit} bytes"
            )));
        }
        Ok(Some(content))
    }
}

/// Whether `digest` is a code digest: 64 lowercase hex digits, nothing a path could use.
pub fn is_code_digest(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A digest as a tree's directory name (see [`is_code_digest`]).
fn checked_digest(digest: &str) -> Result<String, StoreError> {
    if is_code_digest(digest) {
        Ok(digest.to_owned())
    } else {
        Err(StoreError::invalid_code(format!(
            "{digest:?} is not a code digest"
        )))
    }
}

/// Hard-links every entry of `from` into `to` (directories created, symlinks recreated),
/// replacing what `to` already has at the same path.
fn link_over(from: &Path, to: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(from).map_err(StoreError::io(from))? {
        let entry = entry.map_err(StoreError::io(from))?;
        let kind = entry.file_type().map_err(StoreError::io(entry.path()))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let existing = fs::symlink_metadata(&target).ok();
        if kind.is_dir() {
            match existing {
                Some(meta) if meta.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&target).map_err(StoreError::io(&target))?;
                    fs::create_dir(&target).map_err(StoreError::io(&target))?;
                }
                None => fs::create_dir(&target).map_err(StoreError::io(&target))?,
            }
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
                .map_err(StoreError::io(&target))?;
            link_over(&source, &target)?;
            continue;
        }
        match existing {
            Some(meta) if meta.is_dir() => {
                fs::remove_dir_all(&target).map_err(StoreError::io(&target))?
            }
            Some(_) => fs::remove_file(&target).map_err(StoreError::io(&target))?,
            None => {}
        }
        if kind.is_symlink() {
            let link = fs::read_link(&source).map_err(StoreError::io(&source))?;
            symlink(link, &target).map_err(StoreError::io(&target))?;
        } else {
            fs::hard_link(&source, &target).map_err(StoreError::io(&target))?;
        }
    }
    Ok(())
}

/// The bytes of every regular file under `root`.
fn tree_bytes(root: &Path) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let meta = fs::symlink_metadata(entry.path()).map_err(StoreError::io(entry.path()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

fn single_file_name(filename: &str) -> Result<String, StoreError> {
    let name = Path::new(filename)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(StoreError::invalid_code(format!(
            "file name {filename:?} must be letters, digits, '.', '-' and '_'"
        )))
    }
}

struct Unpacker<'a> {
    root: &'a Path,
    limits: CodeLimits,
    files: usize,
    bytes: u64,
    /// Each file synced as written (uploads, usually a few files); otherwise the whole
    /// filesystem once at the end (a build's output, often thousands).
    sync_each_file: bool,
}

impl Unpacker<'_> {
    fn tar(&mut self, reader: impl Read) -> Result<(), StoreError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| StoreError::invalid_code(format!("unreadable tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|e| StoreError::invalid_code(format!("unreadable tar entry: {e}")))?;
            let raw_path = entry
                .path()
                .map_err(|e| StoreError::invalid_code(format!("unreadable tar entry path: {e}")))?
                .into_owned();
            let path = safe_relative_path(&raw_path)?;
            let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    // The archive's modification time is kept: Python's compiled modules
                    // (`__pycache__`) are valid only for sources of the time they record,
                    // and a package whose sources all look newer is compiled again at every
                    // start of every instance.
                    let modified = entry.header().mtime().ok();
                    self.file(&path, &mut entry, executable, modified)?
                }
                tar::EntryType::Directory => self.dir(&path)?,
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .ok_or_else(|| StoreError::invalid_code("symlink without a target"))?
                        .into_owned();
                    self.symlink(&path, &target)?
                }
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                other => {
                    return Err(StoreError::invalid_code(format!(
                        "{} is a {} entry; only files, directories and symlinks inside the archive are allowed",
                        raw_path.display(),
                        entry_type_name(other)
                    )));
                }
            }
        }
        Ok(())
    }

    fn zip(&mut self, reader: impl Read + Seek) -> Result<(), StoreError> {
        let mut archive = zip::ZipArchive::new(reader)
            .map_err(|e| StoreError::invalid_code(format!("unreadable zip archive: {e}")))?;
        if archive.len() > self.limits.max_files {
            return Err(self.too_many_files());
        }
        for index in 0..archive.len() {
            let mut entry = archive
                .by_index(index)
                .map_err(|e| StoreError::invalid_code(format!("unreadable zip entry: {e}")))?;
            let raw_path = PathBuf::from(entry.name());
            let path = safe_relative_path(&raw_path)?;
            let mode = entry.unix_mode().unwrap_or(0o644);
            match mode & 0o170000 {
                0o120000 => {
                    let mut target = String::new();
                    entry
                        .by_ref()
                        .take(4096)
                        .read_to_string(&mut target)
                        .map_err(|e| {
                            StoreError::invalid_code(format!("unreadable symlink: {e}"))
                        })?;
                    self.symlink(&path, Path::new(&target))?;
                }
                _ if entry.is_dir() => self.dir(&path)?,
                0 | 0o100000 => self.file(&path, &mut entry, mode & 0o111 != 0, None)?,
                _ => {
                    return Err(StoreError::invalid_code(format!(
                        "{} is not a regular file, directory or symlink",
                        raw_path.display()
                    )));
                }
            }
        }
        Ok(())
    }

    fn too_many_files(&self) -> StoreError {
        StoreError::invalid_code(format!(
            "the archive holds more than {} files",
            self.limits.max_files
        ))
    }

    fn dir(&mut self, path: &Path) -> Result<(), StoreError> {
        if path.as_os_str().is_empty() {
            return Ok(());
        }
        self.ensure_parents(&path.join("x"))?;
        Ok(())
    }

    /// Creates the parent directories of `path`, refusing to pass through a symlink so that
    /// no later entry can be written outside the tree by way of a link. Each directory made
    /// counts as a file against the limit.
    fn ensure_parents(&mut self, path: &Path) -> Result<PathBuf, StoreError> {
        let mut current = self.root.to_path_buf();
        if let Some(parent) = path.parent() {
            for component in parent.components() {
                current.push(component);
                match fs::symlink_metadata(&current) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return Err(StoreError::invalid_code(format!(
                            "{} is not a directory (entries may not be written through links)",
                            parent.display()
                        )));
                    }
                    Err(_) => {
                        self.files += 1;
                        if self.files > self.limits.max_files {
                            return Err(self.too_many_files());
                        }
                        fs::create_dir(&current).map_err(StoreError::io(&current))?;
                        fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                            .map_err(StoreError::io(&current))?;
                    }
                }
            }
        }
        Ok(self.root.join(path))
    }

    /// Writes one file; `modified` is its modification time in seconds since the epoch, when
    /// the archive says.
    fn file(
        &mut self,
        path: &Path,
        reader: &mut dyn Read,
        executable: bool,
        modified: Option<u64>,
    ) -> Result<(), StoreError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(self.too_many_files());
        }
        let target = self.ensure_parents(path)?;
        let mode = if executable { 0o755 } else { 0o644 };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&target)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => {
                    StoreError::invalid_code(format!("{} appears twice", path.display()))
                }
                _ => StoreError::io(&target)(e),
            })?;
        // Count real bytes rather than trusting sizes declared in headers.
        let remaining = self.limits.max_total_bytes - self.bytes;
        let copied = io::copy(&mut reader.take(remaining + 1), &mut out).map_err(|e| {
            StoreError::invalid_code(format!("{}: unreadable data: {e}", path.display()))
        })?;
        self.bytes += copied;
        if self.bytes > self.limits.max_total_bytes {
            return Err(StoreError::invalid_code(format!(
                "the code unpacks to more than {} bytes",
                self.limits.max_total_bytes
            )));
        }
        // A time past what the system can hold (a negative one in a GNU header reads as
        // nearly 2^64) is left as it is.
        if let Some(time) = modified.and_then(|seconds| {
            std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds))
        }) {
            out.set_modified(time).map_err(StoreError::io(&target))?;
        }
        if self.sync_each_file {
            out.sync_all().map_err(StoreError::io(&target))?;
        }
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))
            .map_err(StoreError::io(&target))
    }

    fn symlink(&mut self, path: &Path, target: &Path) -> Result<(), StoreError> {
        let escapes = || {
            StoreError::invalid_code(format!(
                "symlink {} points to {}, outside the code",
                path.display(),
                target.display()
            ))
        };
        if target.is_absolute() {
            return Err(escapes());
        }
        // Resolve lexically from the link's directory; it must stay inside the tree.
        let mut depth: usize = path.components().count().saturating_sub(1);
        for component in target.components() {
            match component {
                Component::Normal(_) => depth += 1,
                Component::CurDir => {}
                Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escapes)?,
                Component::RootDir | Component::Prefix(_) => return Err(escapes()),
            }
        }
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(self.too_many_files());
        }
        let link = self.ensure_parents(path)?;
        symlink(target, &link).map_err(StoreError::io(&link))
    }
}

fn entry_type_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        _ => "special",
    }
}

/// Normalizes an archive path, refusing absolute paths and any `..`.
fn safe_relative_path(raw: &Path) -> Result<PathBuf, StoreError> {
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(StoreError::invalid_code(format!(
                    "entry {} contains '..'",
                    raw.display()
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(StoreError::invalid_code(format!(
                    "entry {} is an absolute path",
                    raw.display()
                )));
            }
        }
    }
    Ok(clean)
}

/// Links followed while resolving one path, as the kernel's limit (40).
const MAX_LINK_HOPS: usize = 40;

/// Refuses a tree in which some symlink, resolved through every link it crosses as the
/// kernel would, leads outside the tree or loops.
fn check_links_resolve_inside(root: &Path) -> Result<(), StoreError> {
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let kind = entry.file_type().map_err(StoreError::io(entry.path()))?;
            let rel = relative.join(entry.file_name());
            if kind.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(StoreError::io(entry.path()))?;
                let from: Vec<OsString> = relative
                    .components()
                    .map(|c| c.as_os_str().to_owned())
                    .collect();
                if resolve_inside(root, from, &target).is_none() {
                    return Err(StoreError::invalid_code(format!(
                        "symlink {} points to {}, which leads outside the code through other links",
                        rel.display(),
                        target.display()
                    )));
                }
            } else if kind.is_dir() {
                stack.push(rel);
            }
        }
    }
    Ok(())
}

/// Resolves `target` from the directory `from` (components below `root`), following links
/// inside the tree; `None` when it leaves the tree, is absolute, or takes too many hops.
fn resolve_inside(root: &Path, mut at: Vec<OsString>, target: &Path) -> Option<Vec<OsString>> {
    let mut pending: std::collections::VecDeque<OsString> = target
        .components()
        .map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::CurDir => Some(OsString::from(".")),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect::<Option<_>>()?;
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part.to_str() {
            Some(".") => continue,
            Some("..") => {
                at.pop()?;
                continue;
            }
            _ => {}
        }
        at.push(part);
        let path: PathBuf = at.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        if let Ok(link) = fs::read_link(&path) {
            hops += 1;
            if hops > MAX_LINK_HOPS || link.is_absolute() {
                return None;
            }
            at.pop();
            for component in link.components().rev() {
                pending.push_front(match component {
                    Component::Normal(name) => name.to_owned(),
                    Component::CurDir => OsString::from("."),
                    Component::ParentDir => OsString::from(".."),
                    Component::RootDir | Component::Prefix(_) => return None,
                });
            }
        }
    }
    Some(at)
}

/// SHA-256 over every entry's relative path, kind, mode and content, in sorted order.
fn digest_tree(root: &Path) -> Result<String, StoreError> {
    let mut hasher = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(StoreError::io(&dir))?
            .collect::<Result<_, _>>()
            .map_err(StoreError::io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let rel = relative.join(entry.file_name());
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(StoreError::io(&path))?;
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update([0]);
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(StoreError::io(&path))?;
                hasher.update(b"l");
                hasher.update(target.to_string_lossy().as_bytes());
            } else if meta.is_dir() {
                hasher.update(b"d");
                stack.push(rel);
            } else {
                hasher.update(if meta.permissions().mode() & 0o111 != 0 {
                    b"x"
                } else {
                    b"f"
                });
                let mut file = File::open(&path).map_err(StoreError::io(&path))?;
                let mut content_hasher = Sha256::new();
                io::copy(&mut file, &mut HashWriter(&mut content_hasher))
                    .map_err(StoreError::io(&path))?;
                hasher.update(content_hasher.finalize());
            }
            hasher.update([0]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes everything cached for the filesystem holding `path` to disk (one call instead of
/// one per file).
fn sync_filesystem(path: &Path) -> Result<(), StoreError> {
    let dir = File::open(path).map_err(StoreError::io(path))?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(StoreError::io(path)(io::Error::last_os_error()));
    }
    Ok(())
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(StoreError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, CodeStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::open(
            &dir.path().join("code"),
            CodeLimits {
                max_files: 5,
                max_total_bytes: 1000,
            },
        )
        .unwrap();
        (dir, store)
    }

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header
    }

    /// Writes a raw path into a header, bypassing the tar crate's own path checks, the way a
    /// hostile tool would.
    fn raw_path(header: &mut tar::Header, path: &str) {
        let name = &mut header.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
    }

    fn ingest(store: &CodeStore, name: &str, bytes: &[u8]) -> Result<CodeRef, StoreError> {
        store.ingest(&CodeUpload {
            filename: name,
            bytes,
        })
    }

    #[test]
    fn a_tree_exported_on_one_node_imports_on_another_as_the_same_tree() {
        let (_dir, here) = store();
        let (_other_dir, there) = store();
        let archive = tar_gz(|tar| {
            let mut file = header(tar::EntryType::Regular, 3);
            file.set_mode(0o755);
            file.set_mtime(1_000_000);
            tar.append_data(&mut file, "bin/run", &b"hi\n"[..]).unwrap();
            let mut link = header(tar::EntryType::Symlink, 0);
            tar.append_link(&mut link, "run", "bin/run").unwrap();
        });
        let code = ingest(&here, "app.tar.gz", &archive).unwrap();
        let mut exported = Vec::new();
        here.export_tar(&code.digest, &mut exported).unwrap();
        there.import_tar(&code.digest, exported.as_slice()).unwrap();
        assert_eq!(digest_tree(&there.tree(&code.digest)).unwrap(), code.digest);
        let modified = fs::metadata(there.tree(&code.digest).join("bin/run"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_000_000
        );
        // A digest is a directory name: nothing else is accepted as one.
        for bad in ["../x", "", &"A".repeat(64)] {
            assert!(there.import_tar(bad, exported.as_slice()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_build_stream_keeps_modification_times_counts_directories_and_is_pinned() {
        let (_dir, store) = store();
        let store = std::sync::Arc::new(store);
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_mtime(1_000_000);
        header.set_cksum();
        tar.append_data(&mut header, "pkg/mod.py", &b"x\n"[..])
            .unwrap();
        let bytes = tar.into_inner().unwrap();
        let limits = CodeLimits {
            max_files: 2,
            max_total_bytes: 1000,
        };
        let (pin, size) = store.ingest_tar_stream(&bytes[..], limits).unwrap();
        assert_eq!(size, 2);
        let modified = fs::metadata(store.tree(pin.digest()).join("pkg/mod.py"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            modified,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)
        );
        // Pinned: collection keeps it though nothing refers to it; released, it goes.
        assert_eq!(store.retain(|| Ok(Default::default())).unwrap(), 0);
        let digest = pin.digest().to_owned();
        drop(pin);
        assert_eq!(store.retain(|| Ok(Default::default())).unwrap(), 1);
        assert!(!store.tree(&digest).exists());
        // A directory counts against the file limit like a file.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "a/b/c", &b"x"[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        let Err(err) = store.ingest_tar_stream(&bytes[..], limits) else {
            panic!("three entries with a limit of two");
        };
        assert!(err.to_string().contains("more than 2 files"), "{err}");
    }

    #[test]
    fn single_files_are_content_addressed() {
        let (_dir, store) = store();
        let a = ingest(&store, "hello.py", b"def main(): pass").unwrap();
        let b = ingest(&store, "hello.py", b"def main(): pass").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.file.as_deref(), Some("hello.py"));
        let c = ingest(&store, "hello.py", b"def main(): return 1").unwrap();
        assert_ne!(a.digest, c.digest);
        assert!(store.tree(&a.digest).join("hello.py").is_file());
    }

    #[test]
    fn tar_with_dirs_and_internal_links_is_accepted() {
        let (_dir, store) = store();
        let archive = tar_gz(|b| {
            let mut h = header(tar::EntryType::Regular, 5);
            b.append_data(&mut h, "pkg/main.py", &b"x = 1"[..]).unwrap();
            let mut link = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut link, "alias.py", "pkg/main.py").unwrap();
        });
        let code = ingest(&store, "code.tar.gz", &archive).unwrap();
        let tree = store.tree(&code.digest);
        assert_eq!(fs::read_to_string(tree.join("alias.py")).unwrap(), "x = 1");
    }

    #[test]
    fn hostile_archives_are_refused_and_write_nothing_outside() {
        let (dir, store) = store();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                tar_gz(|b| {
                    let mut h = header(tar::EntryType::Regular, 1);
                    raw_path(&mut h, "../escape.txt");
                    b.append(&h, &b"x"[..]).unwrap();
                }),
                "'..'",
            ),
            (
                "absolute",
                tar_gz(|b| {
                    let mut h = header(tar::EntryType::Regular, 1);
                    raw_path(&mut h, "/tmp/escape.txt");
                    b.append(&h, &b"x"[..]).unwrap();
                }),
                "absolute",
            ),
            (
                "link-out",
                tar_gz(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "out", "../../etc").unwrap();
                }),
                "outside",
            ),
            (
                "link-abs",
                tar_gz(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "out", "/etc/passwd").unwrap();
                }),
                "outside",
            ),
            (
                "write-through-link",
                tar_gz(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "d", ".").unwrap();
                    let mut f = header(tar::EntryType::Regular, 1);
                    b.append_data(&mut f, "d/x", &b"x"[..]).unwrap();
                }),
                "through links",
            ),
            (
                "chained-links",
                tar_gz(|b| {
                    // Each link stays inside on its own; through `x/l` the second leaves.
                    let mut f = header(tar::EntryType::Regular, 1);
                    b.append_data(&mut f, "x/keep", &b"x"[..]).unwrap();
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "x/l", "..").unwrap();
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "token", "x/l/x/l/x/l/../../admin.token")
                        .unwrap();
                }),
                "through other links",
            ),
            (
                "link-loop",
                tar_gz(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "a", "b").unwrap();
                    let mut h = header(tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, "b", "a").unwrap();
                }),
                "through other links",
            ),
            (
                "hardlink",
                tar_gz(|b| {
                    let mut h = header(tar::EntryType::Link, 0);
                    b.append_link(&mut h, "h", "/etc/passwd").unwrap();
                }),
                "hard link",
            ),
            (
                "device",
                tar_gz(|b| {
                    let mut h = header(tar::EntryType::Char, 0);
                    b.append_data(&mut h, "dev", &b""[..]).unwrap();
                }),
                "character device",
            ),
            (
                "too-many",
                tar_gz(|b| {
                    for i in 0..6 {
                        let mut h = header(tar::EntryType::Regular, 1);
                        b.append_data(&mut h, format!("f{i}"), &b"x"[..]).unwrap();
                    }
                }),
                "more than 5 files",
            ),
            (
                "bomb",
                tar_gz(|b| {
                    let zeros = vec![0u8; 5000];
                    let mut h = header(tar::EntryType::Regular, zeros.len() as u64);
                    b.append_data(&mut h, "big", &zeros[..]).unwrap();
                }),
                "more than 1000 bytes",
            ),
            ("garbage", b"not an archive at all".to_vec(), "tar"),
        ];
        for (case, bytes, expected) in cases {
            let err = ingest(&store, "code.tar.gz", &bytes)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{case}: {err}");
        }
        assert!(!dir.path().join("escape.txt").exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("code")).unwrap().collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    }

    #[test]
    fn zip_bombs_and_zip_slips_are_refused() {
        let (_dir, store) = store();
        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("big", options).unwrap();
        zip.write_all(&vec![0u8; 100_000]).unwrap();
        let bomb = zip.finish().unwrap().into_inner();
        assert!(bomb.len() < 1000, "the bomb compresses");
        let err = ingest(&store, "code.zip", &bomb).unwrap_err().to_string();
        assert!(err.contains("more than 1000 bytes"), "{err}");

        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        zip.start_file("../../slip", options).unwrap();
        zip.write_all(b"x").unwrap();
        let slip = zip.finish().unwrap().into_inner();
        let err = ingest(&store, "code.zip", &slip).unwrap_err().to_string();
        assert!(err.contains("'..'"), "{err}");
    }

    #[test]
    fn retain_deletes_only_trees_no_revision_refers_to() {
        let (_dir, store) = store();
        let kept = ingest(&store, "a.py", b"a").unwrap();
        let dropped = ingest(&store, "b.py", b"b").unwrap();
        let removed = store
            .retain(|| Ok([kept.digest.clone()].into_iter().collect()))
            .unwrap();
        assert_eq!(removed, 1);
        assert!(store.tree(&kept.digest).exists());
        assert!(!store.tree(&dropped.digest).exists());
    }

    #[test]
    fn bad_single_file_names_are_refused() {
        let (_dir, store) = store();
        assert!(ingest(&store, "a b.py", b"x").is_err());
        assert!(ingest(&store, "", b"x").is_err());
    }
}
