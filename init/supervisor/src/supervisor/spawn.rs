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
    if let Some((uid, gid)) = identity {
        prepare_directories(def, uid, group_id.unwrap_or(gid))?;
    }
    let cgroup_procs = cgroup_root.and_then(|root| prepare_cgroup(&root, def));
    // Capabilities kept across the change of user, as a capset(2) bit mask (two words).
    let kept: u64 = def.capabilities.iter().fold(0, |mask, c| mask | 1 << c);
    let limits = def.limits.clone();
    let nice = def.nice;
    // SAFETY: between fork and exec only async-signal-safe calls (plain system calls)
    // are made: sigprocmask, signal, setsid, setrlimit, setpriority, open and write
    // (into a path prepared before the fork), setgroups, setgid, prctl, setuid, capset.
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
                // Capabilities survive setuid only when asked to; then they are set as
                // the kept ones alone and raised into the ambient set, which exec hands
                // on to a program without file capabilities (ours have none).
                if kept != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setuid(uid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if kept != 0 {
                    let header = CapHeader {
                        version: LINUX_CAPABILITY_VERSION_3,
                        pid: 0,
                    };
                    let word = |w: u32| CapData {
                        effective: w,
                        permitted: w,
                        inheritable: w,
                    };
                    let data = [word(kept as u32), word((kept >> 32) as u32)];
                    if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    for c in (0..64).filter(|c| kept >> c & 1 == 1) {
                        let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
                        if libc::prctl(libc::PR_CAP_AMBIENT, raise, c as libc::c_ulong, 0, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                // Nothing it runs (a set-user-ID program) can give it more than this.
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
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

/// Makes each of `def.directories` (0700) and gives it to the service's user. A
/// directory another user owns (an older image ran the service as root) is handed over
/// with its contents, once: later starts leave a directory the user owns alone, so
/// nothing the service links into it is ever chowned by root. Links are changed
/// themselves, never followed.
fn prepare_directories(def: &Service, uid: libc::uid_t, gid: libc::gid_t) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for dir in &def.directories {
        let fail = |e: std::io::Error| format!("cannot prepare {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(fail)?;
        let meta = std::fs::symlink_metadata(dir).map_err(fail)?;
        if !meta.is_dir() {
            return Err(format!("cannot prepare {}: not a directory", dir.display()));
        }
        if meta.uid() != uid {
            chown_tree(dir, uid, gid).map_err(fail)?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

/// `lchown -R`: the tree under `path` (not following links) to `uid`:`gid`.
fn chown_tree(path: &std::path::Path, uid: libc::uid_t, gid: libc::gid_t) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// capset(2)'s header and data (linux/capability.h), version 3: two 32-bit words.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
