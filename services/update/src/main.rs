//! `llamabox-update`: the update client's command line. On the box the update service
//! drives the same library; this binary is also how the host tests and a developer
//! run it against a repository and file-backed slots.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use llamabox_format::Slot;
use llamabox_update::fetch::Fetcher;
use llamabox_update::install::Layout;
use llamabox_update::state::Store;
use llamabox_update::{repository::Check, Applied, Updater};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Repository base URL; repeat for mirrors, tried in order.
    #[arg(long = "repo", required = true)]
    repos: Vec<String>,
    /// Directory for the client's state (trusted root, versions seen).
    #[arg(long, default_value = "/var/lib/llamabox/update")]
    state: PathBuf,
    /// The root metadata the image trusts.
    #[arg(long, default_value = "/etc/llamabox/update/root.json")]
    image_root: PathBuf,
    /// This box's board.
    #[arg(long)]
    board: String,
    /// The running image's version.
    #[arg(long)]
    installed: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify the repository's metadata and say whether an update is available.
    Check,
    /// Install an available update into the inactive slot.
    Apply {
        #[arg(long)]
        slot_a: PathBuf,
        #[arg(long)]
        slot_b: PathBuf,
        /// The mounted ESP.
        #[arg(long)]
        esp: PathBuf,
        /// The running slot: a or b.
        #[arg(long, value_parser = parse_slot)]
        active: Slot,
        #[arg(long, default_value_t = 3)]
        tries: u32,
    },
}

fn parse_slot(s: &str) -> Result<Slot, String> {
    Slot::parse(s).ok_or_else(|| format!("`{s}` is not a slot (a or b)"))
}

fn main() {
    let cli = Cli::parse();
    let updater = Updater {
        fetcher: Fetcher::new(&cli.repos),
        store: Store::new(&cli.state),
        image_root: cli.image_root,
        board: cli.board,
        installed: cli.installed,
    };
    let result = match cli.command {
        Command::Check => updater.check().map(|check| match check {
            Check::UpToDate { version } => {
                println!(
                    "up to date ({})",
                    version.as_deref().unwrap_or("no release for this board")
                )
            }
            Check::Available { target } => println!("available: {}", target.version),
        }),
        Command::Apply {
            slot_a,
            slot_b,
            esp,
            active,
            tries,
        } => {
            let layout = Layout {
                slot_a,
                slot_b,
                esp,
                active,
                tries,
            };
            updater.apply(&layout, &mut |_, _| {}).map(|applied| match applied {
                Applied::UpToDate { version } => {
                    println!("up to date ({})", version.as_deref().unwrap_or("no release for this board"))
                }
                Applied::Installed { version, report } => println!(
                    "installed {version} as {}: {} bytes downloaded, {} copied, {} already in place, of {}",
                    report.entry, report.downloaded, report.copied, report.in_place, report.total
                ),
            })
        }
    };
    if let Err(e) = result {
        eprintln!("llamabox-update: error: {e}");
        std::process::exit(1);
    }
}
