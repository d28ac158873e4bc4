//! The process runtime on its own: real sandboxed workers, no Gust server around them.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_executor::{
    FunctionLogs, Instance, InstanceSpec, InvokeError, LogQuery, RequestBody, RequestId, Runtime,
};
use gust_model::{BuiltinRuntime, Environment, Limits, Name, Namespace};
use gust_runtime_process::{Interpreters, ProcessRuntime, Sandbox};

fn spec(code_dir: &std::path::Path, file: &str, runtime: BuiltinRuntime) -> InstanceSpec {
    InstanceSpec {
        namespace: Namespace::default(),
        function: Name::parse("function", "probe").unwrap(),
        function_uid: String::new(),
        revision: 1,
        environment: Environment::builtin(runtime, 1),
        code_dir: code_dir.to_owned(),
        code_file: Some(file.to_owned()),
        entrypoint: None,
        env_vars: BTreeMap::from([("PROBE".to_owned(), "yes".to_owned())]),
        limits: Limits {
            timeout: Duration::from_secs(5),
            memory_mb: 128,
            ..Limits::default()
        },
        allow_outbound: Vec::new(),
        network: Default::default(),
        scaling: Default::default(),
        mounted: Vec::new(),
        secret_env: Vec::new(),
    }
}

fn code_dir(root: &std::path::Path, file: &str, source: &str) -> std::path::PathBuf {
    let dir = root.join("code");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), source).unwrap();
    for path in [root.to_path_buf(), dir.clone()] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// An instance of `spec`, prepared and started as the executor does.
async fn started(
    runtime: &ProcessRuntime,
    spec: &InstanceSpec,
    id: &RequestId,
) -> Box<dyn Instance> {
    runtime
        .prepare(spec)
        .await
        .unwrap()
        .start(id)
        .await
        .unwrap()
}

fn get() -> http::Request<RequestBody> {
    http::Request::get("/x")
        .body(RequestBody::full(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_start_specialize_and_serve_even_with_hundreds_of_descriptors_open() {
    // A busy Gust holds hundreds of descriptors; the sandbox's bind descriptors must not
    // clobber one another whatever numbers they happen to have.
    let ballast: Vec<std::fs::File> = (0..300)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let logs = Arc::new(FunctionLogs::new(100));
    let sandbox = Sandbox::detect()
        .await
        .expect("bubblewrap works here (scripts/setup.sh installs it)");
    let runtime = ProcessRuntime::new(
        &root.path().join("run"),
        sandbox,
        None,
        Interpreters::default(),
        logs.clone(),
    )
    .unwrap();
    let code = code_dir(
        root.path(),
        "probe.py",
        "import os\ndef main(req):\n    print('serving', req.path)\n    return os.environ['PROBE']\n",
    );
    let spec = spec(&code, "probe.py", BuiltinRuntime::Python);
    runtime.set_environments(std::slice::from_ref(&spec.environment));

    for round in 0..3 {
        let id = RequestId::new(format!("req-{round}"));
        let mut instance = started(&runtime, &spec, &id).await;
        let response = instance
            .handle(&id, get(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let response = gust_executor::body::read_response(response, "probe", 1024)
            .await
            .unwrap();
        assert_eq!(response.body().as_ref(), b"yes");
        instance.stop().await;
    }
    let lines = logs.read("default/probe", &LogQuery::default());
    assert!(
        lines
            .iter()
            .any(|l| l.text == "serving /x" && l.request_id.as_deref() == Some("req-0")),
        "{lines:?}"
    );
    runtime.shutdown().await;
    drop(ballast);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_instance_is_killed_and_reports_unhealthy() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let logs = Arc::new(FunctionLogs::new(100));
    let sandbox = Sandbox::detect().await.unwrap();
    let runtime = ProcessRuntime::new(
        &root.path().join("run"),
        sandbox,
        None,
        Interpreters::default(),
        logs,
    )
    .unwrap();
    let code = code_dir(
        root.path(),
        "slow.js",
        "module.exports = () => new Promise(() => {});\n",
    );
    let spec = spec(&code, "slow.js", BuiltinRuntime::Node);
    let id = RequestId::new("slow");
    let mut instance = started(&runtime, &spec, &id).await;
    assert!(instance.is_healthy());
    let err = instance
        .handle(&id, get(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, InvokeError::Timeout { .. }), "{err:?}");
    assert!(!instance.is_healthy());
    runtime.shutdown().await;
}
