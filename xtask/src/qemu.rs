//! Booting an image in QEMU: interactively for `cargo xtask run`, and headless with the
//! serial console captured to a file for the boot tests. Test machines run on a
//! copy-on-write overlay of the built image, so one build serves many tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::board::{AgentConsole, Board};

/// Ports of the device forwarded to loopback on the host by `cargo xtask run`:
/// (host, guest). The gateway's HTTPS and HTTP are all the box offers on the network.
pub const PORT_FORWARDS: &[(u16, u16)] = &[(8443, 443), (8080, 80)];

/// The MAC address of the box's LAN NIC (QEMU's default, written out so a capture can
/// tell the box's frames from the network's).
pub const LAN_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The guest port of the inference service's HTTP API.
pub const INFERENCE_PORT: u16 = 8080;

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
    let binary = board.arch.qemu_system();
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
    let mac: Vec<String> = LAN_MAC.iter().map(|b| format!("{b:02x}")).collect();
    cmd.args([
        "-nic",
        &format!(
            "user,id=lan,model=virtio-net-pci,mac={}{forwards}",
            mac.join(":")
        ),
    ]);
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

/// Additions to a headless machine (`Machine::start_extra`); the default adds nothing.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Appended to QEMU's arguments: USB controllers and devices, their netdevs
    /// (`usb_net_args`).
    pub args: Vec<String>,
    /// A network namespace (`/run/netns/<name>`) to run QEMU in, so the TAP devices its
    /// netdevs open are that namespace's. The user-mode NIC works the same there, but its
    /// port forwards listen on the namespace's loopback, not the host's.
    pub netns: Option<PathBuf>,
    /// A pcap file that receives every Ethernet frame on the LAN NIC, both ways
    /// (QEMU's `filter-dump`): the egress test reads what the box sent.
    pub capture: Option<PathBuf>,
}

/// QEMU arguments for an xHCI controller with QEMU's emulated USB network device on it
/// (`usb-net`: RNDIS and CDC Ethernet configurations, as an Android phone's USB
/// tethering looks to the box), backed by the netdev `netdev` without its id, e.g.
/// `tap,ifname=phone0,script=no,downscript=no` or `user,net=192.168.42.0/24`.
pub fn usb_net_args(netdev: &str) -> Vec<String> {
    [
        "-device",
        "qemu-xhci,id=usbxhci",
        "-device",
        "usb-net,bus=usbxhci.0,netdev=usbnet",
        "-netdev",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("{netdev},id=usbnet")])
    .collect()
}

/// A headless machine whose serial console goes to a log file.
pub struct Machine {
    child: Child,
    log: PathBuf,
}

impl Machine {
    /// Boots without port forwards, so several machines can run side by side.
    pub fn start(board: &Board, disk: &Path, vars: &Path, log: &Path) -> Result<Machine> {
        Machine::start_with_agent(board, disk, vars, log, None)
    }

    /// Like `start`, with the second serial port on a Unix socket at `agent`, where the
    /// test agent of test images listens for commands.
    pub fn start_with_agent(
        board: &Board,
        disk: &Path,
        vars: &Path,
        log: &Path,
        agent: Option<&Path>,
    ) -> Result<Machine> {
        Machine::start_with(board, disk, vars, log, agent, &[])
    }

    /// Like `start_with_agent`, with `forwards` (host port on 127.0.0.1, guest port):
    /// a test picks free host ports so machines can still run side by side.
    pub fn start_with(
        board: &Board,
        disk: &Path,
        vars: &Path,
        log: &Path,
        agent: Option<&Path>,
        forwards: &[(u16, u16)],
    ) -> Result<Machine> {
        Machine::start_extra(board, disk, vars, log, agent, forwards, &Extras::default())
    }

    /// Like `start_with`, with `extras`: more devices (USB), and a network namespace to
    /// run in. With the default `Extras` it is `start_with`.
    pub fn start_extra(
        board: &Board,
        disk: &Path,
        vars: &Path,
        log: &Path,
        agent: Option<&Path>,
        forwards: &[(u16, u16)],
        extras: &Extras,
    ) -> Result<Machine> {
        let mut cmd = base_args(board, disk, vars, forwards)?;
        cmd.args(&extras.args);
        if let Some(capture) = &extras.capture {
            cmd.arg("-object").arg(format!(
                "filter-dump,id=capture,netdev=lan,file={}",
                capture.display()
            ));
        }
        if let Some(netns) = &extras.netns {
            // nsenter execs QEMU in place, so the child is still QEMU itself.
            let mut wrapped = Command::new("nsenter");
            wrapped
                .arg(format!("--net={}", netns.display()))
                .arg("--")
                .arg(cmd.get_program())
                .args(cmd.get_args());
            cmd = wrapped;
        }
        let _ = std::fs::remove_file(log);
        cmd.args(["-display", "none", "-monitor", "none", "-serial"])
            .arg(format!("file:{}", log.display()));
        if let Some(agent) = agent {
            let _ = std::fs::remove_file(agent);
            match board.qemu.as_ref().map(|q| q.agent_console) {
                Some(AgentConsole::Virtio) => {
                    cmd.args(["-device", "virtio-serial-pci", "-chardev"])
                        .arg(format!(
                            "socket,id=agent,path={},server=on,wait=off",
                            agent.display()
                        ))
                        .args(["-device", "virtconsole,chardev=agent"]);
                }
                _ => {
                    cmd.arg("-serial")
                        .arg(format!("unix:{},server=on,wait=off", agent.display()));
                }
            }
        }
        cmd.stdin(Stdio::null())
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

    /// Waits for QEMU to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!(
                    "the machine did not power off within {timeout:?}\n--- console ---\n{}",
                    tail(&self.console())
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

/// The test agent on a machine's second serial port (test images only).
pub struct Agent {
    stream: std::os::unix::net::UnixStream,
    pending: Vec<u8>,
}

impl Agent {
    pub fn connect(socket: &Path) -> Result<Agent> {
        let stream = std::os::unix::net::UnixStream::connect(socket)
            .with_context(|| format!("connecting to the agent socket {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Agent {
            stream,
            pending: Vec::new(),
        })
    }

    /// Sends one command and returns its output lines. Lines before the answer (a tty
    /// echo from before the agent made the port raw) are skipped.
    pub fn command(&mut self, command: &str, timeout: Duration) -> Result<Vec<String>> {
        use std::io::{Read, Write};
        self.stream.write_all(format!("{command}\n").as_bytes())?;
        let start = Instant::now();
        let mut lines = Vec::new();
        loop {
            while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if let Some(status) = line.strip_prefix("END ") {
                    if status == "ok" {
                        return Ok(lines);
                    }
                    bail!("agent: `{command}` failed: {status}");
                }
                lines.push(line);
            }
            if start.elapsed() > timeout {
                bail!("agent: no answer to `{command}` within {timeout:?} (got {lines:?})");
            }
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => bail!("agent: connection closed"),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
