//! Discovery: `<name>.local` and the box's services over multicast DNS, on every
//! link (USB links come and go: addresses follow the interfaces as they change).

use anyhow::{Context, Result};
use mdns_sd::{ServiceDaemon, ServiceInfo};

/// Service types a phone looks for: ours (the app's discovery) and the generic HTTPS
/// one (browsers and "Bonjour browser" apps).
pub const SERVICE_TYPES: &[&str] = &["_llamabox._tcp.local.", "_https._tcp.local."];

pub fn advertise(device_name: &str, https_port: u16, fingerprint: &str) -> Result<ServiceDaemon> {
    let daemon = ServiceDaemon::new().context("starting the mDNS responder")?;
    // Nothing on the box browses, so it has no use for its own multicast looped back;
    // hearing it makes mdns-sd take its own answers for a rival's: on a link whose IPv4
    // address comes after its IPv6 one (USB tethering), the box answered its own probes
    // and renamed itself over and over ("llamabox-ab12 (2374)"; QEMU test phone_link).
    daemon
        .set_multicast_loop_v4(false)
        .and_then(|()| daemon.set_multicast_loop_v6(false))
        .context("configuring the mDNS responder")?;
    let host = format!("{device_name}.local.");
    // TXT: protocol version, and the certificate's fingerprint prefix so an app can
    // tell two boxes apart before connecting (the full fingerprint comes with pairing).
    let properties = [("v", "1"), ("fp", &fingerprint[..16]), ("path", "/")];
    for service_type in SERVICE_TYPES {
        let info = ServiceInfo::new(
            service_type,
            device_name,
            &host,
            "",
            https_port,
            &properties[..],
        )
        .with_context(|| format!("describing {service_type}"))?
        .enable_addr_auto();
        daemon
            .register(info)
            .with_context(|| format!("advertising {service_type}"))?;
    }
    Ok(daemon)
}
