//! Booting an image in QEMU: interactively for `cargo xtask run`, and headless with the
//! serial console captured to a file for the boot tests. Test machines run on a
//! copy-on-write overlay of the built image, so one build serves many tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::board::Board;

/// Ports of the device forwarded to loopback on the host by `cargo xtask run`:
/// (host, guest).
pub const PORT_FORWARDS: &[(u16, u16)] = &[(8443, 443), (8080, 80), (2222, 22)];

/// Creates a qcow2 overlay on top of `base` (raw), so the base image stays untouched.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let _ = std::fs::remove_file(overlay);
    llamabox_image::tool::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base.canonicalize()?)
            .arg(overlay),
    )?;
    Ok(())
}

/// A fresh copy of the firmware's variable store: boot entries and counters live there.
pub fn fresh_vars(board: &Board, dest: &Path) -> Result<()> {
    let qemu = board.qemu.as_ref().context("board has no [qemu] section")?;
    std::fs::copy(&qemu.firmware_vars, dest)
        .with_context(|| format!("copying {}", qemu.firmware_vars.display()))?;
    Ok(())
}

fn base_args(board: &Board, disk: &Path, vars: &Path, forwards: &[(u16, u16)]) -> Result<Command> {
    let qemu = board.qemu.as_ref().with_context(|| {
        format!(
            "board {} cannot run in QEMU (no [qemu] section)",
            board.name
        )
    })?;
    let binary = match board.arch {
        crate::config::Arch::X86_64 => "qemu-system-x86_64",
        crate::config::Arch::Aarch64 => "qemu-system-aarch64",
    };
    let format = if disk.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let mut cmd = Command::new(binary);
    cmd.args([
        "-machine",
        &qemu.machine,
        "-m",
        &qemu.memory_mib.to_string(),
        "-smp",
        "1",
    ]);
    if let Some(cpu) = &qemu.cpu {
        cmd.args(["-cpu", cpu]);
    }
    cmd.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        qemu.firmware_code.display()
    ));
    cmd.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ));
    cmd.arg("-drive")
        .arg(format!("if=virtio,format={format},file={}", disk.display()));
    if let Some(wd) = &qemu.watchdog {
        cmd.args(["-device", wd]);
    }
    let forwards: String = forwards
        .iter()
        .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
        .collect();
    cmd.args(["-nic", &format!("user,model=virtio-net-pci{forwards}")]);
    Ok(cmd)
}

/// Boots with the serial console on this terminal (ctrl-a x quits).
pub fn run_interactive(board: &Board, disk: &Path, vars: &Path) -> Result<()> {
    let mut cmd = base_args(board, disk, vars, PORT_FORWARDS)?;
    cmd.arg("-nographic");
    let status = cmd.status().context("cannot start QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}

/// A headless machine whose serial console goes to a log file.
pub struct Machine {
    child: Child,
    log: PathBuf,
}

impl Machine {
    /// Boots without port forwards, so several machines can run side by side.
    pub fn start(board: &Board, disk: &Path, vars: &Path, log: &Path) -> Result<Machine> {
        let mut cmd = base_args(board, disk, vars, &[])?;
        let _ = std::fs::remove_file(log);
        cmd.args(["-display", "none", "-monitor", "none", "-serial"])
            .arg(format!("file:{}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().context("cannot start QEMU")?;
        Ok(Machine {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Everything the serial console printed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows `needle` (returns the console), or fails after
    /// `timeout` with the console's tail in the error.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[needle], timeout).map(|(_, c)| c)
    }

    /// Waits for the first of `needles` to appear; returns its index and the console.
    pub fn wait_for_any(&mut self, needles: &[&str], timeout: Duration) -> Result<(usize, String)> {
        let start = Instant::now();
        loop {
            let console = self.console();
            if let Some(i) = needles.iter().position(|n| console.contains(n)) {
                return Ok((i, console));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("QEMU exited ({status}) before the console showed {needles:?}\n--- console ---\n{}", tail(&console));
            }
            if start.elapsed() > timeout {
                bail!(
                    "the console did not show {needles:?} within {timeout:?}\n--- console ---\n{}",
                    tail(&console)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pulls the plug.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
