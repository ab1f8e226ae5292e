//! A container's bundle: the overlay root filesystem, the files written into it
//! (/etc/hosts, hostname, resolv.conf), and the pieces of `config.json` that confine it
//! (its capabilities and Docker's seccomp profile for them).

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

/// Calls Docker's default seccomp profile allows to every container, for any argument.
/// Everything not named here or in [`seccomp_profile`]'s argument rules fails with EPERM.
#[rustfmt::skip]
const ALLOWED_SYSCALLS: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod",
    "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr",
    "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd",
    "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep",
    "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2",
    "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn",
    "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill",
    "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4",
    "waitid", "waitpid", "write", "writev",
    // Kernel 4.8 and later (where seccomp checks run after ptrace, so these cannot be
    // used to escape the filter): every kernel runc supports.
    "process_vm_readv", "process_vm_writev", "ptrace",
];

/// Docker's default seccomp profile for a container holding the capabilities `caps`
/// (canonical names): an allow list, default EPERM. Beyond the plain list,
/// `socket` is allowed for every family but AF_VSOCK; `personality` only for the
/// personas programs ask for (Linux, 32-bit Linux, with or without UNAME26, and the
/// query); `clone` only without the namespace flags (a new user, mount, pid, net, uts,
/// ipc or cgroup namespace needs CAP_SYS_ADMIN in Docker); `clone3`, whose flags a filter
/// cannot read, fails with ENOSYS so libc falls back to `clone`. The calls Docker allows
/// only with a capability ([`CAPABILITY_SYSCALLS`]: `chroot` with SYS_CHROOT, `mount`,
/// `unshare` and `setns` with SYS_ADMIN, `reboot`, module loading, `kcmp`, `iopl`,
/// `settimeofday`...) are allowed when the container holds it, and fail with EPERM
/// otherwise; keyctl's kin are never allowed.
pub(super) fn seccomp_profile(
    bad: &impl Fn(oci_spec::OciSpecError) -> OciError,
    caps: &[&str],
) -> Result<oci_spec::runtime::LinuxSeccomp, OciError> {
    use oci_spec::runtime::{
        Arch, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
        LinuxSeccompOperator, LinuxSyscallBuilder,
    };
    // CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
    // CLONE_NEWPID | CLONE_NEWNET: Docker's mask.
    const CLONE_NAMESPACES: u64 = 0x7E02_0000;
    const AF_VSOCK: u64 = 40;
    const PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
    let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let allow = |list: &[&str]| {
        LinuxSyscallBuilder::default()
            .names(names(list))
            .action(LinuxSeccompAction::ScmpActAllow)
    };
    let arg = |index: usize, value: u64, op: LinuxSeccompOperator| {
        LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op)
            .build()
            .map_err(bad)
    };
    let mut arch_calls: Vec<&str> = Vec::new();
    if cfg!(target_arch = "x86_64") {
        arch_calls.extend(["arch_prctl", "modify_ldt"]);
    } else if cfg!(target_arch = "aarch64") {
        arch_calls.extend([
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]);
    }
    let mut rules = vec![
        allow(ALLOWED_SYSCALLS).build().map_err(bad)?,
        allow(&["socket"])
            .args(vec![arg(0, AF_VSOCK, LinuxSeccompOperator::ScmpCmpNe)?])
            .build()
            .map_err(bad)?,
    ];
    let gated: Vec<&str> = CAPABILITY_SYSCALLS
        .iter()
        .filter(|(cap, _)| caps.contains(cap))
        .flat_map(|(_, calls)| calls.iter().copied())
        // Once each: libseccomp takes one rule per call and action.
        .filter(|c| !ALLOWED_SYSCALLS.contains(c))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !gated.is_empty() {
        rules.push(allow(&gated).build().map_err(bad)?);
    }
    // Without CAP_SYS_ADMIN, `clone` without namespace flags and `clone3` failing with
    // ENOSYS (with it, both are allowed above).
    if !caps.contains(&"SYS_ADMIN") {
        rules.extend([
            allow(&["clone"])
                .args(vec![
                    LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(CLONE_NAMESPACES)
                        .value_two(0u64)
                        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                        .build()
                        .map_err(bad)?,
                ])
                .build()
                .map_err(bad)?,
            LinuxSyscallBuilder::default()
                .names(names(&["clone3"]))
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()
                .map_err(bad)?,
        ]);
    }
    if !arch_calls.is_empty() {
        rules.push(allow(&arch_calls).build().map_err(bad)?);
    }
    for persona in PERSONAS {
        rules.push(
            allow(&["personality"])
                .args(vec![arg(0, persona, LinuxSeccompOperator::ScmpCmpEq)?])
                .build()
                .map_err(bad)?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(if cfg!(target_arch = "x86_64") {
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        } else if cfg!(target_arch = "aarch64") {
            vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        } else {
            vec![Arch::ScmpArchNative]
        })
        .syscalls(rules)
        .build()
        .map_err(bad)
}

/// The capabilities of a container's process: `names` (skiff_spec's: Docker's defaults
/// without NET_RAW, as asked to add and drop) as the bounding set; effective and
/// permitted too for root, none for another user (as Docker since 20.10: what execve(2)
/// would leave a non-root process; a file capability can still raise one within the
/// bounding set); never inheritable or ambient.
pub(super) fn capabilities(
    names: &[&str],
    uid: u32,
    bad: impl Fn(oci_spec::OciSpecError) -> OciError,
) -> Result<oci_spec::runtime::LinuxCapabilities, OciError> {
    let set: oci_spec::runtime::Capabilities = names
        .iter()
        .map(|n| {
            n.parse::<oci_spec::runtime::Capability>()
                .map_err(|_| OciError::Config(format!("unknown capability {n}")))
        })
        .collect::<Result<_, _>>()?;
    let held = if uid == 0 {
        set.clone()
    } else {
        oci_spec::runtime::Capabilities::new()
    };
    oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(set)
        .effective(held.clone())
        .permitted(held)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(bad)
}

/// The calls Docker's seccomp profile allows only to holders of a capability, by
/// capability (its `includes.caps` rules). CAP_SYS_ADMIN also lifts the `clone` flag
/// filter and lets `clone3` through.
const CAPABILITY_SYSCALLS: &[(&str, &[&str])] = &[
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("SYS_BOOT", &["reboot"]),
    ("SYS_CHROOT", &["chroot"]),
    (
        "SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("SYS_PACCT", &["acct"]),
    (
        "SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    (
        "SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("SYSLOG", &["syslog"]),
    ("BPF", &["bpf"]),
    ("PERFMON", &["perf_event_open"]),
];

/// Whether `path` is a mount point (listed in /proc/self/mounts).
pub(super) fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*path)))
}
