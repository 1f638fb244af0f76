//! `cargo xtask flash` on the built image: onto a file and onto a loop device (a real
//! block device), verified and provisioned; refused when the target is mounted, when
//! nobody confirmed, and when the image does not match its bmap.

use std::path::{Path, PathBuf};
use std::process::Command;

use llamabox_format::provisioning::{DeviceIdentity, ESP_PATH};
use xtask::flash::{flash, FlashOptions};
use xtask::project::Project;

fn scratch(name: &str) -> PathBuf {
    let dir = Project::locate()
        .build_dir()
        .join("tests")
        .join("flash")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A loop device over `file`, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        Loop(run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The identity provisioning wrote onto `disk`'s ESP.
fn identity_on(disk: &Path) -> DeviceIdentity {
    let table = llamabox_image::gpt::read(disk).unwrap();
    let (_, offset, size) = table.into_iter().find(|(l, _, _)| l == "esp").unwrap();
    let bytes = llamabox_image::esp::read_file(disk, offset, size, ESP_PATH).unwrap();
    DeviceIdentity::parse(&bytes).unwrap()
}

/// The image's mapped blocks read back equal from `disk`.
fn assert_same_mapped_blocks(image: &Path, disk: &Path) {
    let bmap_text = std::fs::read_to_string(format!("{}.bmap", image.display())).unwrap();
    let map = llamabox_image::bmap::parse(&bmap_text).unwrap();
    let (a, b) = (std::fs::read(image).unwrap(), std::fs::read(disk).unwrap());
    assert!(b.len() as u64 >= map.image_size);
    let esp = llamabox_image::gpt::read(image)
        .unwrap()
        .into_iter()
        .find(|(l, _, _)| l == "esp")
        .unwrap();
    for (start, end, _) in &map.ranges {
        let from = (start * map.block_size) as usize;
        let to = (((end + 1) * map.block_size) as usize).min(a.len());
        // The ESP changed after verification: provisioning wrote the identity into it.
        if (from as u64) >= esp.1 && (from as u64) < esp.1 + esp.2 {
            continue;
        }
        assert!(a[from..to] == b[from..to], "blocks {start}-{end} differ");
    }
}

#[test]
fn flashes_a_file_and_a_block_device_and_provisions_them() {
    let image = crate::common::built_image(xtask::build::DEFAULT_IMAGE);
    let dir = scratch("targets");

    let file_target = dir.join("card.img");
    let flashed = flash(&FlashOptions {
        image: &image,
        target: &file_target,
        yes: true,
    })
    .unwrap();
    assert_same_mapped_blocks(&image, &file_target);
    assert_eq!(identity_on(&file_target), flashed.identity);

    // A block device: a loop device over a card-sized file with stale data on it.
    let card = dir.join("loop-card.img");
    let size = std::fs::metadata(&image).unwrap().len() + (64 << 20);
    std::fs::write(&card, b"").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&card).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let device = Loop::attach(&card);
    let flashed = flash(&FlashOptions {
        image: &image,
        target: Path::new(&device.0),
        yes: true,
    })
    .unwrap();
    assert_same_mapped_blocks(&image, Path::new(&device.0));
    assert_eq!(identity_on(Path::new(&device.0)), flashed.identity);
    drop(device);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_mounted_targets_unconfirmed_writes_and_damaged_images() {
    let image = crate::common::built_image(xtask::build::DEFAULT_IMAGE);
    let dir = scratch("refusals");

    // A mounted disk: an ext4 filesystem on a loop device, mounted.
    let disk = dir.join("mounted.img");
    let size = std::fs::metadata(&image).unwrap().len();
    std::fs::File::create(&disk).unwrap().set_len(size).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk));
    let device = Loop::attach(&disk);
    let mount_point = dir.join("mnt");
    std::fs::create_dir_all(&mount_point).unwrap();
    run(Command::new("mount").arg(&device.0).arg(&mount_point));
    std::fs::write(mount_point.join("precious"), b"keep me").unwrap();
    for target in [Path::new(&device.0), disk.as_path()] {
        let err = refusal(&image, target, true);
        assert!(err.contains("is mounted"), "{err}");
    }
    assert_eq!(
        std::fs::read(mount_point.join("precious")).unwrap(),
        b"keep me"
    );
    run(Command::new("umount").arg(&mount_point));
    drop(device);

    // The disk this machine runs from, when / is on a block device we can name.
    if let Some(root) = root_block_device() {
        let message = refusal(&image, &root, true);
        assert!(
            message.contains("runs from") || message.contains("is mounted"),
            "{message}"
        );
    }

    // No terminal to ask and no --yes: nothing is written.
    let unconfirmed = dir.join("unconfirmed.img");
    std::fs::write(&unconfirmed, b"old contents").unwrap();
    let err = refusal(&image, &unconfirmed, false);
    assert!(err.contains("without confirmation"), "{err}");
    assert_eq!(std::fs::read(&unconfirmed).unwrap(), b"old contents");

    // A damaged image (one flipped bit in slot A) is refused before anything is written.
    let damaged = dir.join("damaged.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&image)
        .arg(&damaged));
    std::fs::copy(
        format!("{}.bmap", image.display()),
        format!("{}.bmap", damaged.display()),
    )
    .unwrap();
    let (_, slot_a, _) = llamabox_image::gpt::read(&damaged)
        .unwrap()
        .into_iter()
        .find(|(l, _, _)| l == "llamabox-a")
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&damaged)
            .unwrap();
        let mut byte = [0u8];
        f.read_at(&mut byte, slot_a + 4096).unwrap();
        f.write_at(&[byte[0] ^ 1], slot_a + 4096).unwrap();
    }
    let target = dir.join("from-damaged.img");
    let message = refusal(&damaged, &target, true);
    assert!(
        message.contains("is damaged") && message.contains("do not match"),
        "{message}"
    );
    assert!(
        !target.exists(),
        "nothing may be written from a damaged image"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The error (with its causes) of a flash that must be refused.
fn refusal(image: &Path, target: &Path, yes: bool) -> String {
    let err = flash(&FlashOptions { image, target, yes }).unwrap_err();
    format!("{err:#}")
}

/// The block device `/` is mounted from, if it is one (not an overlay).
fn root_block_device() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = info
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))?;
    let source = line.split(" - ").nth(1)?.split_whitespace().nth(1)?;
    let path = PathBuf::from(source);
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(&path)
        .ok()
        .filter(|m| m.file_type().is_block_device())
        .map(|_| path)
}
