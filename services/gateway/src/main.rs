//! `llamabox-gateway`: the only process that listens on the network.

mod api;
mod device;
mod error;
mod files;
mod mdns;
mod models;
mod net;
mod pairing;
mod phones;
mod proxy;
mod serve;
mod status;
mod tls;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The box's address on a USB gadget link (docs/usb-link.md); in the certificate so
/// `https://10.55.0.1` names the box.
pub const USB_GADGET_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 55, 0, 1);

#[derive(Parser)]
#[command(
    version,
    about = "The Llama Box gateway: TLS, phone pairing, mDNS, the web app"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the web app and the API (as a supervised service).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where phones, the certificate, the key of phones' stored data and an unprovisioned
    /// box's identity are kept.
    #[arg(long, default_value = "/var/lib/llamabox/gateway")]
    state: PathBuf,
    /// The provisioned identity (id and setup code), copied from the ESP at boot.
    #[arg(long, default_value = llamabox_format::provisioning::RUN_PATH)]
    device_file: PathBuf,
    /// The web app's files.
    #[arg(long, default_value = "/usr/share/llamabox/web")]
    web: PathBuf,
    #[arg(long, default_value = "[::]:443")]
    https: SocketAddr,
    /// Plain HTTP: served on loopback and USB links, redirected to HTTPS elsewhere.
    #[arg(long, default_value = "[::]:80")]
    http: SocketAddr,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    inference: String,
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    voice: String,
    /// Where the pairing limits (failures, the window's end) are kept for this boot: a
    /// gateway restart carries on from them, a reboot (a fresh /run) starts over.
    #[arg(long, default_value = "/run/llamabox/gateway/pairing.json")]
    pairing_limits: PathBuf,
    /// How long pairing stays open after boot (or after a paired phone reopens it).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pairing_window: Duration,
    /// A connection must send a request's headers within this, when new and between
    /// requests (idle keep-alive); else it is closed.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Do not advertise over mDNS (host tests).
    #[arg(long)]
    no_mdns: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .without_time() // the supervisor's log has the time
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(serve(args))),
    };
    if let Err(e) = result {
        eprintln!("llamabox-gateway: error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let device = device::Device::load_or_create(&args.device_file, &args.state)?;
    let name = device.name();
    let identity = tls::load_or_create(&args.state.join("tls"), &name)?;
    let phones = phones::Phones::open(args.state.join("phones.json"))?;
    let app = Arc::new(api::App {
        device_name: name.clone(),
        fingerprint: identity.fingerprint.clone(),
        phone_storage_key: device::phone_storage_key(&args.state)?,
        pairing: Mutex::new(pairing::Pairing::new(
            device.code,
            args.pairing_window,
            Some(args.pairing_limits.clone()),
        )),
        phones: Mutex::new(phones),
        upstreams: proxy::Upstreams::new(&args.inference, &args.voice),
        revoked: tokio::sync::broadcast::channel(64).0,
    });
    let router = api::router(app, &args.web);
    let https = tokio::net::TcpListener::bind(args.https)
        .await
        .with_context(|| format!("listening on {}", args.https))?;
    let http = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("listening on {}", args.http))?;
    let https_port = https.local_addr()?.port();
    let _mdns = if args.no_mdns {
        None
    } else {
        Some(mdns::advertise(&name, https_port, &identity.fingerprint)?)
    };
    tracing::info!(
        "{name}: https on {}, http on {} (loopback and USB only); certificate sha256 {}; pairing open for {}",
        https.local_addr()?,
        http.local_addr()?,
        identity.fingerprint,
        humantime::format_duration(args.pairing_window)
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    // One budget for both ports: a peer's connections count wherever they arrive.
    let limits = serve::Limits::default();
    let tls = serve::serve(
        https,
        Some(tokio_rustls::TlsAcceptor::from(identity.config)),
        router.clone(),
        limits.clone(),
        args.header_timeout,
    );
    let plain = serve::serve(http, None, router, limits, args.header_timeout);
    tokio::select! {
        () = tls => Ok(()),
        () = plain => Ok(()),
        () = terminated() => Ok(()),
    }
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut sigterm) => {
            sigterm.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
