//! The sd_notify protocol: a service sends datagrams of `KEY=VALUE` lines to the socket
//! named in `$NOTIFY_SOCKET`. Each service gets its own socket, so a message's sender is
//! known without checking credentials.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ready,
    Reloading,
    Stopping,
    Status(String),
    Watchdog,
}

pub struct NotifySocket {
    pub path: PathBuf,
    pub socket: UnixDatagram,
}

impl NotifySocket {
    pub fn bind(dir: &Path, service: &str) -> std::io::Result<NotifySocket> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(service);
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        Ok(NotifySocket { path, socket })
    }

    /// Up to `datagrams` waiting datagrams' messages (the rest wait for the next wake-up:
    /// a service flooding its socket gets no more of PID 1's time than that).
    pub fn drain(&self, datagrams: usize) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..datagrams {
            let Ok(n) = self.socket.recv(&mut buf) else {
                break;
            };
            out.extend(parse(&String::from_utf8_lossy(&buf[..n])));
        }
        out
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn parse(datagram: &str) -> Vec<Message> {
    datagram
        .lines()
        .filter_map(|line| match line.split_once('=')? {
            ("READY", "1") => Some(Message::Ready),
            ("RELOADING", "1") => Some(Message::Reloading),
            ("STOPPING", "1") => Some(Message::Stopping),
            ("WATCHDOG", "1") => Some(Message::Watchdog),
            ("STATUS", s) => Some(Message::Status(s.to_string())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_drain_reads_a_bounded_number_of_datagrams() {
        let dir = std::env::temp_dir().join(format!("llamabox-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = super::NotifySocket::bind(&dir, "s").unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        // As many as the socket queues (net.unix.max_dgram_qlen, often 10).
        sender.set_nonblocking(true).unwrap();
        let mut sent = 0;
        while sent < 100 && sender.send_to(b"STATUS=spam", dir.join("s")).is_ok() {
            sent += 1;
        }
        assert!(sent >= 4, "only {sent} datagrams queued");
        assert_eq!(socket.drain(3).len(), 3);
        assert_eq!(socket.drain(100).len(), sent - 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parses_systemd_style_messages() {
        use super::Message::*;
        assert_eq!(
            super::parse("READY=1\nSTATUS=loading model\nFOO=bar"),
            vec![Ready, Status("loading model".into())]
        );
        assert_eq!(super::parse("READY=0"), vec![]);
    }
}
