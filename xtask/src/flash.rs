//! `cargo xtask flash`: writes a built image onto a card or disk the way bmaptool does
//! (only the blocks the `.bmap` maps), reads them back against the bmap's SHA-256s,
//! and provisions the result (its own identity and setup code).
//!
//! Guards, in order: the image's bytes match its bmap before anything is written; the
//! target is not mounted (nor any of its partitions), is not the disk this machine
//! runs from, and is large enough; a person confirms unless `--yes`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llamabox_format::provisioning::DeviceIdentity;
use llamabox_image::bmap::{self, Bmap};
use sha2::{Digest, Sha256};

pub struct FlashOptions<'a> {
    pub image: &'a Path,
    pub target: &'a Path,
    /// Skip the confirmation.
    pub yes: bool,
}

/// What a flash did.
#[derive(Debug)]
pub struct Flashed {
    pub written_bytes: u64,
    pub identity: DeviceIdentity,
}

pub fn flash(options: &FlashOptions) -> Result<Flashed> {
    let (image, target) = (options.image, options.target);
    let bmap_path = PathBuf::from(format!("{}.bmap", image.display()));
    let map =
        bmap::parse(&std::fs::read_to_string(&bmap_path).with_context(|| {
            format!("reading {} (built beside the image)", bmap_path.display())
        })?)
        .with_context(|| bmap_path.display().to_string())?;
    if std::fs::metadata(image)?.len() != map.image_size {
        bail!(
            "{} is not the image {} describes (sizes differ)",
            image.display(),
            bmap_path.display()
        );
    }

    let target_kind = check_target(target, map.image_size)?;
    eprintln!("==> checking {} against its bmap", image.display());
    check_ranges(image, &map).with_context(|| format!("{} is damaged", image.display()))?;
    confirm(options, &target_kind)?;

    eprintln!(
        "==> writing {:.1} MiB of {:.1} MiB to {}",
        map.mapped_bytes() as f64 / 1048576.0,
        map.image_size as f64 / 1048576.0,
        target.display()
    );
    write_ranges(image, target, &map, target_kind.is_file)?;
    eprintln!("==> verifying what was written");
    drop_cached_pages(target)?;
    check_ranges(target, &map).with_context(|| {
        format!(
            "{} does not read back what was written: a failing card or disk?",
            target.display()
        )
    })?;

    let identity = crate::provision::new_identity();
    crate::provision::write(target, &identity)?;
    let file = OpenOptions::new().write(true).open(target)?;
    file.sync_all()?;
    Ok(Flashed {
        written_bytes: map.mapped_bytes(),
        identity,
    })
}

struct TargetKind {
    is_file: bool,
    description: String,
}

/// Refuses targets that must not be written; describes the one that may.
fn check_target(target: &Path, image_size: u64) -> Result<TargetKind> {
    let meta = match std::fs::metadata(target) {
        Ok(meta) => meta,
        // A new image file is a fine target (for tests and for copying images around).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(TargetKind {
                is_file: true,
                description: format!("a new file {}", target.display()),
            })
        }
        Err(e) => return Err(e).with_context(|| target.display().to_string()),
    };
    if meta.is_dir() {
        bail!("{} is a directory, not a disk", target.display());
    }
    if meta.file_type().is_block_device() {
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        let disk = BlockDevice::from_numbers(major, minor)?;
        let root = root_disk()?;
        if root.as_ref() == Some(&disk.name) {
            bail!(
                "{} is the disk this machine runs from (/ is on it): refusing to write it",
                target.display()
            );
        }
        let mounted = mounted_numbers()?;
        for (name, numbers) in disk.with_partitions()? {
            if mounted.contains(&numbers) {
                bail!(
                    "{} is mounted ({name}): unmount it first, then flash",
                    target.display()
                );
            }
        }
        let size = disk.size_bytes()?;
        if size < image_size {
            bail!(
                "{} holds {size} bytes; the image needs {image_size}",
                target.display()
            );
        }
        return Ok(TargetKind {
            is_file: false,
            description: format!(
                "{} ({:.1} GB{})",
                target.display(),
                size as f64 / 1e9,
                disk.model().map(|m| format!(", {m}")).unwrap_or_default()
            ),
        });
    }
    if meta.is_file() {
        // An image file may be the backing file of a loop device that is mounted.
        let canonical = target.canonicalize()?;
        let mounted = mounted_numbers()?;
        for loop_dev in loop_devices_backed_by(&canonical)? {
            for (name, numbers) in loop_dev.with_partitions()? {
                if mounted.contains(&numbers) {
                    bail!(
                        "{} is mounted through {name}: unmount it first, then flash",
                        target.display()
                    );
                }
            }
        }
        return Ok(TargetKind {
            is_file: true,
            description: format!("the file {}", target.display()),
        });
    }
    bail!("{} is neither a block device nor a file", target.display())
}

fn confirm(options: &FlashOptions, kind: &TargetKind) -> Result<()> {
    if options.yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "refusing to overwrite {} without confirmation: run in a terminal or pass --yes",
            kind.description
        );
    }
    eprint!(
        "Everything on {} will be replaced by {}.\nType `yes` to go on: ",
        kind.description,
        options.image.display()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed: nothing was written");
    }
    Ok(())
}

/// Reads every mapped range of `path` and compares it with the bmap's SHA-256.
fn check_ranges(path: &Path, map: &Bmap) -> Result<()> {
    let mut file = File::open(path)?;
    let mut buf = Vec::new();
    for (start, end, sum) in &map.ranges {
        let (offset, len) = range_bytes(map, *start, *end);
        buf.resize(len as usize, 0);
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)
            .with_context(|| format!("reading blocks {start}-{end}"))?;
        if hex::encode(Sha256::digest(&buf)) != *sum {
            bail!("blocks {start}-{end} do not match their SHA-256 in the bmap");
        }
    }
    Ok(())
}

fn write_ranges(image: &Path, target: &Path, map: &Bmap, is_file: bool) -> Result<()> {
    let mut source = File::open(image)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create(is_file)
        .truncate(false)
        .open(target)
        .with_context(|| format!("opening {} for writing", target.display()))?;
    if is_file {
        // Unmapped blocks of a file read as zeros only if nothing was there before.
        out.set_len(0)?;
        out.set_len(map.image_size)?;
    }
    let progress = indicatif::ProgressBar::new(map.mapped_bytes());
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "    {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut buf = vec![0u8; 1 << 20];
    for (start, end, _) in &map.ranges {
        let (offset, len) = range_bytes(map, *start, *end);
        source.seek(SeekFrom::Start(offset))?;
        out.seek(SeekFrom::Start(offset))?;
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            source.read_exact(&mut buf[..n])?;
            out.write_all(&buf[..n])
                .with_context(|| format!("writing {}", target.display()))?;
            left -= n as u64;
            progress.inc(n as u64);
        }
    }
    out.sync_all()
        .with_context(|| format!("flushing {}", target.display()))?;
    progress.finish_and_clear();
    Ok(())
}

/// Drops the target's pages from the page cache, so verification reads the medium.
fn drop_cached_pages(target: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(target)?;
    // SAFETY: a valid open descriptor; the advice only affects caching.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

fn range_bytes(map: &Bmap, start: u64, end: u64) -> (u64, u64) {
    let offset = start * map.block_size;
    let stop = ((end + 1) * map.block_size).min(map.image_size);
    (offset, stop - offset)
}

/// A whole disk (or loop device) in sysfs.
struct BlockDevice {
    name: String,
}

impl BlockDevice {
    /// The whole disk that device `major:minor` is, or is a partition of.
    fn from_numbers(major: u32, minor: u32) -> Result<BlockDevice> {
        let link = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let path = link
            .canonicalize()
            .with_context(|| format!("{}: no such block device in sysfs", link.display()))?;
        let path = if path.join("partition").exists() {
            path.parent()
                .context("partition without a disk")?
                .to_path_buf()
        } else {
            path
        };
        Ok(BlockDevice {
            name: path
                .file_name()
                .context("block device without a name")?
                .to_string_lossy()
                .into_owned(),
        })
    }

    fn sysfs(&self) -> PathBuf {
        Path::new("/sys/class/block").join(&self.name)
    }

    /// The disk and its partitions: (name, (major, minor)).
    fn with_partitions(&self) -> Result<Vec<(String, (u32, u32))>> {
        let mut out = vec![(self.name.clone(), read_numbers(&self.sysfs().join("dev"))?)];
        for entry in std::fs::read_dir(self.sysfs())?.flatten() {
            if entry.path().join("partition").exists() {
                out.push((
                    entry.file_name().to_string_lossy().into_owned(),
                    read_numbers(&entry.path().join("dev"))?,
                ));
            }
        }
        Ok(out)
    }

    fn size_bytes(&self) -> Result<u64> {
        let sectors: u64 = std::fs::read_to_string(self.sysfs().join("size"))?
            .trim()
            .parse()?;
        Ok(sectors * 512)
    }

    fn model(&self) -> Option<String> {
        std::fs::read_to_string(self.sysfs().join("device/model"))
            .ok()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
    }
}

fn read_numbers(dev_file: &Path) -> Result<(u32, u32)> {
    let text = std::fs::read_to_string(dev_file)?;
    let (major, minor) = text
        .trim()
        .split_once(':')
        .with_context(|| format!("{}: not major:minor", dev_file.display()))?;
    Ok((major.parse()?, minor.parse()?))
}

/// Device numbers of every mounted filesystem and active swap area.
fn mounted_numbers() -> Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string("/proc/self/mountinfo")?.lines() {
        if let Some(numbers) = line.split_whitespace().nth(2) {
            if let Some((a, b)) = numbers.split_once(':') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    out.push((a, b));
                }
            }
        }
    }
    for line in std::fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
    {
        if let Some(dev) = line.split_whitespace().next() {
            if let Ok(meta) = std::fs::metadata(dev) {
                if meta.file_type().is_block_device() {
                    out.push((libc::major(meta.rdev()), libc::minor(meta.rdev())));
                }
            }
        }
    }
    Ok(out)
}

/// The whole disk `/` is on, when it is on a block device.
fn root_disk() -> Result<Option<String>> {
    for line in std::fs::read_to_string("/proc/self/mountinfo")?.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(4) == Some(&"/") {
            if let Some((a, b)) = fields[2].split_once(':') {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    if a != 0 {
                        return Ok(BlockDevice::from_numbers(a, b).ok().map(|d| d.name));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// Loop devices whose backing file is `file`.
fn loop_devices_backed_by(file: &Path) -> Result<Vec<BlockDevice>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let backing = entry.path().join("loop/backing_file");
        if let Ok(text) = std::fs::read_to_string(&backing) {
            if Path::new(text.trim()) == file {
                out.push(BlockDevice {
                    name: entry.file_name().to_string_lossy().into_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// `cargo xtask flash`: `image` (or the board's image, built if needed) onto `disk`;
/// prints the box's label (setup code) and what was written.
pub fn command(
    project: &crate::project::Project,
    disk: &Path,
    image: Option<PathBuf>,
    board: String,
    yes: bool,
) -> Result<()> {
    let image = match image {
        Some(image) => image,
        None => crate::build::build(project, &crate::build::BuildOptions::for_board(board))?.image,
    };
    let flashed = flash(&FlashOptions {
        image: &image,
        target: disk,
        yes,
    })?;
    println!("{}", crate::provision::label(&flashed.identity));
    println!(
        "flashed {} onto {} ({:.1} MiB written and verified); keep the setup code with the box",
        image.display(),
        disk.display(),
        flashed.written_bytes as f64 / 1048576.0
    );
    Ok(())
}
