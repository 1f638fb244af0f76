//! Listeners: HTTPS everywhere, plain HTTP only where the link itself is private.
//!
//! Every accepted connection carries a `Conn` (who, on which of our addresses, over
//! TLS or not), so the router can decide per connection.

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

#[derive(Clone, Debug)]
pub struct Conn {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// Accept errors (out of file descriptors, a reset before accept) are waited out,
/// never fatal: the gateway is the only way in.
async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr, SocketAddr) {
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

pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = Conn;

    async fn accept(&mut self) -> (TcpStream, Conn) {
        let (stream, remote, local) = accept_tcp(&self.0).await;
        let _ = stream.set_nodelay(true);
        (
            stream,
            Conn {
                remote,
                local,
                tls: false,
            },
        )
    }

    fn local_addr(&self) -> io::Result<Conn> {
        let local = self.0.local_addr()?;
        Ok(Conn {
            remote: local,
            local,
            tls: false,
        })
    }
}

/// TLS handshakes run in their own tasks, so a client that stalls mid-handshake
/// holds up nobody else.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, Conn)>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, remote, local) = accept_tcp(&listener).await;
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let conn = Conn {
                                remote,
                                local,
                                tls: true,
                            };
                            let _ = tx.send((tls, conn)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {remote}: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {remote} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Conn;

    async fn accept(&mut self) -> (Self::Io, Conn) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task lives as long as the process; if it is gone, so are we.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Conn> {
        Ok(Conn {
            remote: self.local,
            local: self.local,
            tls: true,
        })
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
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
