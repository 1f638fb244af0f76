//! Listeners: HTTPS everywhere, plain HTTP only where the link itself is private.
//!
//! Every accepted connection carries a `Conn` (who, on which of our addresses, over
//! TLS or not), so the router can decide per connection.

use std::net::{IpAddr, SocketAddr};
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

/// The bridge the box sets up for a phone on its USB cable (gadget mode; its NCM and
/// ECM functions are the bridge's ports; docs/usb-link.md). The firewall lets its
/// addresses be reached only through it (overlays/firewall).
pub const PHONE_LINK: &str = "usblink0";

/// Plain HTTP is allowed on loopback and on the phone link the box itself set up: a
/// cable between one phone and the box, which nobody else can listen to. Everywhere else
/// (Wi-Fi, Ethernet, a USB network adapter, a phone's own USB tethering network) a
/// request must come over TLS.
pub fn plain_http_allowed(local: IpAddr) -> bool {
    let local = local.to_canonical();
    if local.is_loopback() {
        return true;
    }
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    let interfaces = addrs.filter_map(|ifaddr| {
        let ip = ifaddr.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })?;
        Some((ifaddr.interface_name, ip))
    });
    on_phone_link(local, interfaces)
}

/// Whether `local` is one of the phone link's own addresses, by interface name: the link
/// is the one the box made, not any interface that happens to sit on a USB bus.
fn on_phone_link(local: IpAddr, interfaces: impl IntoIterator<Item = (String, IpAddr)>) -> bool {
    interfaces
        .into_iter()
        .any(|(name, ip)| name == PHONE_LINK && ip == local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_the_phone_link_the_box_set_up() {
        let interfaces = || {
            [
                // A USB Wi-Fi adapter and a USB Ethernet adapter: on a USB bus, but LANs.
                ("wlan0".to_string(), "192.168.1.20".parse().unwrap()),
                ("enx00e04c680001".to_string(), "10.1.0.7".parse().unwrap()),
                // A phone's own USB tethering network: the phone's DHCP, the phone's LAN.
                ("usb0".to_string(), "192.168.42.10".parse().unwrap()),
                (PHONE_LINK.to_string(), "10.55.0.1".parse().unwrap()),
                (PHONE_LINK.to_string(), "169.254.55.1".parse().unwrap()),
            ]
        };
        for lan in ["192.168.1.20", "10.1.0.7", "192.168.42.10", "10.55.0.2"] {
            assert!(!on_phone_link(lan.parse().unwrap(), interfaces()), "{lan}");
        }
        for link in ["10.55.0.1", "169.254.55.1"] {
            assert!(on_phone_link(link.parse().unwrap(), interfaces()), "{link}");
        }
        assert!(plain_http_allowed("127.0.0.1".parse().unwrap()));
        assert!(plain_http_allowed("::1".parse().unwrap()));
    }
}
