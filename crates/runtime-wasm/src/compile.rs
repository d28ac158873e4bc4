//! Compiling components ahead of time, with a cache keyed by content and engine settings.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::WasmError;

/// Feeds `Hash` output into SHA-256 (the engine exposes its settings only as `Hash`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The compiled component for `wasm`: from the cache when this engine compiled it before,
/// else compiled now and cached.
pub fn load(engine: &Engine, cache_dir: &Path, wasm: &[u8]) -> Result<Component, WasmError> {
    let key = cache_key(engine, wasm);
    match load_cached(engine, cache_dir, &key) {
        Some(component) => Ok(component),
        None => compile(engine, cache_dir, &key, wasm),
    }
}

/// The compiled component of key `key` from the cache, if it is there and usable.
pub fn load_cached(engine: &Engine, cache_dir: &Path, key: &str) -> Option<Component> {
    let cached = cache_dir.join(format!("{key}.cwasm"));
    // SAFETY: the file is in Gust's private data directory and was written by `compile` from
    // `precompile_component`; the key covers the engine's settings.
    match unsafe { Component::deserialize_file(engine, &cached) } {
        Ok(component) => Some(component),
        Err(err) if cached.exists() => {
            tracing::warn!(path = %cached.display(), error = %err, "recompiling an unusable cached component");
            None
        }
        Err(_) => None,
    }
}

/// Compiles `wasm` and writes the result to the cache under `key`, its [`cache_key`].
pub fn compile(
    engine: &Engine,
    cache_dir: &Path,
    key: &str,
    wasm: &[u8],
) -> Result<Component, WasmError> {
    if !wasmparser_is_component(wasm) {
        return Err(WasmError::Invalid {
            reason:
                "the file is not a WebAssembly component (a core module or not WebAssembly at all)"
                    .into(),
        });
    }
    let cached = cache_dir.join(format!("{key}.cwasm"));
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|e| WasmError::Invalid {
            reason: format!("{e:#}"),
        })?;
    // A temporary file of its own (two deploys of the same code compile at once), renamed
    // into place whole; it is removed if anything fails before.
    let write = || -> std::io::Result<()> {
        let mut temp = tempfile::Builder::new()
            .prefix(&format!(".{key}."))
            .suffix(".tmp")
            .tempfile_in(cache_dir)?;
        temp.write_all(&compiled)?;
        temp.as_file().sync_all()?;
        temp.persist(&cached).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(WasmError::io(&cached))?;
    // SAFETY: `compiled` was produced just now by this engine.
    unsafe { Component::deserialize(engine, &compiled) }.map_err(|e| WasmError::Invalid {
        reason: format!("{e:#}"),
    })
}

/// The name of `wasm`'s compiled artifact in the cache (`<key>.cwasm`): its content and the
/// engine's settings.
pub fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.update(wasm);
    hex::encode(hasher.0.finalize())
}

/// Deletes every compiled artifact in `cache_dir` whose key is not in `keep`; returns how
/// many. A component loaded from one keeps its mapping until it is dropped.
pub fn retain(cache_dir: &Path, keep: &std::collections::HashSet<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".cwasm")) else {
            continue;
        };
        if !keep.contains(key) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A component starts with the magic and a layer-1 version; a core module has layer 0.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_components_from_modules_and_garbage() {
        let module = b"\0asm\x01\x00\x00\x00";
        let component = b"\0asm\x0d\x00\x01\x00";
        assert!(!wasmparser_is_component(module));
        assert!(wasmparser_is_component(component));
        assert!(!wasmparser_is_component(b"hello world"));
    }
}
