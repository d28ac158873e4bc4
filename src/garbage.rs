//! Garbage collection of code: the trees of the code store and the compiled components of the
//! WebAssembly cache that no kept revision of any function refers to any more (a deleted
//! function's, a pruned revision's) are deleted soon after they lose their last reference,
//! and at least every ten minutes. Uploads wait while the code store is swept, so a tree is
//! never taken between its upload and the revision that refers to it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gust_model::Tier;
use gust_runtime_wasm::WasmRuntime;
use gust_store::{CodeStore, MetadataStore, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The longest the collector waits without looking.
const COLLECT_EVERY: Duration = Duration::from_secs(600);
/// After a function is deleted or updated, the collector waits this long for more changes.
const SETTLE: Duration = Duration::from_millis(500);
/// Uploads no function used within this time are deleted.
const UPLOAD_EXPIRY: Duration = Duration::from_secs(60 * 60);

pub struct Collector {
    pub store: Arc<dyn MetadataStore>,
    pub code: Arc<CodeStore>,
    pub wasm: Arc<WasmRuntime>,
    /// Notified when code may have lost its last reference.
    pub released: Arc<Notify>,
}

impl Collector {
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let collector = self.clone();
            match tokio::task::spawn_blocking(move || collector.collect()).await {
                Ok(Ok((trees, compiled))) if trees + compiled > 0 => {
                    tracing::info!(trees, compiled, "unreferenced code deleted");
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "cannot collect unreferenced code"),
                Err(err) => tracing::error!(error = %err, "code collection task failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.released.notified() => {
                    tokio::time::sleep(SETTLE).await;
                }
                _ = tokio::time::sleep(COLLECT_EVERY) => {}
            }
        }
    }

    /// Deletes unreferenced code trees, then unreferenced compiled components; returns how
    /// many of each.
    fn collect(&self) -> Result<(usize, usize), StoreError> {
        let mut wasm_files: Vec<PathBuf> = Vec::new();
        let trees = self.code.retain(|| {
            let wasm_environments: HashSet<String> = self
                .store
                .environments()?
                .into_iter()
                .filter(|env| env.tier() == Tier::Wasm)
                .map(|env| env.name.to_string())
                .collect();
            let mut referenced = HashSet::new();
            for function in self.store.functions(None)? {
                for revision in &function.revisions {
                    if wasm_environments.contains(revision.environment.as_str())
                        && let Some(file) = &revision.code.file
                    {
                        wasm_files.push(self.code.tree(&revision.code.digest).join(file));
                    }
                    referenced.insert(revision.code.digest.clone());
                    // A build's sources and the dependency tree it made (or found cached),
                    // which later builds with the same cache key reuse.
                    if let Some(build) = &revision.build {
                        referenced.insert(build.source.digest.clone());
                        referenced.extend(build.dependencies.clone());
                    }
                }
            }
            Ok(referenced)
        })?;
        let expired = self.code.expire_uploads(UPLOAD_EXPIRY);
        if expired > 0 {
            tracing::info!(expired, "uploads no function used were deleted");
        }
        let compiled = self.wasm.retain_compiled(&wasm_files);
        Ok((trees, compiled))
    }
}
