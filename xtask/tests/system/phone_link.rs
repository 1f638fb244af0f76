//! The USB-C link to a phone, both directions, in QEMU (docs/usb-link.md):
//!
//! - **Gadget mode** (an iPhone, Mac or Linux laptop plugged into the box): the box's
//!   `usb-gadget` service binds a configfs NCM/ECM gadget to the QEMU board's UDC,
//!   dummy_hcd, whose host side enumerates the gadget in the same kernel as a cdc_ncm
//!   interface. The test moves that interface into its own network namespace in the
//!   guest, the "phone", whose DHCP client (busybox udhcpc) must get an address from the
//!   box's DHCP server; then both ends ping each other, also over link-local addresses.
//! - **Host mode** (an Android phone's USB tethering): QEMU's emulated USB network
//!   device (`usb-net`, RNDIS) stands in for the phone, and the box's `usb-host` service
//!   must take an address from the phone's DHCP server. As root, the phone's side is a
//!   TAP device in a network namespace on this host with dnsmasq as the phone's DHCP
//!   server: a real host-side link. Without root (or dnsmasq) QEMU's user-mode network
//!   plays the phone instead: its built-in DHCP server hands out the address, but
//!   nothing on the host can see the link's multicast.
//! - **mDNS** on both links, with the real client: Debian's avahi-browse, talking to an
//!   avahi-daemon of the phone's own (its own D-Bus bus and configuration, only the
//!   phone's interface, publishing nothing) must resolve the gateway's `_llamabox._tcp`
//!   and `_https._tcp` to the box's address on that link, port 443, and its TXT. In the
//!   guest avahi comes with the test image (recipe `avahi-test`); on the host it is the
//!   packages avahi-daemon, avahi-utils and dbus (checked only where the host link is
//!   real).
//!
//! All of it runs in one boot: under TCG a boot is the slow part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{files, TestMachine};
use xtask::qemu::{self, Agent, Extras, Machine};

const TEST_IMAGE: &str = "llamabox-test";
const BB: &str = "/usr/lib/llamabox/network/busybox";
const DIR: &str = "/run/phone-test";
/// Generous: TCG on a busy 2-core machine; every wait below ends on a condition.
const ANSWER: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(300);

/// The gadget link's addresses (overlays/usb-link/usr/lib/llamabox/usb-link/gadget.sh).
const BOX_GADGET_ADDR: &str = "10.55.0.1";
const BOX_LINK_LOCAL: &str = "169.254.55.1";
/// The emulated Android phone's tethering subnet (Android's classic 192.168.42.129/24).
const PHONE_ADDR: &str = "192.168.42.129";
const PHONE_NET: &str = "192.168.42.";

/// What the gateway advertises (services/gateway/src/mdns.rs, docs/pairing.md).
const SERVICE_TYPES: &[&str] = &["_llamabox._tcp", "_https._tcp"];
const HTTPS_PORT: u16 = 443;
/// Where the gateway logs its name and certificate fingerprint.
const GATEWAY_LOG: &str = "/var/log/llamabox/gateway.log";

/// Lists the USB network interfaces in the guest: name, driver, device path.
const USB_NETS: &str = r#"bb=/usr/lib/llamabox/network/busybox
for dev in /sys/class/net/*; do
    d=$($bb readlink $dev/device/driver 2>/dev/null) || continue
    echo "${dev##*/} ${d##*/} $($bb readlink -f $dev/device)"
done
"#;

/// Starts the "phone" network namespace in the guest (a sleeping process's) and moves
/// interface $1 into it; prints the process id.
const PHONE_NETNS: &str = r#"bb=/usr/lib/llamabox/network/busybox
$bb unshare -n $bb sleep 100000 </dev/null >/dev/null 2>&1 &
pid=$!
while [ "$($bb readlink /proc/$pid/ns/net)" = "$($bb readlink /proc/self/ns/net)" ]; do
    $bb sleep 0.1
done
$bb ip link set dev "$1" netns $pid || exit 1
echo "phone $pid"
"#;

/// The phone's udhcpc lease script: applies the lease inside the phone's namespace.
/// udhcpc execs it (a script it cannot exec makes it hang, not fail).
const PHONE_LEASE: &str = r#"#!/usr/lib/llamabox/network/busybox sh
bb=/usr/lib/llamabox/network/busybox
case "$1" in
    deconfig)
        $bb ip link set lo up
        $bb ip link set "$interface" up
        $bb ip -4 addr flush dev "$interface"
        ;;
    bound|renew)
        $bb ip addr add "$ip/${mask:-24}" dev "$interface"
        echo "phone: $interface has $ip/${mask:-24}"
        ;;
esac
exit 0
"#;

/// The phone's avahi-daemon: IPv4 on the phone's interface only, publishing nothing
/// (so it never speaks for the box, whose host name it may share in the guest).
/// `@IF@` is the interface.
const AVAHI_CONF: &str = "[server]
host-name=phone
use-ipv4=yes
use-ipv6=no
allow-interfaces=@IF@
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
disable-publishing=yes
publish-addresses=no
publish-workstation=no
publish-domain=no
";

/// avahi-daemon's log line once it listens (it goes on to browse for its clients).
const AVAHI_READY: &str = "Server startup complete";
/// ... and its last line when it gives up (a bad configuration, no bus).
const AVAHI_EXITING: &str = "exiting";

/// A private D-Bus bus for the phone's avahi-daemon and avahi-browse, open to all (root)
/// clients; `@SOCKET@` is its socket's path.
const BUS_CONF: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=@SOCKET@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

/// Starts the guest phone's mDNS client side: a private bus, and avahi-daemon in the
/// phone's network namespace ($1: a process in it) on interface $2, configured by
/// $DIR/avahi.conf and $DIR/bus.conf. avahi-daemon insists on its user `avahi` even
/// with --no-drop-root; the box has none, so it gets a passwd and group with one, bind
/// mounted in a mount namespace of its own.
const PHONE_AVAHI: &str = r#"bb=/usr/lib/llamabox/network/busybox
d=/run/phone-test/avahi
{ $bb cat /etc/passwd; echo "avahi:x:990:990:phone test:/nonexistent:/bin/false"; } >$d/passwd
{ $bb cat /etc/group; echo "avahi:x:990:"; } >$d/group
/usr/bin/dbus-daemon --config-file=$d/bus.conf --fork </dev/null >$d/dbus.log 2>&1 || exit 1
n=0
while [ ! -S $d/bus ]; do
    n=$((n + 1)); [ $n -lt 300 ] || { echo "no bus socket"; exit 1; }
    $bb sleep 0.1
done
DBUS_SYSTEM_BUS_ADDRESS=unix:path=$d/bus $bb nsenter -t "$1" -n $bb unshare -m $bb sh -c "
    $bb mount -o bind $d/passwd /etc/passwd && $bb mount -o bind $d/group /etc/group &&
    exec /usr/sbin/avahi-daemon --no-drop-root --no-chroot --no-rlimits -f $d/avahi.conf
" </dev/null >$d/avahi.log 2>&1 &
echo "avahi $!"
"#;

fn run(agent: &mut Agent, command: &str) -> String {
    agent
        .command(command, ANSWER)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .join("\n")
}

/// Runs `command` in the guest until `check` accepts its output (errors count as not
/// yet), or panics after `timeout` with the last output.
fn until(
    agent: &mut Agent,
    command: &str,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let out = match agent.command(command, ANSWER) {
            Ok(lines) => lines.join("\n"),
            Err(e) => format!("{e:#}"),
        };
        if check(&out) {
            return out;
        }
        assert!(
            start.elapsed() < timeout,
            "`{command}` did not get there within {timeout:?}: {out}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The USB network interfaces: (name, driver, device path).
fn usb_nets(agent: &mut Agent) -> Vec<(String, String, String)> {
    run(agent, &format!("exec {BB} sh {DIR}/usb-nets.sh"))
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().map(str::to_string);
            Some((w.next()?, w.next()?, w.next()?))
        })
        .collect()
}

/// The IPv4 address (without prefix) of an `ip -4 addr show` output in `subnet`.
fn address_in(ip_addr: &str, subnet: &str) -> Option<String> {
    ip_addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .filter(|a| a.starts_with(subnet))
        .map(|a| a.split('/').next().unwrap().to_string())
}

/// One resolved service of `avahi-browse -rptk` (-k: service types as they are, not
/// their names from avahi's database, which the box lacks): its `=` lines are
/// `=;interface;protocol;name;type;domain;host;address;port;txt`.
#[derive(Debug, Clone, PartialEq)]
struct Resolved {
    interface: String,
    protocol: String,
    name: String,
    service_type: String,
    host: String,
    address: String,
    port: u16,
    txt: String,
}

fn resolved(browsed: &str) -> Vec<Resolved> {
    browsed
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.splitn(10, ';').collect();
            (f.len() == 10 && f[0] == "=").then(|| Resolved {
                interface: f[1].into(),
                protocol: f[2].into(),
                name: f[3].into(),
                service_type: f[4].into(),
                host: f[6].into(),
                address: f[7].into(),
                port: f[8].parse().unwrap_or(0),
                txt: f[9].into(),
            })
        })
        .collect()
}

/// The box as the gateway names itself: (name, certificate fingerprint), from its log
/// line `llamabox-ab12: https on ...; certificate sha256 <hex>; ...`.
fn gateway_identity(agent: &mut Agent) -> (String, String) {
    let log = until(agent, &format!("cat {GATEWAY_LOG}"), SETTLE, |out| {
        out.contains(": https on ")
    });
    let line = log.lines().find(|l| l.contains(": https on ")).unwrap();
    let name = line.split(": https on ").next().unwrap();
    let name = name.rsplit(' ').next().unwrap().to_string();
    let fingerprint = line
        .split("certificate sha256 ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no fingerprint in {line}"))
        .to_string();
    assert!(
        name.strip_prefix("llamabox-")
            .is_some_and(|id| id.len() == 4 && id.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    (name, fingerprint)
}

/// Browses `service_type` with `browse` (avahi-browse -rptk on the phone's side of a link)
/// until the box's record with one of its `addresses` on that link shows up (avahi
/// resolves to one of the A records the box sends), then checks it.
fn box_resolved(
    link: &str,
    service_type: &str,
    (name, fingerprint): &(String, String),
    addresses: &[&str],
    mut browse: impl FnMut(&str) -> String,
) -> Resolved {
    let start = Instant::now();
    let mut last = String::new();
    let record = loop {
        let mine = resolved(&last).into_iter().find(|r| {
            r.name == *name
                && r.service_type == service_type
                && addresses.contains(&r.address.as_str())
        });
        if let Some(record) = mine {
            break record;
        }
        assert!(
            start.elapsed() < SETTLE,
            "{link}: avahi-browse did not resolve {service_type} of {name} at {addresses:?} \
             within {SETTLE:?}: {last}"
        );
        if !last.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
        }
        last = browse(service_type);
    };
    assert_eq!(record.protocol, "IPv4", "{link}: {record:?}");
    assert_eq!(record.host, format!("{name}.local"), "{link}: {record:?}");
    assert_eq!(record.port, HTTPS_PORT, "{link}: {record:?}");
    for txt in [
        "\"v=1\"".to_string(),
        format!("\"fp={}\"", &fingerprint[..16]),
    ] {
        assert!(record.txt.contains(&txt), "{link}: no {txt} in {record:?}");
    }
    eprintln!(
        "{link}: avahi-browse resolved {service_type} {} on {} to {}:{} ({:.1?})",
        record.name,
        record.interface,
        record.address,
        record.port,
        start.elapsed()
    );
    record
}

fn host(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// The Android phone's side of host mode on this host: a network namespace with a TAP
/// device (QEMU's usb-net is attached to it) and dnsmasq as the phone's DHCP server.
/// Dropped: dnsmasq stops and the namespace goes.
struct PhoneNetns {
    name: String,
    dnsmasq: Child,
    leases: PathBuf,
}

const TAP: &str = "phone0";

impl PhoneNetns {
    /// Root, ip and dnsmasq are needed (namespaces, TAP devices, a DHCP server).
    fn possible() -> bool {
        let ip = Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let dnsmasq = Command::new("dnsmasq")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        root && ip && dnsmasq
    }

    fn start(dir: &std::path::Path) -> PhoneNetns {
        let name = format!("llamabox-phone-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        host(Command::new("ip").args(["netns", "add", &name]));
        let ip = |args: &[&str]| host(Command::new("ip").args(["-n", &name]).args(args));
        ip(&["link", "set", "lo", "up"]);
        ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
        // QEMU runs in this namespace, and so does its user-mode NIC (the box's eth0):
        // slirp relays the box's multicast from eth0, mDNS included, out of here from an
        // ephemeral port. Over the phone's link that looks like another host claiming
        // the box's names, and the box's responder renames itself. IPv4 multicast has no
        // route here (no default route); IPv6 gets none with IPv6 off on the phone's side.
        host(
            Command::new("ip")
                .args(["netns", "exec", &name, "sh", "-c"])
                .arg(format!(
                    "echo 1 > /proc/sys/net/ipv6/conf/{TAP}/disable_ipv6"
                )),
        );
        ip(&["addr", "add", &format!("{PHONE_ADDR}/24"), "dev", TAP]);
        ip(&["link", "set", TAP, "up"]);
        let leases = dir.join("dnsmasq.leases");
        let _ = std::fs::remove_file(&leases);
        let dnsmasq = Command::new("ip")
            .args(["netns", "exec", &name, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--interface={TAP}"))
            .arg("--bind-interfaces")
            .arg(format!(
                "--dhcp-range={PHONE_NET}10,{PHONE_NET}50,255.255.255.0,1h"
            ))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg("--log-dhcp")
            .arg(format!(
                "--log-facility={}",
                dir.join("dnsmasq.log").display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting dnsmasq");
        PhoneNetns {
            name,
            dnsmasq,
            leases,
        }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn exec(&self, args: &[&str]) -> String {
        host(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }
}

impl Drop for PhoneNetns {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// The host phone's mDNS client side: a private bus (dbus-daemon) and avahi-daemon in
/// the phone's namespace, on the TAP only, with its runtime directory on a tmpfs of its
/// own (`ip netns exec` gives it a mount namespace), so neither depends on nor disturbs
/// an avahi-daemon of this host. Dropped: both stop.
struct HostAvahi {
    bus: Child,
    daemon: Child,
    bus_address: String,
    netns: String,
}

impl HostAvahi {
    fn possible() -> bool {
        ["avahi-daemon", "avahi-browse", "dbus-daemon"]
            .iter()
            .all(|tool| {
                Command::new(tool)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
    }

    fn start(phone: &PhoneNetns, dir: &Path) -> HostAvahi {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("bus");
        let bus_address = format!("unix:path={}", socket.display());
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        std::fs::write(
            dir.join("bus.conf"),
            BUS_CONF.replace("@SOCKET@", &socket.display().to_string()),
        )
        .unwrap();
        std::fs::write(dir.join("avahi.conf"), AVAHI_CONF.replace("@IF@", TAP)).unwrap();
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", dir.join("bus.conf").display()))
            .arg("--nofork")
            .stdin(Stdio::null())
            .stdout(log("dbus.log"))
            .stderr(log("dbus.err"))
            .spawn()
            .expect("starting dbus-daemon");
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = bus.try_wait().unwrap() {
                panic!("dbus-daemon exited ({status}), see {}", dir.display());
            }
            assert!(start.elapsed() < ANSWER, "no bus at {}", socket.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        let avahi_log = log("avahi.log");
        let daemon = Command::new("ip")
            .args(["netns", "exec", &phone.name, "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs tmpfs /run && exec avahi-daemon --no-drop-root --no-chroot \
                 --no-rlimits -f {}",
                dir.join("avahi.conf").display()
            ))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus_address)
            .stdin(Stdio::null())
            .stdout(avahi_log.try_clone().unwrap())
            .stderr(avahi_log)
            .spawn()
            .expect("starting avahi-daemon");
        let avahi = HostAvahi {
            bus,
            daemon,
            bus_address,
            netns: phone.name.clone(),
        };
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(dir.join("avahi.log")).unwrap_or_default();
            if log.contains(AVAHI_READY) {
                break avahi;
            }
            assert!(
                !log.contains(AVAHI_EXITING) && start.elapsed() < ANSWER,
                "the host phone's avahi-daemon: {log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `avahi-browse -rptk` in the phone's namespace; its output, or why it failed.
    fn browse(&self, service_type: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "timeout", "60"])
            .args(["avahi-browse", "-rptk", service_type])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus_address)
            .stdin(Stdio::null())
            .output()
            .expect("running avahi-browse");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for HostAvahi {
    fn drop(&mut self) {
        for child in [&mut self.daemon, &mut self.bus] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_phone_gets_an_address_over_usb_both_ways() {
    let mut vm = TestMachine::with_image("phone-link", TEST_IMAGE);

    // Host mode's phone: a TAP in a namespace with dnsmasq when we can, else slirp.
    let phone = PhoneNetns::possible().then(|| PhoneNetns::start(&vm.dir));
    let extras = match &phone {
        Some(phone) => Extras {
            args: qemu::usb_net_args(&format!("tap,ifname={TAP},script=no,downscript=no")),
            netns: Some(phone.path()),
            ..Extras::default()
        },
        None => {
            eprintln!(
                "not root, or no ip or dnsmasq: QEMU's user-mode network plays the tethering \
                 phone (no host-side link to check mDNS on)"
            );
            Extras {
                args: qemu::usb_net_args(&format!(
                    "user,net={PHONE_NET}0/24,host={PHONE_ADDR},dhcpstart={PHONE_NET}10"
                )),
                ..Extras::default()
            }
        }
    };

    let booted = Instant::now();
    let mut machine = vm.boot_extra(&[], &extras);
    let mut agent = vm.agent(&mut machine);
    eprintln!(
        "test agent ready {:.1?} after QEMU started",
        booted.elapsed()
    );
    files::write(
        &mut agent,
        &format!("{DIR}/usb-nets.sh"),
        USB_NETS.as_bytes(),
    );
    files::write(
        &mut agent,
        &format!("{DIR}/phone-netns.sh"),
        PHONE_NETNS.as_bytes(),
    );
    files::write(
        &mut agent,
        &format!("{DIR}/phone-lease.sh"),
        PHONE_LEASE.as_bytes(),
    );
    files::write(
        &mut agent,
        &format!("{DIR}/phone-avahi.sh"),
        PHONE_AVAHI.as_bytes(),
    );
    run(
        &mut agent,
        &format!("exec {BB} chmod 755 {DIR}/phone-lease.sh"),
    );

    let gadget = gadget_mode(&mut agent, &mut machine);
    eprintln!("gadget mode checked {:.1?} after boot", booted.elapsed());
    let box_ip = host_mode(&mut agent, phone.as_ref());
    eprintln!("host mode checked {:.1?} after boot", booted.elapsed());

    // mDNS (issue 6, Done-when 1): while both links are up, avahi-browse on the phone's
    // side of each resolves the gateway's services to the box's address on that link.
    let identity = gateway_identity(&mut agent);
    gadget_mdns(&mut agent, &gadget, &identity);
    eprintln!(
        "mDNS on the gadget link checked {:.1?} after boot",
        booted.elapsed()
    );
    match &phone {
        Some(phone) if HostAvahi::possible() => {
            let avahi = HostAvahi::start(phone, &vm.dir.join("avahi"));
            for service_type in SERVICE_TYPES {
                box_resolved("host link", service_type, &identity, &[&box_ip], |t| {
                    avahi.browse(t)
                });
            }
            drop(avahi);
            eprintln!(
                "mDNS on the host link checked {:.1?} after boot",
                booted.elapsed()
            );
        }
        Some(_) => eprintln!(
            "no avahi-daemon, avahi-browse or dbus-daemon on this host (packages avahi-daemon, \
             avahi-utils, dbus): mDNS on the host link not checked"
        ),
        None => eprintln!("no host-side link: mDNS on the host link not checked"),
    }
    drop(agent);
    machine.kill();
}

/// The guest's "phone" on the gadget link: the process holding its network namespace,
/// and its interface there.
struct GadgetPhone {
    pid: String,
    interface: String,
}

/// The gadget link's mDNS, from the guest's phone: its own avahi-daemon and bus, and
/// avahi-browse as the client.
fn gadget_mdns(agent: &mut Agent, phone: &GadgetPhone, identity: &(String, String)) {
    let dir = format!("{DIR}/avahi");
    run(agent, &format!("exec {BB} mkdir -p {dir}"));
    files::write(
        agent,
        &format!("{dir}/avahi.conf"),
        AVAHI_CONF.replace("@IF@", &phone.interface).as_bytes(),
    );
    files::write(
        agent,
        &format!("{dir}/bus.conf"),
        BUS_CONF
            .replace("@SOCKET@", &format!("{dir}/bus"))
            .as_bytes(),
    );
    let started = run(
        agent,
        &format!(
            "exec {BB} sh {DIR}/phone-avahi.sh {} {}",
            phone.pid, phone.interface
        ),
    );
    eprintln!("{started}");
    let log = until(agent, &format!("cat {dir}/avahi.log"), ANSWER, |out| {
        out.contains(AVAHI_READY) || out.contains(AVAHI_EXITING)
    });
    assert!(log.contains(AVAHI_READY), "the phone's avahi-daemon: {log}");
    for service_type in SERVICE_TYPES {
        let record = box_resolved(
            "gadget link",
            service_type,
            identity,
            &[BOX_GADGET_ADDR, BOX_LINK_LOCAL],
            |t| match agent.command(
                &format!(
                    "exec {BB} nsenter -t {} -n {BB} timeout 60 {BB} env \
                     DBUS_SYSTEM_BUS_ADDRESS=unix:path={dir}/bus /usr/bin/avahi-browse -rptk {t}",
                    phone.pid
                ),
                ANSWER,
            ) {
                Ok(lines) => lines.join("\n"),
                Err(e) => {
                    let log = agent
                        .command(&format!("cat {dir}/avahi.log"), ANSWER)
                        .map(|l| l.join("\n"))
                        .unwrap_or_default();
                    format!("{e:#}\navahi-daemon's log: {log}")
                }
            },
        );
        assert_eq!(record.interface, phone.interface, "{record:?}");
    }
}

/// The box's gadget, seen from the other end of the dummy_hcd cable: a "phone" with its
/// own network namespace in the guest takes an address from the box's DHCP server.
fn gadget_mode(agent: &mut Agent, machine: &mut Machine) -> GadgetPhone {
    let start = Instant::now();
    // The box's end: the bridge of the gadget's interfaces, with its addresses.
    until(
        agent,
        &format!("exec {BB} ip -4 addr show dev usblink0"),
        SETTLE,
        // gadget.sh adds them one after the other.
        |out| {
            out.contains(&format!("{BOX_GADGET_ADDR}/28"))
                && out.contains(&format!("{BOX_LINK_LOCAL}/16"))
        },
    );
    machine
        .wait_for("usb-gadget: gadget on", Duration::from_secs(10))
        .ok();

    // The host side of the cable: a cdc_ncm interface under dummy_hcd (the gadget's
    // first configuration is NCM). The box's own usb-host service leaves it alone.
    let started = Instant::now();
    let phone_if = loop {
        let nets = usb_nets(agent);
        if let Some((name, _, _)) = nets
            .iter()
            .find(|(_, driver, path)| driver == "cdc_ncm" && path.contains("/dummy_hcd."))
        {
            break name.clone();
        }
        assert!(
            started.elapsed() < SETTLE,
            "no cdc_ncm interface under dummy_hcd: {nets:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "gadget bound, host side is {phone_if} ({:.1?})",
        start.elapsed()
    );

    let reply = run(
        agent,
        &format!("exec {BB} sh {DIR}/phone-netns.sh {phone_if}"),
    );
    let pid = reply
        .lines()
        .find_map(|l| l.strip_prefix("phone "))
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    let in_phone = |cmd: &str| format!("exec {BB} nsenter -t {pid} -n {BB} {cmd}");

    // -n: fail when no lease comes; -q: quit once bound.
    let lease = run(
        agent,
        &in_phone(&format!(
            "udhcpc -n -q -t 20 -T 3 -i {phone_if} -s {DIR}/phone-lease.sh"
        )),
    );
    eprintln!("{lease}");
    let shown = run(agent, &in_phone(&format!("ip -4 addr show dev {phone_if}")));
    let phone_ip = address_in(&shown, "10.55.0.")
        .unwrap_or_else(|| panic!("the phone has no address from the box: {shown}"));
    eprintln!(
        "phone got {phone_ip} from the box's DHCP server ({:.1?})",
        start.elapsed()
    );
    let server = run(agent, "cat /var/log/llamabox/usb-gadget.log");
    assert!(server.contains(&phone_ip), "{server}");

    // Both ways over the cable, and over link-local addresses. The box itself never
    // pings (its firewall lets out only replies and link housekeeping, docs/privacy.md):
    // the phone's pings crossing the link and the box knowing the phone as a neighbour
    // prove both directions.
    run(
        agent,
        &in_phone(&format!("ping -c 2 -W 10 {BOX_GADGET_ADDR}")),
    );
    let neighbours = run(agent, "cat /proc/net/arp");
    assert!(neighbours.contains(&phone_ip), "{neighbours}");
    run(
        agent,
        &in_phone(&format!("ip addr add 169.254.77.7/16 dev {phone_if}")),
    );
    run(
        agent,
        &in_phone(&format!("ping -c 2 -W 10 {BOX_LINK_LOCAL}")),
    );
    eprintln!("gadget link pinged both ways ({:.1?})", start.elapsed());
    GadgetPhone {
        pid,
        interface: phone_if,
    }
}

/// QEMU's usb-net (RNDIS) is a tethering Android phone: the box takes its address,
/// which this returns.
fn host_mode(agent: &mut Agent, phone: Option<&PhoneNetns>) -> String {
    let start = Instant::now();
    // Not by name: by driver, under a real host controller (not dummy_hcd's).
    let started = Instant::now();
    let (box_if, driver) = loop {
        let nets = usb_nets(agent);
        if let Some((name, driver, _)) = nets.iter().find(|(_, driver, path)| {
            ["rndis_host", "cdc_ether", "cdc_ncm"].contains(&driver.as_str())
                && !path.contains("/dummy_hcd.")
        }) {
            break (name.clone(), driver.clone());
        }
        assert!(
            started.elapsed() < SETTLE,
            "no USB network interface from QEMU's usb-net: {nets:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let shown = until(
        agent,
        &format!("exec {BB} ip -4 addr show dev {box_if}"),
        SETTLE,
        |out| address_in(out, PHONE_NET).is_some(),
    );
    let box_ip = address_in(&shown, PHONE_NET).unwrap();
    eprintln!(
        "the box's {box_if} ({driver}) got {box_ip} from the phone ({:.1?})",
        start.elapsed()
    );
    let routes = run(agent, &format!("exec {BB} ip route"));
    assert!(
        routes.contains(&format!("default via {PHONE_ADDR} dev {box_if}")),
        "{routes}"
    );
    let log = run(agent, "cat /var/log/llamabox/usb-host.log");
    assert!(log.contains(&format!("{box_if} has {box_ip}")), "{log}");
    // It left the host side of the box's own gadget (under dummy_hcd) alone.
    assert!(!log.contains("dummy_hcd"), "{log}");

    if let Some(phone) = phone {
        let leases = std::fs::read_to_string(&phone.leases).unwrap_or_default();
        assert!(leases.contains(&box_ip), "dnsmasq's leases: {leases}");
        // The phone opens a connection to the box's gateway (the box itself starts
        // none: its firewall); the round trip crossed the TAP, and the phone's side
        // knows the box.
        phone.exec(&[
            "python3",
            "-c",
            &format!("import socket; socket.create_connection(('{box_ip}', 443), 30).close()"),
        ]);
        let neighbours = phone.exec(&["ip", "neigh", "show", "dev", TAP]);
        assert!(neighbours.contains(&box_ip), "{neighbours}");
        eprintln!("host link checked both ways ({:.1?})", start.elapsed());
    }
    box_ip
}
