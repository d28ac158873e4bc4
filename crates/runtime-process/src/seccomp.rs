//! The default seccomp filter every sandboxed worker runs under: the system calls a function
//! has no use for, which container runtimes refuse too (Docker's default profile), answer
//! `EPERM`. Everything else is allowed: the sandbox's namespaces, uid and mount view are the
//! main wall, this narrows the kernel surface behind it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::FromRawFd;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::RuntimeError;

/// Refused system calls, by what they would let a function do.
const REFUSED: &[(i64, &str)] = &[
    // Mounting and namespaces (user namespaces are off as well: bwrap --disable-userns).
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    // Other processes' memory and tracing.
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_kcmp, "kcmp"),
    // Kernel programs, keys and profiling.
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    // Kernel modules, rebooting and the machine's clock.
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_vhangup, "vhangup"),
];

/// The filter compiled once: raw `sock_filter` instructions, as bwrap's `--seccomp` reads them.
#[derive(Debug)]
pub struct SeccompProgram {
    bytes: Vec<u8>,
}

impl SeccompProgram {
    pub fn compile() -> Result<Self, RuntimeError> {
        let failed = |detail: String| RuntimeError::SandboxUnavailable {
            reason: format!("cannot build the seccomp filter: {detail}"),
        };
        let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = REFUSED
            .iter()
            .map(|(call, _)| (*call, Vec::new()))
            .collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| failed(e.to_string()))?;
        let program: BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| failed(e.to_string()))?;
        let mut bytes = Vec::with_capacity(program.len() * 8);
        for instruction in &program {
            bytes.extend_from_slice(&instruction.code.to_ne_bytes());
            bytes.push(instruction.jt);
            bytes.push(instruction.jf);
            bytes.extend_from_slice(&instruction.k.to_ne_bytes());
        }
        Ok(Self { bytes })
    }

    /// A fresh anonymous file holding the program, positioned at its start, for one worker's
    /// bwrap to read.
    pub fn file(&self) -> std::io::Result<File> {
        // SAFETY: memfd_create with a NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"gust-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(&self.bytes)?;
        file.rewind()?;
        Ok(file)
    }
}
