//! The box's firewall lets nothing out but replies and link housekeeping
//! (`/usr/lib/llamabox/firewall.nft`, docs/privacy.md). The update client is the one
//! thing that starts connections: just before it connects to a mirror (or where a
//! mirror redirects it), it adds that address and port to the ruleset's `mirrors4` /
//! `mirrors6` sets, for an hour. Where the ruleset is not installed (a host, tests),
//! this does nothing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llamabox_format::paths::FIREWALL_RULESET as RULESET;
const NFT: &str = "/usr/sbin/nft";
/// How long an opened address stays open: a long download reconnects well within it.
const OPEN_FOR: Duration = Duration::from_secs(3600);
/// Opened again once this old, so it never expires in the middle of a transfer.
const REFRESH_AFTER: Duration = Duration::from_secs(1800);

static OPENED: Mutex<Option<HashMap<SocketAddr, Instant>>> = Mutex::new(None);

/// Lets this box connect to `url`'s addresses (resolved now) on its port.
pub fn open_to(url: &reqwest::Url) {
    if !Path::new(RULESET).exists() {
        return;
    }
    let addresses = match url.socket_addrs(|| None) {
        Ok(addresses) => addresses,
        // The request itself will fail with the same reason, and say it.
        Err(_) => return,
    };
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    let opened = opened.get_or_insert_with(HashMap::new);
    for address in addresses {
        if opened
            .get(&address)
            .is_some_and(|at| at.elapsed() < REFRESH_AFTER)
        {
            continue;
        }
        let (set, ip) = match address.ip() {
            IpAddr::V4(ip) => ("mirrors4", ip.to_string()),
            IpAddr::V6(ip) => ("mirrors6", ip.to_string()),
        };
        // `timeout` on an element already present does not renew it: delete, then add.
        let element = format!("{{ {ip} . {} }}", address.port());
        let _ = Command::new(NFT)
            .args(["delete", "element", "inet", "llamabox", set, &element])
            .output();
        let element = format!(
            "{{ {ip} . {} timeout {}s }}",
            address.port(),
            OPEN_FOR.as_secs()
        );
        match Command::new(NFT)
            .args(["add", "element", "inet", "llamabox", set, &element])
            .output()
        {
            Ok(out) if out.status.success() => {
                opened.insert(address, Instant::now());
            }
            Ok(out) => eprintln!(
                "llamabox-update: cannot open the firewall to {address}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("llamabox-update: cannot open the firewall to {address}: {e}"),
        }
    }
}
