//! Listeners: HTTPS everywhere, plain HTTP only where the link itself is private.
//!
//! Every accepted connection carries a `Conn` (who, on which of our addresses, over
//! TLS or not), so the router can decide per connection.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub struct Conn {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// Accept errors (out of file descriptors, a reset before accept) are waited out,
/// never fatal: the gateway is the only way in.
pub async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr, SocketAddr) {
    loop {
        match listener.accept().await {
            // Dual-stack sockets see IPv4 peers as ::ffff:a.b.c.d; rules want a.b.c.d.
            Ok((stream, remote)) => match stream.local_addr() {
                Ok(local) => return (stream, canonical(remote), canonical(local)),
                Err(e) => tracing::debug!("connection from {remote} gone before use: {e}"),
            },
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Plain HTTP is allowed on loopback and on USB links (gadget or host mode): a cable
/// between one phone and the box, which nobody else can listen to. Everywhere else
/// (Wi-Fi, Ethernet) a request must come over TLS.
pub fn plain_http_allowed(local: IpAddr) -> bool {
    let local = local.to_canonical();
    if local.is_loopback() {
        return true;
    }
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    for ifaddr in addrs {
        let ip = ifaddr.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        });
        if ip == Some(local) {
            return is_usb_interface(&ifaddr.interface_name);
        }
    }
    false
}

/// A network interface whose device sits on a USB bus (host mode: the phone's
/// tethering) or is a USB gadget (the box as a USB network device), or a bridge whose
/// ports all are (the gadget's NCM and ECM functions share the bridge `usblink0`).
pub fn is_usb_interface(name: &str) -> bool {
    let class = Path::new("/sys/class/net").join(name);
    if let Ok(ports) = std::fs::read_dir(class.join("brif")) {
        let ports: Vec<String> = ports
            .flatten()
            .map(|p| p.file_name().to_string_lossy().into_owned())
            .collect();
        return !ports.is_empty() && ports.iter().all(|p| is_usb_device(p));
    }
    is_usb_device(name)
}

fn is_usb_device(name: &str) -> bool {
    let device = Path::new("/sys/class/net").join(name).join("device");
    match std::fs::canonicalize(device) {
        Ok(path) => {
            let path = path.to_string_lossy();
            path.contains("/usb") || path.contains("/gadget")
        }
        Err(_) => false,
    }
}
