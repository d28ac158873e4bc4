use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum WasmError {
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error("not a valid WebAssembly component: {reason}")]
    Invalid { reason: String },
    #[error("the component is not a wasi:http/proxy component this host can run: {reason}")]
    NotProxy { reason: String },
    #[error("I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WasmError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> WasmError {
        let path = path.into();
        move |source| WasmError::Io { path, source }
    }

    pub(crate) fn linker(err: wasmtime::Error) -> WasmError {
        WasmError::Engine(format!("{err:#}"))
    }
}
