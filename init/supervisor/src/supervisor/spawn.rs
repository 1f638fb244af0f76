//! Starting a service's process: notify socket ownership, the cgroup, fork and exec.
//! All of the supervisor's `unsafe` is here: between fork and exec only
//! async-signal-safe calls are made.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use crate::service::Service;

/// A service that runs as another user must be able to send to its notify socket:
/// the socket (mode 0755 under PID 1's umask) becomes the service's. An unknown user
/// is left to `spawn`, which reports it.
pub(super) fn hand_over(socket: &std::path::Path, def: &Service) -> std::io::Result<()> {
    let Some(user) = def.user.as_deref() else {
        return Ok(());
    };
    let Some(u) = nix::unistd::User::from_name(user).ok().flatten() else {
        return Ok(());
    };
    let gid = def
        .group
        .as_deref()
        .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
        .map_or(u.gid, |g| g.gid);
    std::os::unix::fs::chown(socket, Some(u.uid.as_raw()), Some(gid.as_raw()))
}

/// Starts a service's process in its own session (so its whole process group can be
/// signalled), with stdout and stderr on one pipe for its log.
pub(super) fn spawn(
    def: &Service,
    environment: &BTreeMap<String, String>,
    notify: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
) -> Result<(Pid, OwnedFd), String> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    nix::fcntl::fcntl(
        read_end.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| format!("pipe: {e}"))?;
    let stderr = write_end.try_clone().map_err(|e| format!("pipe: {e}"))?;

    let mut cmd = Command::new(&def.command);
    cmd.args(&def.args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(environment)
        .envs(&def.environment)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(stderr));
    if let Some(path) = &notify {
        cmd.env("NOTIFY_SOCKET", path);
        if let Some(watchdog) = def.watchdog {
            cmd.env("WATCHDOG_USEC", watchdog.as_micros().to_string());
        }
    }
    if let Some(dir) = &def.working_directory {
        cmd.current_dir(dir);
    }
    // The user and group change last in the child, after the priority and the limits
    // (std's `Command::uid` would change them before `pre_exec`, when raising a
    // priority or a limit is no longer allowed).
    let mut identity: Option<(libc::uid_t, libc::gid_t)> = None;
    if let Some(user) = &def.user {
        let u = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .ok_or_else(|| format!("unknown user `{user}`"))?;
        identity = Some((u.uid.as_raw(), u.gid.as_raw()));
    }
    let mut group_id: Option<libc::gid_t> = identity.map(|(_, gid)| gid);
    if let Some(group) = &def.group {
        let g = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| format!("unknown group `{group}`"))?;
        group_id = Some(g.gid.as_raw());
    }
    let cgroup_procs = cgroup_root.and_then(|root| prepare_cgroup(&root, def));
    let limits = def.limits.clone();
    let nice = def.nice;
    // SAFETY: between fork and exec only async-signal-safe calls (plain system calls)
    // are made: sigprocmask, signal, setsid, setrlimit, setpriority, open and write
    // (into a path prepared before the fork), setgroups, setgid, setuid.
    unsafe {
        cmd.pre_exec(move || {
            // The supervisor blocks the signals it reads through its signalfd; a service
            // must start with a clean mask and default dispositions.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (resource, value) in [
                (libc::RLIMIT_NOFILE, limits.open_files),
                (libc::RLIMIT_NPROC, limits.processes),
                (libc::RLIMIT_CORE, limits.core_size),
            ] {
                if let Some(v) = value {
                    let lim = libc::rlimit {
                        rlim_cur: v as _,
                        rlim_max: v as _,
                    };
                    if libc::setrlimit(resource, &lim) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            // Before the user changes: raising a priority needs the supervisor's root.
            if nice != 0 && libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(path) = &cgroup_procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            // Root's supplementary groups go with root (a user always brings a group).
            if group_id.is_some() && libc::getuid() == 0 && libc::setgroups(0, std::ptr::null()) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(gid) = group_id {
                if libc::setgid(gid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some((uid, _)) = identity {
                if libc::setuid(uid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", def.command))?;
    let pid = Pid::from_raw(child.id() as i32);
    // The supervisor reaps with waitpid(-1); the Child handle must not wait itself.
    std::mem::forget(child);
    Ok((pid, read_end))
}

/// Creates `<root>/<service>` with its memory and CPU limits; returns the path of its
/// `cgroup.procs` for the child to join. Best effort: without cgroup v2, limits are skipped.
fn prepare_cgroup(root: &std::path::Path, def: &Service) -> Option<std::ffi::CString> {
    let dir = root.join(&def.name);
    std::fs::create_dir_all(&dir).ok()?;
    if let Some(mib) = def.limits.memory_max_mib {
        let _ = std::fs::write(dir.join("memory.max"), format!("{}\n", mib << 20));
    }
    // Between cgroups the scheduler shares by weight, not by nice: the same priority.
    if def.nice != 0 {
        let _ = std::fs::write(dir.join("cpu.weight.nice"), format!("{}\n", def.nice));
    }
    if let Some(percent) = def.limits.cpu_max_percent {
        let _ = std::fs::write(dir.join("cpu.max"), format!("{} 100000\n", percent * 1000));
    }
    std::ffi::CString::new(dir.join("cgroup.procs").to_string_lossy().into_owned()).ok()
}
