//! The supervisor on an ordinary host (development and tests): a child subreaper that
//! runs the services in `--services` directories until SIGTERM or SIGINT.

use std::path::PathBuf;

use llamabox_supervisor::supervisor::{Config, Supervisor};

fn usage() -> ! {
    eprintln!(
        "usage: llamabox-supervisor --services DIR [--services DIR…] --log-dir DIR --run-dir DIR \
         [--state-file FILE] [--log-max-bytes N] [--log-keep N] [--cgroup-root DIR]"
    );
    std::process::exit(2);
}

fn main() {
    let mut config = Config {
        service_dirs: Vec::new(),
        log_dir: PathBuf::new(),
        run_dir: PathBuf::new(),
        state_file: None,
        log_max_bytes: 1 << 20,
        log_keep: 3,
        cgroup_root: None,
        watchdog: None,
        environment: Default::default(),
        bus: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--services" => config.service_dirs.push(value().into()),
            "--log-dir" => config.log_dir = value().into(),
            "--run-dir" => config.run_dir = value().into(),
            "--state-file" => config.state_file = Some(value().into()),
            "--log-max-bytes" => config.log_max_bytes = value().parse().unwrap_or_else(|_| usage()),
            "--log-keep" => config.log_keep = value().parse().unwrap_or_else(|_| usage()),
            "--cgroup-root" => config.cgroup_root = Some(value().into()),
            _ => usage(),
        }
    }
    if config.service_dirs.is_empty()
        || config.log_dir.as_os_str().is_empty()
        || config.run_dir.as_os_str().is_empty()
    {
        usage();
    }
    // Orphans of our services are re-parented to us rather than to PID 1.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "llamabox-supervisor: cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    let exit = Supervisor::new(config).run();
    eprintln!("llamabox-supervisor: exiting ({exit:?})");
}
