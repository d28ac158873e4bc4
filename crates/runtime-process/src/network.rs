//! A sandboxed worker's network. Every worker gets a network namespace of its own (bubblewrap's
//! `--unshare-net`): it sees only its own loopback, so it cannot reach services on the host's
//! loopback, listen on the host's ports, talk to other workers over abstract Unix sockets, or
//! read the host's sockets in `/proc/net`.
//!
//! For the `outbound` policy Gust then gives the namespace a way out through slirp4netns, a
//! user-mode network stack that makes the worker's connections as ordinary sockets of its own
//! process on the host (refusing the host's loopback: `--disable-host-loopback`). Before that
//! link exists, every non-public IPv4 range (loopback, private, shared, link-local with its
//! cloud metadata address, ...) and every address of the host itself is routed to
//! `unreachable` inside the namespace, so there is no moment at which the worker could reach
//! them. slirp4netns holds at most [`SLIRP_DESCRIPTORS`] descriptors, which bounds the host
//! sockets one worker's connections can take. The worker cannot change its routes: it has no capability in
//! its namespace. A worker specialized for the `none` policy has its link cut (slirp4netns
//! stopped, which removes the tap device and the default route) before the code is loaded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gust_model::{NON_PUBLIC_IPV4, OutboundRule};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::egress;

/// The resolver slirp4netns answers on inside the namespace (its default network 10.0.2.0/24).
pub const SANDBOX_RESOLV_CONF: &str = "nameserver 10.0.2.3\n";
/// Descriptors a worker's slirp4netns may hold: its own few and the host sockets of the
/// worker's outbound connections.
const SLIRP_DESCRIPTORS: libc::rlim_t = 512;
/// How long connecting a namespace may take before the worker is given up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// The tools that connect a worker's namespace to the outside.
#[derive(Debug, Clone)]
pub struct Uplinks {
    slirp4netns: PathBuf,
    nsenter: PathBuf,
    ip: PathBuf,
    nft: PathBuf,
    sysctl: PathBuf,
}

/// One worker's way out; the link goes when this is dropped (or cut).
#[derive(Debug)]
pub struct Uplink {
    slirp: Child,
    sandbox_pid: u32,
    tools: Uplinks,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

impl Uplinks {
    /// `None` when slirp4netns (or iproute2, nftables, procps's sysctl or nsenter) is not
    /// installed: workers then have no network besides their loopback, whatever their policy.
    pub fn detect() -> Option<Self> {
        Some(Self {
            slirp4netns: find(&["/usr/bin/slirp4netns", "/usr/local/bin/slirp4netns"])?,
            nsenter: find(&["/usr/bin/nsenter", "/bin/nsenter"])?,
            ip: find(&["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"])?,
            nft: find(&["/usr/sbin/nft", "/sbin/nft"])?,
            sysctl: find(&["/usr/sbin/sysctl", "/sbin/sysctl"])?,
        })
    }

    /// Connects the network namespace of `sandbox_pid` (the sandbox's first process): first
    /// the unreachable routes, then the link, and waits until the link is up.
    pub async fn connect(&self, sandbox_pid: u32) -> Result<Uplink, String> {
        tokio::time::timeout(CONNECT_DEADLINE, self.connect_now(sandbox_pid))
            .await
            .unwrap_or_else(|_| Err(format!("not connected within {CONNECT_DEADLINE:?}")))
    }

    async fn connect_now(&self, sandbox_pid: u32) -> Result<Uplink, String> {
        self.refuse_non_public(sandbox_pid).await?;
        // Broadcast and multicast leave by the interface a socket is bound to, whatever the
        // routes say; the filter drops them.
        self.run_inside(
            sandbox_pid,
            &self.nft,
            &["-f", "-"],
            &egress::base_ruleset(),
        )
        .await
        .map_err(|e| format!("cannot set the worker's base filter: {e}"))?;
        self.link(sandbox_pid, false).await
    }

    /// Starts slirp4netns on the namespace and waits until its interface is configured. With
    /// `host_loopback` its gateway forwards to the host's 127.0.0.1 (only for an allow-list
    /// whose filter lets through nothing but the listed ports).
    async fn link(&self, sandbox_pid: u32, host_loopback: bool) -> Result<Uplink, String> {
        let netns = format!("/proc/{sandbox_pid}/ns/net");
        let (ready, ready_child) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut command = Command::new(&self.slirp4netns);
        command
            .args(["--configure", "--mtu=65520"])
            .args((!host_loopback).then_some("--disable-host-loopback"))
            .args([
                // Its own empty mount namespace, no capabilities, and a system call filter:
                // it parses what the function sends.
                "--enable-sandbox",
                "--enable-seccomp",
                "--ready-fd=3",
            ])
            .args(own_user_namespace(sandbox_pid))
            .args(["--netns-type=path", &netns, "tap0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let ready_fd = std::os::fd::AsRawFd::as_raw_fd(&ready_child);
        // Each socket the worker opens outward is one of slirp4netns's on the host: bounded,
        // so that one function cannot use up the host's ports or descriptors.
        let sockets = libc::rlimit {
            rlim_cur: SLIRP_DESCRIPTORS,
            rlim_max: SLIRP_DESCRIPTORS,
        };
        let as_root = running_as_root();
        // SAFETY: dup2, setrlimit, prctl, unshare and mount are async-signal-safe;
        // `ready_child` stays open in the parent until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(ready_fd, 3) < 0
                    || libc::setrlimit(libc::RLIMIT_NOFILE, &sockets) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // slirp4netns's sandbox rebuilds its mount view and detaches the old root. As
                // root, in a copy of the host's mount namespace, that detach would travel back
                // through shared mounts and unmount the host's (seen: every `/run/netns/*`
                // namespace of the host unmounted). In a namespace of its own with every mount
                // private first, nothing travels back. (Without root, slirp's namespace belongs
                // to the worker's user namespace, whose mounts never propagate back.)
                if as_root
                    && (libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut slirp = command
            .spawn()
            .map_err(|e| format!("cannot run slirp4netns: {e}"))?;
        drop(ready_child);
        // It writes one byte once the interface is configured, or exits.
        let ready = tokio::task::spawn_blocking(move || {
            let mut byte = [0u8; 1];
            std::io::Read::read(&mut &ready, &mut byte).map(|n| n == 1)
        })
        .await
        .map_err(|e| e.to_string())?;
        if !matches!(ready, Ok(true)) {
            let _ = slirp.start_kill();
            let said = match slirp.stderr.take() {
                Some(mut stderr) => {
                    let mut text = String::new();
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
                    text
                }
                None => String::new(),
            };
            return Err(format!("slirp4netns did not connect: {}", said.trim()));
        }
        // Nothing reads its chatter from here on.
        slirp.stderr.take();
        Ok(Uplink {
            slirp,
            sandbox_pid,
            tools: self.clone(),
        })
    }

    /// Routes every non-public range, and every address of the host itself, to `unreachable`
    /// inside the namespace.
    async fn refuse_non_public(&self, sandbox_pid: u32) -> Result<(), String> {
        let own: Vec<String> = host_ipv4_addresses()
            .into_iter()
            .filter(|address| !address.is_loopback())
            .map(|address| format!("{address}/32"))
            .collect();
        let routes: String = NON_PUBLIC_IPV4
            .iter()
            .map(|range| range.to_string())
            .chain(own)
            .map(|range| format!("route add unreachable {range}\n"))
            .collect();
        self.run_inside(sandbox_pid, &self.ip, &["-batch", "-"], &routes)
            .await
            .map_err(|e| format!("cannot set the worker's routes: {e}"))
    }

    /// Runs `program` in the network namespace of `sandbox_pid` with `input` on its stdin.
    async fn run_inside(
        &self,
        sandbox_pid: u32,
        program: &Path,
        args: &[&str],
        input: &str,
    ) -> Result<(), String> {
        let mut command = Command::new(&self.nsenter);
        command
            .arg(format!("--target={sandbox_pid}"))
            .arg("--net")
            .args(user_namespace_entry())
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run nsenter: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .await
                .map_err(|e| format!("cannot write to {}: {e}", program.display()))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(())
    }
}

impl Uplink {
    /// Removes the link and waits until it is gone: the worker then has no route out.
    pub async fn cut(mut self) {
        let _ = self.slirp.start_kill();
        let _ = self.slirp.wait().await;
    }

    /// Narrows the link to a function's allow-list (see [`crate::egress`]): the filter first,
    /// then, if a loopback address is listed, a link that reaches the host's loopback, then
    /// the routes past the unreachable ranges. Runs before the function's code is loaded.
    pub async fn confine(self, rules: &[OutboundRule]) -> Result<Self, String> {
        let tools = self.tools.clone();
        let pid = self.sandbox_pid;
        let destinations = egress::resolve(rules, &host_ipv4_addresses()).await?;
        tools
            .run_inside(
                pid,
                &tools.nft,
                &["-f", "-"],
                &egress::ruleset(&destinations),
            )
            .await
            .map_err(|e| format!("cannot set the worker's filter: {e}"))?;
        let uplink = if egress::needs_host_loopback(&destinations) {
            self.cut().await;
            let uplink = tools.link(pid, true).await?;
            // Translated packets keep their loopback source until masqueraded; the kernel
            // routes such packets out of an interface only with route_localnet.
            tools
                .run_inside(
                    pid,
                    &tools.sysctl,
                    &["-q", "-w", "net.ipv4.conf.all.route_localnet=1"],
                    "",
                )
                .await
                .map_err(|e| format!("cannot let the worker reach the host's loopback: {e}"))?;
            uplink
        } else {
            self
        };
        let routes = egress::routes(&destinations);
        if !routes.is_empty() {
            tools
                .run_inside(pid, &tools.ip, &["-batch", "-"], &routes)
                .await
                .map_err(|e| format!("cannot route the listed addresses: {e}"))?;
        }
        Ok(uplink)
    }
}

/// The host's own IPv4 addresses, on every interface, now: a worker must not reach the host
/// by any of them, public ones included (services listening on all addresses would answer).
fn host_ipv4_addresses() -> Vec<std::net::Ipv4Addr> {
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return addresses;
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let node = unsafe { &*entry };
        // SAFETY: an AF_INET address is a sockaddr_in.
        if !node.ifa_addr.is_null()
            && i32::from(unsafe { (*node.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: checked AF_INET above.
            let address = unsafe { &*node.ifa_addr.cast::<libc::sockaddr_in>() };
            addresses.push(std::net::Ipv4Addr::from(u32::from_be(
                address.sin_addr.s_addr,
            )));
        }
        entry = node.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root reaches any namespace directly. Without root the namespace belongs to the sandbox's
/// user namespace, which Gust's user owns and must enter first.
fn own_user_namespace(sandbox_pid: u32) -> Vec<String> {
    if running_as_root() {
        Vec::new()
    } else {
        vec![format!("--userns-path=/proc/{sandbox_pid}/ns/user")]
    }
}

fn user_namespace_entry() -> &'static [&'static str] {
    if running_as_root() {
        &[]
    } else {
        &["--user", "--preserve-credentials"]
    }
}

/// Reads the sandbox's first process id from what bubblewrap writes on its `--info-fd`.
pub async fn sandbox_pid(info: std::io::PipeReader) -> Result<u32, String> {
    let read = tokio::task::spawn_blocking(move || {
        // One small JSON object; read up to its end (the sandbox may keep the pipe open).
        let mut text = Vec::new();
        let mut chunk = [0u8; 512];
        while !text.contains(&b'}') {
            match std::io::Read::read(&mut &info, &mut chunk) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(format!("reading bwrap's info: {err}")),
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    });
    let text = tokio::time::timeout(CONNECT_DEADLINE, read)
        .await
        .map_err(|_| "bwrap did not say its sandbox's pid".to_owned())?
        .map_err(|e| e.to_string())??;
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|info| info.get("child-pid")?.as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .ok_or_else(|| format!("bwrap's info has no child pid: {text:?}"))
}
