//! The privacy claim (docs/privacy.md), proved on the wire: QEMU records every frame on
//! the box's LAN NIC while it boots, pairs a phone, answers a chat, transcribes a clip
//! and checks the configured mirror for updates; every frame the box sent must be ARP,
//! DHCP, IPv6 neighbour discovery, multicast membership, mDNS, a reply on a connection
//! a phone opened to the gateway, or a GET to the mirror. And the firewall stops what
//! software on the box might try beyond that.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::common::egress::{self, Allowed};
use crate::common::phone::pair;
use crate::common::repository::publish;
use crate::common::{files, free_port, TestMachine, BUSYBOX};
use llamabox_format::provisioning::DeviceIdentity;
use llamabox_speech as speech;
use serde_json::{json, Value};
use xtask::qemu::{Extras, LAN_MAC};
use xtask::serve::Server;

const TEST_IMAGE: &str = "llamabox-test";
const CODE: &str = "31415926";
/// A name the chat tells the box, to look for afterwards.
const NAME: &str = "Quillfeather";
/// Loading the LLM and Whisper on one emulated vCPU; transcribing under TCG.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How QEMU's user-mode network shows the host's loopback to the guest.
const HOST_FROM_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

#[test]
fn the_box_sends_only_link_housekeeping_replies_and_mirror_gets() {
    let mut vm = TestMachine::with_image("egress", TEST_IMAGE);
    // The box's own release, so the check finds it up to date (and fetches all the
    // metadata a check fetches).
    let repo = vm.dir.join("repo");
    publish(&repo, TEST_IMAGE);
    let server = Server::start(&repo);
    let mirror = SocketAddr::new(IpAddr::V4(HOST_FROM_GUEST), server.port());

    xtask::provision::write(
        &vm.disk,
        &DeviceIdentity {
            id: "00e9e55000000001".into(),
            setup_code: CODE.into(),
        },
    )
    .unwrap();
    let capture = vm.dir.join("lan.pcap");
    let https_port = free_port();
    let mut machine = vm.boot_extra(
        &[(https_port, 443)],
        &Extras {
            capture: Some(capture.clone()),
            ..Extras::default()
        },
    );
    let mut agent = vm.agent(&mut machine);
    for service in ["gateway", "inference", "voice"] {
        machine
            .wait_for(
                &format!("llamabox-supervisor: {service}: ready"),
                READY_TIMEOUT,
            )
            .unwrap();
    }
    // The services that parse what phones send run as their own users.
    for (service, user_id) in [("inference", 101), ("voice", 102), ("gateway", 104)] {
        assert_eq!(uid_of(&mut agent, service), user_id, "{service}'s user");
    }

    // The mirror, as an owner configures it (the data partition's override).
    files::write(
        &mut agent,
        "/etc/llamabox/local/update.toml",
        format!("mirrors = [\"http://{mirror}\"]\ncheck-interval-minutes = 0\n").as_bytes(),
    );

    let http = reqwest::blocking::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{https_port}");
    let token = pair(&http, &base, CODE)["token"]
        .as_str()
        .unwrap()
        .to_string();

    let chat: Value = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&json!({
            "messages": [{"role": "user", "content": format!("Hi, I am {NAME}.")}],
            "max_tokens": 4,
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        chat["choices"][0]["message"]["content"].is_string(),
        "{chat}"
    );

    let transcript = transcribe(&http, &base, &token, &vm.dir);
    eprintln!("transcript: {transcript}");
    assert!(transcript["text"].is_string(), "{transcript}");

    // What a stolen box gives away: everything the box keeps is on the data partition
    // (/data), and it holds no conversation and no phone's credential — chats live on
    // the phone, transcripts and prompts are not logged, tokens are kept as hashes.
    let heard = transcript["text"]
        .as_str()
        .unwrap()
        .split(|c: char| !c.is_alphanumeric())
        .max_by_key(|w| w.len())
        .unwrap_or_default()
        .to_string();
    for (what, secret) in [
        ("the chat", NAME),
        ("the transcript", &heard),
        ("the token", &token),
    ] {
        if secret.len() < 4 {
            continue;
        }
        // grep exits 1 when nothing matches, which the agent reports as a failure.
        let found = agent.command(
            &format!("exec {BUSYBOX} grep -r -l -F {secret} /data"),
            Duration::from_secs(120),
        );
        let found = format!("{found:?}");
        assert!(
            found.contains("exit status: 1") && !found.contains("/data/"),
            "{what} ({secret}) is kept on the box: {found}"
        );
    }

    let check = http
        .post(format!("{base}/v1/update/check"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    let status = check.status();
    let check: Value = check.json().unwrap();
    assert_eq!(status, 200, "{check}");
    assert!(
        check["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("up to date")),
        "{check}"
    );

    // The firewall: even root on the box cannot open a connection to anything but
    // the mirror (here: another port of the same host). The SYN is dropped on its way
    // out, so the attempt times out, the host's listener sees nothing, and the
    // capture below holds no frame of it.
    let bystander = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bystander.set_nonblocking(true).unwrap();
    let port = bystander.local_addr().unwrap().port();
    let probe = agent.command(
        &format!("connect {HOST_FROM_GUEST}:{port}"),
        Duration::from_secs(60),
    );
    let refusal = format!("{probe:?}");
    assert!(
        probe.is_err() && refusal.contains("timed out"),
        "a connection from the box to {HOST_FROM_GUEST}:{port}: {refusal}"
    );
    assert!(bystander.accept().is_err(), "the connection arrived");
    // The ruleset is the image's, loaded before the services started.
    let console = machine.console();
    assert!(
        console.contains("firewall loaded"),
        "no firewall at boot: {console}"
    );

    // Let the box's timers run a little more (mDNS announcements, DHCP renewal,
    // scheduled work), then stop the recording.
    std::thread::sleep(Duration::from_secs(20));
    machine.kill();
    let frames = egress::read_frames(&capture);
    let report = egress::classify(&frames, LAN_MAC, mirror);
    eprintln!(
        "{} frames captured; what the box sent:\n{report}",
        frames.len()
    );
    assert!(
        report.violations.is_empty(),
        "the box sent frames outside docs/privacy.md's list:\n{report}"
    );
    // The capture saw the whole scenario, so a missing kind means a broken capture.
    for kind in [
        Allowed::Dhcp,
        Allowed::Mdns,
        Allowed::ReplyToPhone,
        Allowed::MirrorGet,
    ] {
        assert!(
            report.counts.contains_key(&kind),
            "no {kind:?} in the capture:\n{report}"
        );
    }
    assert!(
        report
            .mirror_requests
            .iter()
            .any(|r| r.starts_with("GET /timestamp.json")),
        "{report}"
    );
    drop(server);
}

/// The real user ID of `service`'s main process, from the supervisor's state.
fn uid_of(agent: &mut xtask::qemu::Agent, service: &str) -> u32 {
    let answer = Duration::from_secs(30);
    let lines = agent.command("state", answer).unwrap();
    let state: Value = serde_json::from_str(
        lines
            .iter()
            .rev()
            .find(|l| l.starts_with('{'))
            .expect("a JSON state line"),
    )
    .unwrap();
    let pid = state["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == service))
        .and_then(|s| s["pid"].as_i64())
        .unwrap_or_else(|| panic!("no pid for {service} in {state}"));
    let status = agent
        .command(&format!("cat /proc/{pid}/status"), answer)
        .unwrap();
    status
        .iter()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no Uid in {status:?}"))
}

/// A spoken clip sent as the phone's web app sends a recording: OpenAI's multipart
/// `POST /v1/audio/transcriptions` through the gateway.
fn transcribe(
    http: &reqwest::blocking::Client,
    base: &str,
    token: &str,
    dir: &std::path::Path,
) -> Value {
    // The voice test's question: a clip of a second or less sends Whisper into its
    // temperature fallback, minutes under TCG.
    let clip = speech::speak(speech::QUESTION, "en-us").unwrap();
    let wav = dir.join("question.wav");
    speech::write_wav(&wav, &clip).unwrap();
    let boundary = "llamabox-egress-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"question.wav\"\r\n\
         Content-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::fs::read(&wav).unwrap());
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let response = http
        .post(format!("{base}/v1/audio/transcriptions"))
        .bearer_auth(token)
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The classifier itself, on frames made up for it: what the box may send passes, and
/// each way of leaking is caught (a DNS query, a connection to anyone but the mirror,
/// a POST to the mirror).
#[test]
fn the_egress_classifier_catches_each_kind_of_leak() {
    use etherparse::PacketBuilder;
    const NETWORK_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
    const BOX: [u8; 4] = [10, 0, 2, 15];
    const HOST: [u8; 4] = [10, 0, 2, 2];
    let mirror = SocketAddr::new(IpAddr::V4(HOST_FROM_GUEST), 8000);
    let frame = |from_box: bool, build: &dyn Fn(PacketBuilderStepIp) -> Vec<u8>| {
        let (source, destination) = if from_box {
            (LAN_MAC, NETWORK_MAC)
        } else {
            (NETWORK_MAC, LAN_MAC)
        };
        build(PacketBuilder::ethernet2(source, destination))
    };
    let udp = |to: [u8; 4], from_port: u16, to_port: u16| {
        frame(true, &|b| {
            let b = b.ipv4(BOX, to, 64).udp(from_port, to_port);
            let mut out = Vec::new();
            b.write(&mut out, b"x").unwrap();
            out
        })
    };
    let tcp = |from_box: bool, ports: (u16, u16), seq: u32, syn: bool, payload: &[u8]| {
        frame(from_box, &|b| {
            let (source, destination) = if from_box { (BOX, HOST) } else { (HOST, BOX) };
            let b = b
                .ipv4(source, destination, 64)
                .tcp(ports.0, ports.1, seq, 1000);
            let b = if syn { b.syn() } else { b.ack(1) };
            let mut out = Vec::new();
            b.write(&mut out, payload).unwrap();
            out
        })
    };
    let allowed = vec![
        udp([255, 255, 255, 255], 68, 67),
        udp([224, 0, 0, 251], 5353, 5353),
        // A phone opens a connection to 443; the box answers on it.
        tcp(false, (40000, 443), 0, true, b""),
        tcp(true, (443, 40000), 0, false, b"reply"),
        // The box opens one to the mirror and GETs.
        tcp(true, (50000, 8000), 0, true, b""),
        tcp(
            true,
            (50000, 8000),
            1,
            false,
            b"GET /timestamp.json HTTP/1.1\r\nhost: m\r\n\r\n",
        ),
    ];
    let report = egress::classify(&allowed, LAN_MAC, mirror);
    assert!(report.violations.is_empty(), "{report}");
    assert_eq!(report.mirror_requests, ["GET /timestamp.json HTTP/1.1"]);

    let leaks = [
        ("DNS", vec![udp([10, 0, 2, 3], 40001, 53)]),
        (
            "a datagram to the internet",
            vec![udp([1, 1, 1, 1], 40002, 443)],
        ),
        (
            "a connection to another port of the host",
            vec![tcp(true, (50001, 9999), 0, true, b"")],
        ),
        (
            "a POST to the mirror",
            vec![
                tcp(true, (50002, 8000), 0, true, b""),
                tcp(
                    true,
                    (50002, 8000),
                    1,
                    false,
                    b"POST /x HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi",
                ),
            ],
        ),
        (
            "answers on a connection nobody opened",
            vec![tcp(true, (443, 40003), 5, false, b"data")],
        ),
    ];
    for (what, frames) in leaks {
        let report = egress::classify(&frames, LAN_MAC, mirror);
        assert!(!report.violations.is_empty(), "{what} passed:\n{report}");
    }
}

type PacketBuilderStepIp = etherparse::PacketBuilderStep<etherparse::Ethernet2Header>;
