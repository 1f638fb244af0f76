//! `llamabox-update`: the update client's command line. On the box it finds the board,
//! the booted slot, the partitions and the repository itself; every part can also be
//! named on the command line (host tests, development against file-backed slots).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use llamabox_format::Slot;
use llamabox_update::fetch::Fetcher;
use llamabox_update::install::Layout;
use llamabox_update::state::Store;
use llamabox_update::{device, repository::Check, Applied, Updater};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Repository base URL; repeat for mirrors, tried in order [default: the `mirrors`
    /// of /etc/llamabox/local/update.toml, else /etc/llamabox/update/config.toml].
    #[arg(long = "repo")]
    repos: Vec<String>,
    /// Directory for the client's state (trusted root, versions seen, last result).
    #[arg(long, default_value = device::STATE_DIR)]
    state: PathBuf,
    /// The root metadata the image trusts.
    #[arg(long, default_value = device::IMAGE_ROOT)]
    image_root: PathBuf,
    /// This box's board [default: /etc/llamabox/board].
    #[arg(long)]
    board: Option<String>,
    /// The running image's version [default: the booted slot's].
    #[arg(long)]
    installed: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify the repository's metadata and say whether an update is available.
    Check,
    /// Install an available update into the inactive slot; it boots next.
    Apply {
        #[command(flatten)]
        layout: LayoutArgs,
    },
    /// Settle the last install after a boot and print the last result.
    Status,
    /// Run the update service (D-Bus org.llamabox.Update1, scheduled checks).
    Serve,
    /// Run the release check of the health gate: on a slot on trial, the model must
    /// answer a golden prompt and Whisper transcribe a golden clip before the slot is
    /// blessed (READY=1); a wrong answer exits with the reason (docs/updates.md).
    CheckRelease {
        #[arg(long, default_value = "/usr/share/llamabox/release-check/check.toml")]
        config: PathBuf,
        /// Check even when the slot is not on trial (diagnosis).
        #[arg(long)]
        always: bool,
    },
    /// Models as signed updates: the catalog, and the models on the data partition.
    Models {
        /// Where pulled models live.
        #[arg(long, default_value = llamabox_format::paths::MODEL_STORE)]
        store: PathBuf,
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the models the repository's signed catalog offers.
    Catalog,
    /// List the installed models.
    List,
    /// Download a model from the signed catalog, verifying every chunk (resumes).
    Pull { name: String },
    /// Remove an installed model.
    Delete { name: String },
}

/// Slots and ESP as files (all or none) [default: the box's partitions].
#[derive(clap::Args)]
struct LayoutArgs {
    #[arg(long, requires_all = ["slot_b", "esp", "active"])]
    slot_a: Option<PathBuf>,
    #[arg(long)]
    slot_b: Option<PathBuf>,
    /// The mounted ESP.
    #[arg(long)]
    esp: Option<PathBuf>,
    /// The running slot: a or b.
    #[arg(long, value_parser = parse_slot)]
    active: Option<Slot>,
    #[arg(long, default_value_t = 3)]
    tries: u32,
}

fn parse_slot(s: &str) -> Result<Slot, String> {
    Slot::parse(s).ok_or_else(|| format!("`{s}` is not a slot (a or b)"))
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("llamabox-update: error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match &cli.command {
        Command::Serve => llamabox_update::service::run(),
        Command::CheckRelease { config, always } => {
            llamabox_update::release_check::serve(config, *always)
        }
        _ => {}
    }
    let repos = if cli.repos.is_empty() {
        device::config()?.mirrors
    } else {
        cli.repos
    };
    let installed = match cli.installed {
        Some(v) => v,
        None => device::booted()?.1,
    };
    let board = match cli.board {
        Some(b) => b,
        None => device::board()?,
    };
    let updater = Updater {
        fetcher: Fetcher::new(&repos),
        store: Store::new(&cli.state),
        image_root: cli.image_root,
        board,
        installed,
        image_time: device::image_time()?,
    };
    let need_repo = || {
        if repos.is_empty() {
            Err(format!(
                "no repository configured: pass --repo URL or set `mirrors` in {}",
                device::CONFIG_FILES[0]
            ))
        } else {
            Ok(())
        }
    };
    match cli.command {
        Command::Check => {
            need_repo()?;
            match updater.check().map_err(|e| e.to_string())? {
                Check::UpToDate { version } => println!("up to date ({})", describe(version)),
                Check::Available { target } => println!("available: {}", target.version),
            }
        }
        Command::Apply { layout } => {
            need_repo()?;
            let (layout, _esp) = match layout {
                LayoutArgs {
                    slot_a: Some(slot_a),
                    slot_b: Some(slot_b),
                    esp: Some(esp),
                    active: Some(active),
                    tries,
                } => (
                    Layout {
                        slot_a,
                        slot_b,
                        esp,
                        active,
                        tries,
                    },
                    None,
                ),
                _ => {
                    let (layout, guard) = device::layout()?;
                    (layout, Some(guard))
                }
            };
            let mut last_percent = u64::MAX;
            let mut progress = |done: u64, total: u64| {
                let percent = done * 100 / total.max(1);
                if percent / 10 != last_percent / 10 {
                    eprintln!("llamabox-update: {percent}% ({done} of {total} bytes)");
                    last_percent = percent;
                }
            };
            match updater.apply(&layout, &mut progress).map_err(|e| e.to_string())? {
                Applied::UpToDate { version } => println!("up to date ({})", describe(version)),
                Applied::Installed { version, report } => println!(
                    "installed {version} as {}: {} bytes downloaded, {} copied from this box, {} already in place, of {}",
                    report.entry, report.downloaded, report.copied, report.in_place, report.total
                ),
            }
        }
        Command::Serve | Command::CheckRelease { .. } => unreachable!("handled above"),
        Command::Models { store, command } => {
            let store = llamabox_update::models::ModelStore::new(store);
            let err = |e: llamabox_update::Error| e.to_string();
            match command {
                ModelsCommand::Catalog => {
                    need_repo()?;
                    let catalog = updater.catalog().map_err(err)?;
                    for m in &catalog.models {
                        println!(
                            "{:<24} {:<8} {:>10}  {} {}, {} parameters",
                            m.name,
                            m.kind.to_string(),
                            llamabox_update::mib(m.length),
                            m.format,
                            m.quantization,
                            m.parameters
                        );
                    }
                }
                ModelsCommand::List => {
                    for m in store.installed().map_err(err)? {
                        println!(
                            "{:<24} {:<8} {:>10}  {}",
                            m.entry.name,
                            m.entry.kind.to_string(),
                            llamabox_update::mib(m.entry.length),
                            m.path.display()
                        );
                    }
                }
                ModelsCommand::Pull { name } => {
                    need_repo()?;
                    let mut last = u64::MAX;
                    let mut progress = |done: u64, total: u64| {
                        let percent = done * 100 / total.max(1);
                        if percent / 10 != last / 10 {
                            eprintln!("llamabox-update: {name}: {percent}%");
                            last = percent;
                        }
                    };
                    let cancel = std::sync::atomic::AtomicBool::new(false);
                    let pulled = updater
                        .pull_model(&store, &name, &mut progress, &cancel)
                        .map_err(err)?;
                    if pulled.already {
                        println!("{name} is already installed");
                    } else {
                        println!(
                            "pulled {name}: {} downloaded, {} kept from an earlier pull",
                            llamabox_update::mib(pulled.downloaded),
                            llamabox_update::mib(pulled.resumed)
                        );
                    }
                }
                ModelsCommand::Delete { name } => {
                    store.delete(&name).map_err(err)?;
                    println!("deleted {name}");
                }
            }
        }
        Command::Status => {
            if let Ok((slot, version)) = device::booted() {
                let blessed = device::booted_slot_blessed(slot)?;
                updater
                    .reconcile(slot, &version, blessed, device::refusal().as_ref())
                    .map_err(|e| e.to_string())?;
                println!(
                    "running {version} from slot {slot}{}",
                    if blessed { "" } else { " (on trial)" }
                );
            }
            let state = updater.store.load().map_err(|e| e.to_string())?;
            if let Some(pending) = &state.pending {
                println!(
                    "pending: {} in slot {}, boots next",
                    pending.version, pending.slot
                );
            }
            println!(
                "last result: {}",
                state.last_result.as_deref().unwrap_or("none")
            );
        }
    }
    Ok(())
}

fn describe(version: Option<String>) -> String {
    version.unwrap_or_else(|| "the repository has no release for this board".into())
}
