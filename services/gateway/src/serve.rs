//! The accept loops: who gets a connection, and how long an idle one may stay.
//!
//! A hostile neighbour can open connections faster than anything else. Every peer address
//! gets at most `PER_ADDRESS` connections, peers on the LAN together at most `LAN_TOTAL`,
//! and private links (loopback, the USB link) have their own `PRIVATE_TOTAL`, so a flood
//! from the LAN never takes the phone's cable or the box's own services off the gateway.
//! A connection over its cap is closed at once (before any TLS work). Connections that do
//! not send a request's headers within the header timeout — new or idle between requests —
//! are closed by hyper; requests in progress (a long generation) are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::net::{accept_tcp, plain_http_allowed, Conn};

/// Connections one peer address may hold.
pub const PER_ADDRESS: usize = 64;
/// Connections from LAN peers together.
pub const LAN_TOTAL: usize = 1024;
/// Connections over loopback and the USB link together.
pub const PRIVATE_TOTAL: usize = 256;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    per_address: HashMap<IpAddr, usize>,
    lan: usize,
    private: usize,
}

/// Open connections, by peer and by kind of link.
#[derive(Clone, Default)]
pub struct Limits(Arc<Mutex<Counts>>);

/// Holds one admitted connection's place until it is dropped.
pub struct Admitted {
    limits: Limits,
    peer: IpAddr,
    private: bool,
}

impl Limits {
    /// A place for a connection from `peer` to our address `local`, if there is one.
    pub fn admit(&self, peer: IpAddr, local: IpAddr) -> Option<Admitted> {
        let private = plain_http_allowed(local);
        let peer = peer_key(peer);
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let from_peer = c.per_address.get(&peer).copied().unwrap_or(0);
        let total = if private { c.private } else { c.lan };
        let cap = if private { PRIVATE_TOTAL } else { LAN_TOTAL };
        if from_peer >= PER_ADDRESS || total >= cap {
            return None;
        }
        *c.per_address.entry(peer).or_default() += 1;
        if private {
            c.private += 1;
        } else {
            c.lan += 1;
        }
        Some(Admitted {
            limits: self.clone(),
            peer,
            private,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.limits.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.per_address.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&self.peer);
            }
        }
        if self.private {
            c.private -= 1;
        } else {
            c.lan -= 1;
        }
    }
}

/// Whose budget a peer draws on: its IPv4 address, or its IPv6 /64 (one host can hold a
/// whole /64, so counting single IPv6 addresses would not bound it).
fn peer_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Serves `router` on `listener` forever; with `tls`, HTTPS.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    header_timeout: Duration,
) {
    loop {
        let (stream, remote, local) = accept_tcp(&listener).await;
        let Some(admitted) = limits.admit(remote.ip(), local.ip()) else {
            tracing::debug!("{remote}: over the connection limits; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            remote,
            local,
            tls: tls.is_some(),
        };
        let (router, tls) = (router.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(stream, conn, router, header_timeout).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, conn, router, header_timeout).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {remote}: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {remote} timed out"),
                    }
                }
            }
            drop(admitted);
        });
    }
}

/// One HTTP/1.1 connection (the only protocol the TLS config offers).
async fn connection<S>(stream: S, conn: Conn, router: Router, header_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = conn.remote;
    let service = TowerToHyperService::new(router.layer(axum::Extension(ConnectInfo(conn))));
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!("connection from {remote}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_share_and_the_place_comes_back() {
        let limits = Limits::default();
        let (peer, local) = ("192.0.2.7".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let held: Vec<_> = (0..PER_ADDRESS)
            .map(|_| limits.admit(peer, local).unwrap())
            .collect();
        assert!(limits.admit(peer, local).is_none());
        // Another peer still gets in; and a place freed is a place again.
        assert!(limits.admit("192.0.2.8".parse().unwrap(), local).is_some());
        drop(held);
        assert!(limits.admit(peer, local).is_some());
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_slash_64() {
        let limits = Limits::default();
        let local = "2001:db8::1".parse().unwrap();
        let held: Vec<_> = (0..PER_ADDRESS)
            .map(|i| {
                limits
                    .admit(format!("2001:db8:0:1::{:x}", i + 1).parse().unwrap(), local)
                    .unwrap()
            })
            .collect();
        assert!(limits
            .admit("2001:db8:0:1::ffff".parse().unwrap(), local)
            .is_none());
        assert!(limits
            .admit("2001:db8:0:2::1".parse().unwrap(), local)
            .is_some());
        drop(held);
    }
}
