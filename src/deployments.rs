//! Connects the executor and the async dispatcher to storage: what a function currently is,
//! ready to instantiate, and its retry budget.

use std::sync::Arc;

use gust_async_queue::DeliveryPolicies;
use gust_executor::{DeploymentError, DeploymentSource, InstanceSpec};
use gust_model::{Delivery, Name, Namespace};
use gust_store::{CodeStore, MetadataStore, Sealer, SharedCode, open_mounts};

pub struct StoreDeployments {
    pub store: Arc<dyn MetadataStore>,
    /// Opens the secrets functions mount.
    pub sealer: Arc<Sealer>,
    pub code: Arc<CodeStore>,
    /// A cluster's code trees, fetched into `code` on first use; `None` on a single node.
    pub shared: Option<Arc<dyn SharedCode>>,
}

impl DeploymentSource for StoreDeployments {
    fn deployment(
        &self,
        namespace: &Namespace,
        function: &Name,
    ) -> Result<Option<InstanceSpec>, DeploymentError> {
        let Some(found) = self
            .store
            .function(namespace, function)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let revision = found.current_revision();
        if let Some(build) = revision.build.as_ref().filter(|_| !revision.is_ready()) {
            let number = revision.number;
            return Err(DeploymentError::NotReady(match &build.error {
                None => format!(
                    "revision {number}, its first, is still building (see `gust fn build-logs`)"
                ),
                Some(error) => format!(
                    "revision {number}, its first, failed to build: {}",
                    error.lines().next().unwrap_or_default()
                ),
            }));
        }
        let environment = self
            .store
            .environment(&revision.environment)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("environment {} of {function} is gone", revision.environment))?;
        if let Some(shared) = &self.shared {
            shared
                .fetch(&revision.code.digest)
                .map_err(|e| format!("cannot fetch the code of {function}: {e}"))?;
        }
        let mut spec = InstanceSpec::of_revision(
            namespace,
            function,
            &found.uid,
            revision,
            environment,
            self.code.tree(&revision.code.digest),
        );
        let opened = open_mounts(
            self.store.as_ref(),
            &self.sealer,
            namespace,
            &revision.mounts,
        )
        .map_err(|e| DeploymentError::NotReady(format!("cannot mount its values: {e}")))?;
        spec.mounted = opened.files;
        spec.secret_env = opened.env;
        Ok(Some(spec))
    }
}

impl DeliveryPolicies for StoreDeployments {
    fn delivery(&self, namespace: &Namespace, function: &Name) -> Result<Option<Delivery>, String> {
        Ok(self
            .store
            .function(namespace, function)
            .map_err(|e| e.to_string())?
            .map(|f| f.current_revision().delivery))
    }
}
