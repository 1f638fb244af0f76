//! What the box sends on its network, read from QEMU's capture of the LAN NIC
//! (`Extras::capture`) and sorted into the kinds docs/privacy.md allows. A frame of
//! any other kind is a violation, named with its addresses.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use etherparse::{EtherType, IpNumber, LinkSlice, NetSlice, SlicedPacket, TransportSlice};

/// A kind of frame the box may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Allowed {
    /// ARP: who has the router's address, and the box's answers.
    Arp,
    /// DHCPv4 from the client port to the server port.
    Dhcp,
    /// IPv6's ARP: router and neighbour solicitations and advertisements, and multicast
    /// listener reports, to link-local or link-scope multicast addresses.
    Ipv6NeighbourDiscovery,
    /// IGMP reports joining link-scope multicast groups (mDNS's 224.0.0.251).
    MulticastMembership,
    /// mDNS (port 5353) to the link-scope multicast group.
    Mdns,
    /// TCP on a connection a peer opened to the gateway (ports 80 and 443).
    ReplyToPhone,
    /// TCP on a connection the box opened to the configured mirror, carrying only GETs.
    MirrorGet,
}

/// The capture, sorted.
pub struct Report {
    pub counts: BTreeMap<Allowed, usize>,
    /// The request lines of every HTTP request the box sent to the mirror.
    pub mirror_requests: Vec<String>,
    /// Frames of no allowed kind, described.
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kind, count) in &self.counts {
            writeln!(f, "{count:>6}  {kind:?}")?;
        }
        for request in &self.mirror_requests {
            writeln!(f, "        mirror: {request}")?;
        }
        for violation in &self.violations {
            writeln!(f, "  VIOLATION  {violation}")?;
        }
        Ok(())
    }
}

/// Reads the pcap file QEMU's `filter-dump` wrote: Ethernet frames, both directions.
pub fn read_frames(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("a pcap file");
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        frames.push(packet.expect("a pcap record").data.into_owned());
    }
    frames
}

/// A TCP connection as the box sees it: (its port, the peer's address).
type Connection = (u16, SocketAddr);

#[derive(Default)]
struct Stream {
    /// Segments the box sent, by sequence number (retransmissions collapse).
    sent: BTreeMap<u32, Vec<u8>>,
}

/// Sorts the frames the box (`box_mac`) sent. `mirror` is the one address the box may
/// open connections to; `gateway_ports` are the ports peers may open connections to.
pub fn classify(frames: &[Vec<u8>], box_mac: [u8; 6], mirror: SocketAddr) -> Report {
    const GATEWAY_PORTS: [u16; 2] = [80, 443];
    let mut report = Report {
        counts: BTreeMap::new(),
        mirror_requests: Vec::new(),
        violations: Vec::new(),
    };
    // Connections by who opened them: the first SYN seen decides.
    let mut opened_by_peer: HashMap<Connection, ()> = HashMap::new();
    let mut to_mirror: HashMap<Connection, Stream> = HashMap::new();
    for (index, frame) in frames.iter().enumerate() {
        let packet = match SlicedPacket::from_ethernet(frame) {
            Ok(packet) => packet,
            Err(e) => {
                if frame.get(6..12) == Some(&box_mac[..]) {
                    report
                        .violations
                        .push(format!("frame {index}: unparsable ({e})"));
                }
                continue;
            }
        };
        let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
            continue;
        };
        let from_box = ethernet.source() == box_mac;
        let ether_type = ethernet.ether_type();
        let Some(net) = &packet.net else {
            if from_box {
                if ether_type == EtherType::ARP {
                    *report.counts.entry(Allowed::Arp).or_default() += 1;
                } else {
                    report
                        .violations
                        .push(format!("frame {index}: EtherType {ether_type:?}"));
                }
            }
            continue;
        };
        let (source, destination, protocol) = match net {
            NetSlice::Ipv4(ip) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
                ip.payload_ip_number(),
            ),
            NetSlice::Ipv6(ip) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
                ip.payload().ip_number,
            ),
        };
        let describe = |what: &str| format!("frame {index}: {what} {source} → {destination}");
        match &packet.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                let (box_port, peer_port, peer) = if from_box {
                    (tcp.source_port(), tcp.destination_port(), destination)
                } else {
                    (tcp.destination_port(), tcp.source_port(), source)
                };
                let connection = (box_port, SocketAddr::new(peer, peer_port));
                let opening = tcp.syn() && !tcp.ack();
                if opening && !from_box && GATEWAY_PORTS.contains(&box_port) {
                    opened_by_peer.insert(connection, ());
                }
                if opening && from_box && connection.1 == mirror {
                    to_mirror.insert(connection, Stream::default());
                }
                if !from_box {
                    continue;
                }
                if opened_by_peer.contains_key(&connection) {
                    *report.counts.entry(Allowed::ReplyToPhone).or_default() += 1;
                } else if let Some(stream) = to_mirror.get_mut(&connection) {
                    *report.counts.entry(Allowed::MirrorGet).or_default() += 1;
                    if !tcp.payload().is_empty() {
                        stream
                            .sent
                            .insert(tcp.sequence_number(), tcp.payload().to_vec());
                    }
                } else {
                    report.violations.push(format!(
                        "{}:{} (TCP{})",
                        describe("connection"),
                        peer_port,
                        if opening { ", opened by the box" } else { "" }
                    ));
                }
            }
            Some(TransportSlice::Udp(udp)) if from_box => {
                let (from, to) = (udp.source_port(), udp.destination_port());
                if (from, to) == (68, 67) && protocol == IpNumber::UDP {
                    *report.counts.entry(Allowed::Dhcp).or_default() += 1;
                } else if to == 5353 && is_mdns_group(destination) {
                    *report.counts.entry(Allowed::Mdns).or_default() += 1;
                } else {
                    report
                        .violations
                        .push(format!("{} (UDP {from} → {to})", describe("datagram")));
                }
            }
            Some(TransportSlice::Icmpv6(icmp)) if from_box => {
                // 133–136: router/neighbour solicitation/advertisement; 131, 143:
                // multicast listener reports (MLDv1, v2).
                let neighbourly = matches!(icmp.type_u8(), 131 | 133..=136 | 143);
                if neighbourly && is_link_scope(destination) {
                    *report
                        .counts
                        .entry(Allowed::Ipv6NeighbourDiscovery)
                        .or_default() += 1;
                } else {
                    report.violations.push(format!(
                        "{} (ICMPv6 type {})",
                        describe("message"),
                        icmp.type_u8()
                    ));
                }
            }
            None if from_box && protocol == IpNumber::IGMP && is_link_scope(destination) => {
                *report
                    .counts
                    .entry(Allowed::MulticastMembership)
                    .or_default() += 1;
            }
            _ if from_box => report
                .violations
                .push(format!("{} (IP protocol {protocol:?})", describe("packet"))),
            _ => {}
        }
    }
    for (connection, stream) in to_mirror {
        let bytes: Vec<u8> = stream.sent.into_values().flatten().collect();
        let text = String::from_utf8_lossy(&bytes);
        // GETs carry no body, so the stream is request heads back to back.
        for head in text.split_terminator("\r\n\r\n") {
            let line = head.lines().next().unwrap_or_default().to_string();
            let has_body = head.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                (l.starts_with("content-length:") && l.trim_end() != "content-length: 0")
                    || l.starts_with("transfer-encoding:")
            });
            if !line.starts_with("GET ") || has_body {
                report.violations.push(format!(
                    "to the mirror from port {}: {line:?} (not a GET without a body)",
                    connection.0
                ));
            }
            report.mirror_requests.push(line);
        }
    }
    report
}

fn is_mdns_group(address: IpAddr) -> bool {
    address == IpAddr::V4(Ipv4Addr::new(224, 0, 0, 251))
        || address == IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb))
}

/// Link-local unicast or link-scope multicast: never routed beyond the LAN.
fn is_link_scope(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            first & 0xffc0 == 0xfe80 || first & 0xff0f == 0xff02
        }
    }
}
