//! Where Gust reaches a worker: the Unix socket it handed the worker, or a loopback TCP port
//! the worker listens on inside its own network namespace (Fission's environment servers
//! listen on 8888; every worker can, each in its namespace).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpStream, UnixStream};

use crate::connection::Connection;

#[derive(Clone)]
pub enum WorkerAddress {
    Unix(PathBuf),
    /// `127.0.0.1:port` in the network namespace `netns` (an open `/proc/<pid>/ns/net`, which
    /// keeps the namespace and names it whatever happens to the pid); `None`: the host's own
    /// (a worker without a sandbox).
    Tcp {
        netns: Option<Arc<File>>,
        port: u16,
    },
}

impl WorkerAddress {
    /// Opens an HTTP/1.1 connection to the worker; `None` when it does not accept.
    pub async fn connect(&self) -> Option<Connection> {
        match self {
            WorkerAddress::Unix(path) => {
                Connection::handshake(UnixStream::connect(path).await.ok()?).await
            }
            WorkerAddress::Tcp { netns, port } => {
                let stream = match netns {
                    Some(netns) => {
                        TcpStream::from_std(connect_in(netns.clone(), *port).await?).ok()?
                    }
                    None => TcpStream::connect(("127.0.0.1", *port)).await.ok()?,
                };
                let _ = stream.set_nodelay(true);
                Connection::handshake(stream).await
            }
        }
    }
}

/// Connects to `127.0.0.1:port` inside another network namespace: a thread of its own enters
/// the namespace (a namespace is a thread's, not the process's), connects, and ends; the
/// socket stays in the namespace it was made in. A fresh thread each time, so that no thread
/// the runtime reuses is ever left in a worker's namespace.
async fn connect_in(netns: Arc<File>, port: u16) -> Option<std::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("gust-netns-connect".into())
        .spawn(move || {
            // SAFETY: setns with an open namespace descriptor changes only this thread, which
            // ends right after.
            let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
            let stream = entered
                .then(|| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
                .flatten()
                .filter(|stream| stream.set_nonblocking(true).is_ok());
            let _ = tx.send(stream);
        })
        .ok()?;
    rx.await.ok().flatten()
}
