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

    /// Every message waiting on the socket.
    pub fn drain(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
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
    fn parses_systemd_style_messages() {
        use super::Message::*;
        assert_eq!(
            super::parse("READY=1\nSTATUS=loading model\nFOO=bar"),
            vec![Ready, Status("loading model".into())]
        );
        assert_eq!(super::parse("READY=0"), vec![]);
    }
}
