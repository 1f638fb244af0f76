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
//!   server: a real host-side link, where mDNS can be checked later with avahi-browse.
//!   Without root (or dnsmasq) QEMU's user-mode network plays the phone instead: its
//!   built-in DHCP server hands out the address, but nothing on the host can see the
//!   link's multicast.
//!
//! Both run in one boot: under TCG a boot is the slow part.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{files, TestMachine};
use xtask::config::board;
use xtask::project::Project;
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

#[test]
fn a_phone_gets_an_address_over_usb_both_ways() {
    let vm = TestMachine::with_image("phone-link", TEST_IMAGE);

    // Host mode's phone: a TAP in a namespace with dnsmasq when we can, else slirp.
    let phone = PhoneNetns::possible().then(|| PhoneNetns::start(&vm.dir));
    let extras = match &phone {
        Some(phone) => Extras {
            args: qemu::usb_net_args(&format!("tap,ifname={TAP},script=no,downscript=no")),
            netns: Some(phone.path()),
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
                netns: None,
            }
        }
    };

    // TestMachine boots without extras; the same machine, with them.
    let board = board::load(&Project::locate().boards_dir(), &common::board_name()).unwrap();
    let booted = Instant::now();
    let mut machine = Machine::start_extra(
        &board,
        &vm.disk,
        &vm.dir.join("efivars.fd"),
        &vm.dir.join("console-1.log"),
        Some(&vm.agent_socket()),
        &[],
        &extras,
    )
    .unwrap();
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
    run(
        &mut agent,
        &format!("exec {BB} chmod 755 {DIR}/phone-lease.sh"),
    );

    gadget_mode(&mut agent, &mut machine);
    eprintln!("gadget mode checked {:.1?} after boot", booted.elapsed());
    host_mode(&mut agent, phone.as_ref());
    eprintln!("host mode checked {:.1?} after boot", booted.elapsed());

    // mDNS (issue 6, Done-when 1), once the gateway (`llamabox-gateway`, advertising
    // `_llamabox._tcp` and `_https._tcp` with mdns-sd on every interface) is in the
    // image: check here, while both links are up, that avahi-browse as the real client
    // resolves `_llamabox._tcp` on both of them:
    // - gadget link: from the guest's phone namespace (`nsenter -t <phone pid> -n`,
    //   see `gadget_mode`) to 10.55.0.1 on usblink0; needs avahi in the test image;
    // - host link: in `phone`'s namespace on this host (`phone.exec(..)`), where the
    //   box answers on its RNDIS interface; avahi-browse talks to an avahi-daemon over
    //   D-Bus, so run a private avahi-daemon and bus inside that namespace.
    drop(agent);
    machine.kill();
}

/// The box's gadget, seen from the other end of the dummy_hcd cable: a "phone" with its
/// own network namespace in the guest takes an address from the box's DHCP server.
fn gadget_mode(agent: &mut Agent, machine: &mut Machine) {
    let start = Instant::now();
    // The box's end: the bridge of the gadget's interfaces, with its addresses.
    let bridge = until(
        agent,
        &format!("exec {BB} ip -4 addr show dev usblink0"),
        SETTLE,
        |out| out.contains(&format!("{BOX_GADGET_ADDR}/28")),
    );
    assert!(bridge.contains(&format!("{BOX_LINK_LOCAL}/16")), "{bridge}");
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

    // Both ways over the cable, and over link-local addresses.
    run(
        agent,
        &in_phone(&format!("ping -c 2 -W 10 {BOX_GADGET_ADDR}")),
    );
    run(agent, &format!("exec {BB} ping -c 2 -W 10 {phone_ip}"));
    run(
        agent,
        &in_phone(&format!("ip addr add 169.254.77.7/16 dev {phone_if}")),
    );
    run(
        agent,
        &in_phone(&format!("ping -c 2 -W 10 {BOX_LINK_LOCAL}")),
    );
    eprintln!("gadget link pinged both ways ({:.1?})", start.elapsed());
}

/// QEMU's usb-net (RNDIS) is a tethering Android phone: the box takes its address.
fn host_mode(agent: &mut Agent, phone: Option<&PhoneNetns>) {
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

    run(agent, &format!("exec {BB} ping -c 2 -W 10 {PHONE_ADDR}"));
    if let Some(phone) = phone {
        let leases = std::fs::read_to_string(&phone.leases).unwrap_or_default();
        assert!(leases.contains(&box_ip), "dnsmasq's leases: {leases}");
        // The ping's round trip crossed the TAP: the phone's side knows the box.
        let neighbours = phone.exec(&["ip", "neigh", "show", "dev", TAP]);
        assert!(neighbours.contains(&box_ip), "{neighbours}");
        eprintln!("host link checked both ways ({:.1?})", start.elapsed());
    }
}
