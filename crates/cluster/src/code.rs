//! Code trees shared through the `gust-code` object store: a tree is put there (as the tar
//! stream [`CodeStore::export_tar`] writes) before any metadata refers to it, and a node that
//! needs a tree it does not hold fetches it into its local code store, which is only a cache.

use std::collections::HashSet;
use std::io::{Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use gust_model::Function;
use gust_store::{CodeStore, SharedCode, StoreError};

use crate::Cluster;
use crate::bridge::Bridge;

const CODE_BUCKET: &str = "gust-code";
/// Longest one tree may take to go up or come down.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest tree a node fetches (as a tar stream): twice what an upload may unpack to, for
/// the archive's headers.
const MAX_OBJECT_BYTES: usize = 2 * 256 * 1024 * 1024;

pub struct ClusterCode {
    bridge: Bridge,
    objects: ObjectStore,
    local: Arc<CodeStore>,
    /// Digests known to be in the object store.
    shared: Mutex<HashSet<String>>,
}

impl ClusterCode {
    pub(crate) fn open(cluster: &Cluster, local: Arc<CodeStore>) -> Result<Self, StoreError> {
        let jetstream = cluster.jetstream.clone();
        let config = object_store::Config {
            bucket: CODE_BUCKET.to_owned(),
            num_replicas: cluster.replicas,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let objects = cluster
            .bridge
            .wait(crate::CALL_TIMEOUT, async move {
                match jetstream.get_object_store(CODE_BUCKET).await {
                    Ok(store) => Ok(store),
                    Err(_) => match jetstream.create_object_store(config).await {
                        Ok(store) => Ok(store),
                        Err(create) => jetstream
                            .get_object_store(CODE_BUCKET)
                            .await
                            .map_err(|_| create.to_string()),
                    },
                }
            })?
            .map_err(|err| StoreError::Unavailable(format!("{CODE_BUCKET}: {err}")))?;
        Ok(Self {
            bridge: cluster.bridge.clone(),
            objects,
            local,
            shared: Mutex::new(HashSet::new()),
        })
    }

    /// Shares the code of every revision of `function` (each tree once).
    pub(crate) fn share_revisions(&self, function: &Function) -> Result<(), StoreError> {
        let digests: HashSet<&str> = function
            .revisions
            .iter()
            .map(|revision| revision.code.digest.as_str())
            .collect();
        digests
            .into_iter()
            .try_for_each(|digest| self.share(digest))
    }

    fn is_shared(&self, digest: &str) -> bool {
        self.shared.lock().expect("lock").contains(digest)
    }

    fn transfer_failed(digest: &str) -> impl FnOnce(String) -> StoreError + '_ {
        move |err| StoreError::Unavailable(format!("cannot transfer code {digest}: {err}"))
    }
}

impl SharedCode for ClusterCode {
    fn share(&self, digest: &str) -> Result<(), StoreError> {
        if self.is_shared(digest) {
            return Ok(());
        }
        let objects = self.objects.clone();
        let name = digest.to_owned();
        // Only an answer that it is absent sends it: a NATS that does not answer is an error,
        // not a reason to upload for minutes.
        let present = self
            .bridge
            .wait(crate::CALL_TIMEOUT, async move {
                match objects.info(name).await {
                    Ok(_) => Ok(true),
                    Err(err) if err.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
                    Err(err) => Err(err.to_string()),
                }
            })?
            .map_err(Self::transfer_failed(digest))?;
        if !present {
            let mut file =
                tempfile::tempfile().map_err(|e| Self::transfer_failed(digest)(e.to_string()))?;
            self.local.export_tar(digest, &mut file)?;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| Self::transfer_failed(digest)(e.to_string()))?;
            let objects = self.objects.clone();
            let name = digest.to_owned();
            self.bridge
                .wait(TRANSFER_TIMEOUT, async move {
                    let mut file = tokio::fs::File::from_std(file);
                    objects.put(name.as_str(), &mut file).await.map(drop)
                })?
                .map_err(|e| Self::transfer_failed(digest)(e.to_string()))?;
        }
        self.shared.lock().expect("lock").insert(digest.to_owned());
        Ok(())
    }

    fn fetch(&self, digest: &str) -> Result<(), StoreError> {
        if !gust_store::is_code_digest(digest) {
            return Err(StoreError::invalid_code(format!(
                "{digest:?} is not a code digest"
            )));
        }
        if self.local.tree(digest).exists() {
            return Ok(());
        }
        let file =
            tempfile::tempfile().map_err(|e| Self::transfer_failed(digest)(e.to_string()))?;
        let reader = file
            .try_clone()
            .map_err(|e| Self::transfer_failed(digest)(e.to_string()))?;
        let objects = self.objects.clone();
        let name = digest.to_owned();
        let fetched = self.bridge.wait(TRANSFER_TIMEOUT, async move {
            let object = match objects.get(name.as_str()).await {
                Ok(object) => object,
                Err(err) if err.kind() == object_store::GetErrorKind::NotFound => {
                    return Ok(false);
                }
                Err(err) => return Err(err.to_string()),
            };
            if object.info().size > MAX_OBJECT_BYTES {
                return Err(format!(
                    "it is {} bytes, more than the {MAX_OBJECT_BYTES} a node fetches",
                    object.info().size
                ));
            }
            let mut file = tokio::fs::File::from_std(file);
            // Never more than the limit, whatever the object's information said.
            let mut object = tokio::io::AsyncReadExt::take(object, MAX_OBJECT_BYTES as u64 + 1);
            tokio::io::copy(&mut object, &mut file)
                .await
                .map_err(|e| e.to_string())?;
            file.sync_all().await.map_err(|e| e.to_string())?;
            Ok(true)
        })?;
        match fetched.map_err(Self::transfer_failed(digest))? {
            false => Err(StoreError::NotFound {
                kind: "code",
                name: digest.to_owned(),
            }),
            true => {
                let mut reader = reader;
                reader
                    .seek(SeekFrom::Start(0))
                    .map_err(|e| Self::transfer_failed(digest)(e.to_string()))?;
                self.local
                    .import_tar(digest, std::io::BufReader::new(reader))?;
                self.shared.lock().expect("lock").insert(digest.to_owned());
                Ok(())
            }
        }
    }
}
