//! Growing a GUID partition table's last partition to the end of its disk: an image is
//! built for the smallest card, and on first boot stage 1 gives the data partition the
//! rest of whatever card it was written to. The builder writes tables
//! (`llamabox_image::gpt`); this is the one edit a device makes to one.
//!
//! The backup table is written first and the primary header last, so a power cut in
//! between leaves the old primary table valid and the next boot grows it again.

use std::io::{Read, Seek, SeekFrom, Write};

pub const SECTOR: u64 = 512;
/// Partition ends are aligned to this many sectors (1 MiB).
const ALIGN: u64 = 2048;

/// What [`grow_to_disk_end`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub old_bytes: u64,
    pub new_bytes: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn entry_label(entry: &[u8]) -> String {
    let units: Vec<u16> = entry[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// The header with its CRC computed over its first `len` bytes.
fn seal(header: &mut [u8], len: usize) {
    header[16..20].fill(0);
    let crc = crc32fast::hash(&header[..len]);
    put_u32(header, 16, crc);
}

fn read_at(disk: &mut (impl Read + Seek), offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    disk.seek(SeekFrom::Start(offset))?;
    disk.read_exact(buf)
}

fn write_at(disk: &mut (impl Write + Seek), offset: u64, buf: &[u8]) -> std::io::Result<()> {
    disk.seek(SeekFrom::Start(offset))?;
    disk.write_all(buf)
}

/// Grows the partition labelled `label` to the end of a disk of `disk_bytes`, if it is
/// the table's last partition and the disk has at least 1 MiB more after it. `None`
/// when there is nothing to grow. Refuses a table whose checksums do not match.
pub fn grow_to_disk_end<D: Read + Write + Seek>(
    disk: &mut D,
    disk_bytes: u64,
    label: &str,
) -> Result<Option<Grown>, String> {
    let io = |e: std::io::Error| format!("the partition table: {e}");
    let mut header = vec![0u8; SECTOR as usize];
    read_at(disk, SECTOR, &mut header).map_err(io)?;
    if &header[0..8] != b"EFI PART" {
        return Err("no GPT header at sector 1".into());
    }
    let header_len = u32_at(&header, 12) as usize;
    if !(92..=SECTOR as usize).contains(&header_len) {
        return Err(format!("GPT header size {header_len} is implausible"));
    }
    let stored = u32_at(&header, 16);
    let mut check = header.clone();
    seal(&mut check, header_len);
    if u32_at(&check, 16) != stored {
        return Err("the primary GPT header's checksum does not match".into());
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80) as usize;
    let size = u32_at(&header, 84) as usize;
    if count == 0 || count > 1024 || !(128..=4096).contains(&size) {
        return Err(format!("implausible GPT entry table ({count} x {size})"));
    }
    let mut entries = vec![0u8; count * size];
    read_at(disk, entries_lba * SECTOR, &mut entries).map_err(io)?;
    if crc32fast::hash(&entries) != u32_at(&header, 88) {
        return Err("the GPT entries' checksum does not match".into());
    }

    let used = entries
        .chunks_exact(size)
        .enumerate()
        .filter(|(_, e)| e[0..16].iter().any(|b| *b != 0));
    let last = used.clone().max_by_key(|(_, e)| u64_at(e, 40));
    let Some((i, _)) = used.clone().find(|(_, e)| entry_label(e) == label) else {
        return Err(format!("no partition labelled `{label}`"));
    };
    if last.map(|(j, _)| j) != Some(i) {
        return Ok(None); // another partition lies after it
    }
    let at = i * size;
    let (first, end) = (u64_at(&entries, at + 32), u64_at(&entries, at + 40));

    let disk_last = disk_bytes / SECTOR - 1;
    let entries_sectors = (count * size) as u64 / SECTOR;
    let last_usable = disk_last - entries_sectors - 1;
    let new_end = (last_usable + 1) / ALIGN * ALIGN - 1;
    if new_end < end + ALIGN {
        return Ok(None);
    }
    put_u64(&mut entries, at + 40, new_end);
    let entries_crc = crc32fast::hash(&entries);

    put_u64(&mut header, 32, disk_last);
    put_u64(&mut header, 48, last_usable);
    put_u32(&mut header, 88, entries_crc);
    let mut backup = header.clone();
    seal(&mut header, header_len);
    let backup_entries = disk_last - entries_sectors;
    put_u64(&mut backup, 24, disk_last);
    put_u64(&mut backup, 32, 1);
    put_u64(&mut backup, 72, backup_entries);
    seal(&mut backup, header_len);

    write_at(disk, backup_entries * SECTOR, &entries).map_err(io)?;
    write_at(disk, disk_last * SECTOR, &backup).map_err(io)?;
    disk.flush().map_err(io)?;
    write_at(disk, entries_lba * SECTOR, &entries).map_err(io)?;
    // The protective MBR covers the whole disk, as far as 32 bits reach.
    write_at(
        disk,
        446 + 12,
        &(disk_last.min(u64::from(u32::MAX)) as u32).to_le_bytes(),
    )
    .map_err(io)?;
    write_at(disk, SECTOR, &header).map_err(io)?;
    disk.flush().map_err(io)?;
    Ok(Some(Grown {
        old_bytes: (end + 1 - first) * SECTOR,
        new_bytes: (new_end + 1 - first) * SECTOR,
    }))
}
