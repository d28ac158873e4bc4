//! The store traits are synchronous (the embedded store's calls are local and short) while
//! NATS is asynchronous. The cluster's NATS client lives on a runtime of its own, and a
//! [`Bridge`] runs one of its futures to the end from any thread, async or not, so that a
//! store call made on one of `gust up`'s runtime threads can never wait on itself.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gust_store::StoreError;

/// Owns the runtime; shut down without waiting when the last handle goes (a runtime dropped
/// inside another one's task would panic).
struct Owned(Option<tokio::runtime::Runtime>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Clone)]
pub(crate) struct Bridge {
    handle: tokio::runtime::Handle,
    _runtime: Arc<Owned>,
}

impl Bridge {
    pub(crate) fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gust-nats")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            _runtime: Arc::new(Owned(Some(runtime))),
        })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `future` on the NATS runtime and waits for its result, at most `timeout`.
    pub(crate) fn wait<T: Send + 'static>(
        &self,
        timeout: Duration,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = done.send(tokio::time::timeout(timeout, future).await);
        });
        let receive = move || result.recv();
        // On a worker thread of a multi-threaded runtime, tell it this thread blocks so that
        // its other tasks move elsewhere meanwhile.
        let received = match tokio::runtime::Handle::try_current() {
            Ok(current)
                if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(receive)
            }
            _ => receive(),
        };
        match received {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(StoreError::Unavailable(format!(
                "NATS did not answer within {}s",
                timeout.as_secs()
            ))),
            Err(_) => Err(StoreError::Unavailable(
                "the NATS client has stopped".to_owned(),
            )),
        }
    }
}
