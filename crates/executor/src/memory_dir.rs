//! Where opened secrets are written for the instances that read them: memory-backed storage
//! (`/dev/shm`), so that they never reach a disk.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory of `owner`'s own (a data directory's run or cache directory) for `kind`
/// (`values`, `wasm-values`): `/dev/shm/gust-<kind>-<digest of owner>`, emptied and made anew
/// at every start, so what a killed Gust left goes. Falls back to `owner/<kind>` where there is
/// no `/dev/shm`.
pub fn private_memory_dir(owner: &Path, kind: &str) -> std::io::Result<PathBuf> {
    use sha2::Digest;
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        let tag = hex::encode(&sha2::Sha256::digest(owner.as_os_str().as_encoded_bytes())[..8]);
        shm.join(format!("gust-{kind}-{tag}"))
    } else {
        tracing::warn!(
            "no /dev/shm: functions' secrets are written under {} while their instances run",
            owner.display()
        );
        owner.join(kind)
    };
    // `/dev/shm` is writable by every local user and the name is predictable: whatever is
    // there is removed (a symlink as itself, never followed), and the directory is made anew
    // by this process alone. `mkdir` fails on anything another user put back in between,
    // and the sticky bit keeps them from replacing the directory once it is ours.
    if let Ok(meta) = std::fs::symlink_metadata(&root) {
        if meta.is_dir() {
            std::fs::remove_dir_all(&root)?;
        } else {
            std::fs::remove_file(&root)?;
        }
    }
    std::fs::DirBuilder::new().mode(0o711).create(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
    Ok(root)
}
