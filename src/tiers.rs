//! Routes each environment to the runtime tier that runs it.

use std::sync::Arc;

use async_trait::async_trait;
use gust_executor::{InstanceSpec, InvokeError, PreparedRevision, Runtime};
use gust_model::{Environment, Limits, Tier};

pub struct Tiers {
    pub process: Arc<dyn Runtime>,
    pub wasm: Arc<dyn Runtime>,
}

impl Tiers {
    fn of(&self, environment: &Environment) -> &dyn Runtime {
        match environment.tier() {
            Tier::Process => self.process.as_ref(),
            Tier::Wasm => self.wasm.as_ref(),
        }
    }
}

#[async_trait]
impl Runtime for Tiers {
    async fn prepare(&self, spec: &InstanceSpec) -> Result<Arc<dyn PreparedRevision>, InvokeError> {
        self.of(&spec.environment).prepare(spec).await
    }

    fn prepare_blocking(
        &self,
        spec: &InstanceSpec,
    ) -> Option<Result<Arc<dyn PreparedRevision>, InvokeError>> {
        self.of(&spec.environment).prepare_blocking(spec)
    }

    fn validate_environment(&self, environment: &Environment) -> Result<(), String> {
        self.of(environment).validate_environment(environment)
    }

    fn ready_workers(&self, environment: &Environment) -> Option<usize> {
        self.of(environment).ready_workers(environment)
    }

    fn start_failure(&self, environment: &Environment) -> Option<String> {
        self.of(environment).start_failure(environment)
    }

    fn validate_upload(
        &self,
        environment: &Environment,
        file_name: &str,
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<(), String> {
        self.of(environment)
            .validate_upload(environment, file_name, bytes, limits)
    }

    fn set_environments(&self, environments: &[Environment]) {
        self.process.set_environments(environments);
        self.wasm.set_environments(environments);
    }

    async fn shutdown(&self) {
        self.process.shutdown().await;
        self.wasm.shutdown().await;
    }
}
