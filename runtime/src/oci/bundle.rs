//! A container's bundle: the overlay root filesystem, the files written into it
//! (/etc/hosts, hostname, resolv.conf), and the pieces of `config.json` that confine it
//! (Docker's default capabilities, a seccomp deny list).

use super::*;

/// The container's /etc/hostname, /etc/hosts and /etc/resolv.conf, as Docker writes them:
/// its name (on its bridge address), and the host's nameservers. On the bridge, loopback
/// nameservers (a local stub resolver) cannot be reached from the container's namespace;
/// when only those are configured, public resolvers stand in, as Docker's do.
pub(super) fn etc_files(name: &str, ip: Option<Ipv4Addr>) -> [(&'static str, String); 3] {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (hosts, resolv) = match ip {
        Some(ip) => {
            let mut resolv: String = host_resolv
                .lines()
                .filter(|l| {
                    let mut w = l.split_whitespace();
                    !(w.next() == Some("nameserver")
                        && w.next()
                            .is_some_and(|a| a.starts_with("127.") || a == "::1"))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            if !resolv.lines().any(|l| l.starts_with("nameserver")) {
                resolv.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
            }
            (
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{name}\n"
                ),
                resolv,
            )
        }
        // Host networking: the host's own files (copies, so the container cannot
        // change the host's).
        None => (
            std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            host_resolv,
        ),
    };
    [
        ("hostname", format!("{name}\n")),
        ("hosts", hosts),
        ("resolv.conf", resolv),
    ]
}

pub(super) fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// Mounts an overlay of `upper` on `lower` at `target` (mount(2), no `mount` process).
pub(super) fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    let opts = std::ffi::CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    ))
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))?;
    let target = c_path(target)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmounts `path`, lazily if it is busy.
pub(super) fn unmount(path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the calls.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    if first.raw_os_error() != Some(libc::EBUSY) {
        return Err(first);
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A seccomp filter in the spirit of Docker's default profile, as a deny list: the
/// kernel keyring, userfaultfd, perf events, module and kexec loading, mounting and
/// namespace calls (all but the keyring and user namespaces need capabilities these
/// containers lack anyway) fail with EPERM; `clone` of a user namespace fails with
/// EPERM; `clone3`, whose flags a filter cannot read, fails with ENOSYS so libc falls
/// back to `clone`.
pub(super) fn seccomp_profile(
    bad: &impl Fn(oci_spec::OciSpecError) -> OciError,
) -> Result<oci_spec::runtime::LinuxSeccomp, OciError> {
    use oci_spec::runtime::{
        Arch, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
        LinuxSeccompOperator, LinuxSyscallBuilder,
    };
    const CLONE_NEWUSER: u64 = 0x1000_0000;
    let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let denied = LinuxSyscallBuilder::default()
        .names(names(&[
            "add_key",
            "keyctl",
            "request_key",
            "userfaultfd",
            "perf_event_open",
            "bpf",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "acct",
            "swapon",
            "swapoff",
            "reboot",
            "syslog",
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "setns",
            "unshare",
        ]))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()
        .map_err(bad)?;
    let user_namespace = LinuxSyscallBuilder::default()
        .names(names(&["clone"]))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .args(vec![
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(CLONE_NEWUSER)
                .value_two(CLONE_NEWUSER)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
                .map_err(bad)?,
        ])
        .build()
        .map_err(bad)?;
    let clone3 = LinuxSyscallBuilder::default()
        .names(names(&["clone3"]))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::ENOSYS as u32)
        .build()
        .map_err(bad)?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(if cfg!(target_arch = "x86_64") {
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        } else if cfg!(target_arch = "aarch64") {
            vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        } else {
            vec![Arch::ScmpArchNative]
        })
        .syscalls(vec![denied, user_namespace, clone3])
        .build()
        .map_err(bad)
}

/// Docker's default capability set (runc's own default keeps only three, too few for
/// images that drop to a user of their own, as nginx's does): bounding, effective and
/// permitted; none inheritable or ambient.
pub(super) fn docker_capabilities(
    bad: impl Fn(oci_spec::OciSpecError) -> OciError,
) -> Result<oci_spec::runtime::LinuxCapabilities, OciError> {
    use oci_spec::runtime::Capability::*;
    let set: oci_spec::runtime::Capabilities = [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect();
    oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(bad)
}

/// Whether `path` is a mount point (listed in /proc/self/mounts).
pub(super) fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*path)))
}
