//! `cargo xtask run`: the image booted in QEMU on this terminal, as a device that keeps
//! its disk (data partition, boot counters, identity) from one run to the next.

use std::process::Command;

use anyhow::Result;
use llamabox_format::provisioning::DeviceIdentity;

use crate::build::{self, BuildOptions};
use crate::config;
use crate::project::Project;
use crate::{provision, qemu};

/// The size of the card `cargo xtask run` boots from.
const RUN_DISK_BYTES: u64 = 8 << 30;

/// Boots `image` for `board_name` with the serial console on this terminal.
pub fn run_in_qemu(project: &Project, board_name: &str, image: &str, fresh: bool) -> Result<()> {
    let output = build::build(
        project,
        &BuildOptions {
            image: image.into(),
            ..BuildOptions::for_board(board_name)
        },
    )?;
    let board = config::board::load(&project.boards_dir(), board_name)?;
    let dir = project
        .build_dir()
        .join("run")
        .join(format!("{image}-{board_name}"));
    std::fs::create_dir_all(&dir)?;
    let (disk, vars, stamp, identity_file) = (
        dir.join("disk.img"),
        dir.join("efivars.fd"),
        dir.join("image.sha256"),
        dir.join("device.json"),
    );
    // The run keeps its own disk state (data partition, boot counters, identity) across
    // runs of the same image; a new image or --fresh starts over as a new device.
    let same_image =
        std::fs::read_to_string(&stamp).ok().as_deref() == Some(output.image_sha256.as_str());
    let identity = std::fs::read(&identity_file)
        .ok()
        .and_then(|bytes| DeviceIdentity::parse(&bytes).ok());
    let identity = match identity {
        Some(identity) if !fresh && same_image && disk.exists() && vars.exists() => identity,
        _ => {
            // A sparse copy, not a qcow2 overlay: provisioning writes into its ESP.
            let _ = std::fs::remove_file(&disk);
            llamabox_image::tool::run(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&output.image)
                    .arg(&disk),
            )?;
            // Like a card larger than the image: the box gives its data partition the
            // rest on first boot. Sparse, so it costs the host only what is written.
            let card = std::fs::OpenOptions::new().write(true).open(&disk)?;
            if card.metadata()?.len() < RUN_DISK_BYTES {
                card.set_len(RUN_DISK_BYTES)?;
            }
            let identity = provision::new_identity();
            provision::write(&disk, &identity)?;
            std::fs::write(&identity_file, identity.to_json())?;
            qemu::fresh_vars(&board, &vars)?;
            std::fs::write(&stamp, &output.image_sha256)?;
            identity
        }
    };
    eprintln!("{}", provision::label(&identity));
    eprintln!(
        "==> booting {} in QEMU (TCG: expect ~20 s to stage 2); ctrl-a x quits",
        board.name
    );
    for (host, guest) in qemu::PORT_FORWARDS {
        eprintln!("    device port {guest} is at 127.0.0.1:{host}");
    }
    qemu::run_interactive(&board, &disk, &vars)
}
