use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gust_model::{
    Environment, Limits, MountedValue, Name, Namespace, NetworkPolicy, OutboundRule, Revision,
    RevisionNumber, Scaling, SecretValue,
};

use crate::{InvokeError, RequestBody, RequestId, ResponseBody, StartPhases};

/// Everything a runtime needs to turn a generic worker into an instance of one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    pub namespace: Namespace,
    pub function: Name,
    /// The function's uid (empty for functions stored before uids existed).
    pub function_uid: String,
    pub revision: RevisionNumber,
    pub environment: Environment,
    /// The revision's unpacked code tree on the host (read-only; never modified).
    pub code_dir: PathBuf,
    /// For single-file code, the file's name inside `code_dir`.
    pub code_file: Option<String>,
    pub entrypoint: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    pub limits: Limits,
    /// Origins the function may call (the wasm tier enforces them).
    pub allow_outbound: Vec<OutboundRule>,
    /// What a process function's workers may reach (the process tier enforces it).
    pub network: NetworkPolicy,
    pub scaling: Scaling,
    /// The keys of the secrets and configs it mounts, opened (never shown by `Debug`).
    pub mounted: Vec<MountedValue>,
    /// Environment variables from its secrets (`--secret-env`), kept apart from `env_vars`
    /// so that they are never shown.
    pub secret_env: Vec<(String, SecretValue)>,
}

impl InstanceSpec {
    /// What instances of `revision` of a function need; `code_dir` is where the code store
    /// keeps the revision's code.
    pub fn of_revision(
        namespace: &Namespace,
        function: &Name,
        function_uid: &str,
        revision: &Revision,
        environment: Environment,
        code_dir: PathBuf,
    ) -> Self {
        Self {
            namespace: namespace.clone(),
            function: function.clone(),
            function_uid: function_uid.to_owned(),
            revision: revision.number,
            environment,
            code_dir,
            code_file: revision.code.file.clone(),
            entrypoint: revision.entrypoint.clone(),
            env_vars: revision.env_vars.clone(),
            limits: revision.limits,
            allow_outbound: revision.allow_outbound.clone(),
            network: revision.network.unwrap_or_default(),
            scaling: revision.scaling,
            // Opened by whoever loads the deployment, which holds the store and the key.
            mounted: Vec::new(),
            secret_env: Vec::new(),
        }
    }

    /// The function's environment variables with those of its secrets (`--secret-env`); a
    /// variable the function sets itself wins.
    pub fn env_with_secrets(&self) -> BTreeMap<String, String> {
        let mut all: BTreeMap<String, String> = self
            .secret_env
            .iter()
            .map(|(key, value)| (key.clone(), String::from_utf8_lossy(&value.0).into_owned()))
            .collect();
        all.extend(self.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }

    /// Writes each mounted key at `<dir>/<secrets|configs>/<namespace>/<name>/<key>`, what the
    /// function sees at `/secrets/...` and `/configs/...`: files 0644 in directories 0755 (the
    /// caller's `dir` keeps others out), each created anew, never through a link.
    pub fn place_mounted_values(&self, dir: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        for value in &self.mounted {
            let set_dir = dir
                .join(value.kind.mount_root())
                .join(self.namespace.as_str())
                .join(value.name.as_str());
            std::fs::create_dir_all(&set_dir)?;
            for level in [set_dir.parent(), Some(set_dir.as_path())]
                .into_iter()
                .flatten()
            {
                std::fs::set_permissions(level, std::fs::Permissions::from_mode(0o755))?;
            }
            // Keys are plain file names (checked when stored): never a path.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(set_dir.join(&value.key))?;
            std::io::Write::write_all(&mut file, &value.value.0)?;
        }
        Ok(())
    }
}

/// A runtime tier. Implementations keep their own pre-warmed pools.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Builds what starting instances of one revision needs (the `InstancePre` shape: the
    /// wasm tier's compiled, pre-instantiated component; the process tier's worker command and
    /// the revision's shared workers). Called once per revision, on deploy in the background
    /// or on its first request; the executor keeps the result while the revision serves, and
    /// dropping it forgets what was loaded (instances already started keep their own
    /// handles). May read and compile; never blocks a runtime thread.
    async fn prepare(&self, spec: &InstanceSpec) -> Result<Arc<dyn PreparedRevision>, InvokeError>;

    /// [`Runtime::prepare`] on the calling thread, which may block: for a tier whose
    /// preparation is blocking work (loading a compiled component), so that the executor
    /// does it on the thread that has just read the deployment instead of handing it to
    /// another. `None` where the tier prepares asynchronously.
    fn prepare_blocking(
        &self,
        _spec: &InstanceSpec,
    ) -> Option<Result<Arc<dyn PreparedRevision>, InvokeError>> {
        None
    }

    /// Checks code before it is stored, so that a function that cannot run is refused at
    /// deploy (compiling it ahead of time where the tier compiles). `file_name` and `bytes`
    /// are the upload. Called on a blocking thread; may take seconds. The default accepts.
    fn validate_upload(
        &self,
        _environment: &Environment,
        _file_name: &str,
        _bytes: &[u8],
        _limits: &Limits,
    ) -> Result<(), String> {
        Ok(())
    }

    /// Checks a new environment against this host before it is stored (a custom environment's
    /// mounts must exist and stay clear of Gust's own directories). The default accepts.
    fn validate_environment(&self, _environment: &Environment) -> Result<(), String> {
        Ok(())
    }

    /// Workers ready now in an environment's pool; `None` where the tier keeps no pool.
    fn ready_workers(&self, _environment: &Environment) -> Option<usize> {
        None
    }

    /// Why an environment's workers fail to start, while the last attempt failed (the error
    /// and the worker's output); `None` when they start, or the tier keeps no pool.
    fn start_failure(&self, _environment: &Environment) -> Option<String> {
        None
    }

    /// The set of environments changed (created, deleted, or at startup): start pools for new
    /// ones, stop pools of removed ones. Returns without waiting for workers to start.
    fn set_environments(&self, environments: &[Environment]);

    /// Stops every pooled worker; called once at shutdown.
    async fn shutdown(&self);
}

/// A revision ready to start instances: see [`Runtime::prepare`].
#[async_trait]
pub trait PreparedRevision: Send + Sync {
    /// Returns a ready instance of the revision: from the tier's pool when one is warm, else a
    /// freshly started one. May take as long as an interpreter start; never blocks a thread.
    /// `first_request` is the request that needs it: what loading the code prints is its.
    async fn start(&self, first_request: &RequestId) -> Result<Box<dyn Instance>, InvokeError>;
}

/// One specialized instance. The executor hands it one request at a time.
#[async_trait]
pub trait Instance: Send {
    /// Serves one request: resolves with the response's status and headers, within
    /// `timeout`; its body streams after, and the executor holds the instance until the body's
    /// end (it enforces the rest of the timeout there). On timeout the instance must be
    /// unusable afterwards (killed).
    async fn handle(
        &mut self,
        id: &RequestId,
        request: http::Request<RequestBody>,
        timeout: Duration,
    ) -> Result<http::Response<ResponseBody>, InvokeError>;

    /// False once the instance died or was killed; the executor then discards it.
    fn is_healthy(&mut self) -> bool;

    /// Where this instance's start went, as far as the runtime measured it (the executor
    /// adds the revision's preparation); `None` when nothing was started for it (a
    /// connection to a worker already serving others).
    fn start_phases(&self) -> Option<StartPhases> {
        Some(StartPhases::default())
    }

    /// CPU time the instance has used so far, where the runtime can measure it; the executor
    /// bills the difference across a request.
    fn cpu_time(&mut self) -> Option<Duration> {
        None
    }

    /// Stops the instance; also what dropping it does, without waiting.
    async fn stop(self: Box<Self>);
}

/// The cores this process may use, asked once: the standard library reads the cgroup's CPU
/// quota files each time, and the tiers size things by it whenever a revision is prepared.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}
