//! What the gateway's test files share.

pub mod browser;

/// A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
