//! GUID partition table for the whole disk: protective MBR, primary and backup headers.
//! Written by hand because every GUID must be derived from the build's inputs.

use sha2::{Digest, Sha256};

pub const SECTOR: u64 = 512;
const ENTRY_SIZE: usize = 128;
const ENTRY_COUNT: usize = 128;
const ENTRIES_SECTORS: u64 = (ENTRY_SIZE * ENTRY_COUNT) as u64 / SECTOR;

pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const TYPE_ROOT_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
pub const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

#[derive(Debug, Clone)]
pub struct Partition {
    pub label: String,
    pub type_guid: &'static str,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// The on-disk (mixed-endian) bytes of a textual GUID.
fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let raw = hex::decode(hex).expect("valid GUID literal");
    let mut b = [0u8; 16];
    b.copy_from_slice(&raw);
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

fn derived_guid(seed: &str, what: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    b.copy_from_slice(&Sha256::digest(format!("gpt:{seed}:{what}"))[..16]);
    b[7] = (b[7] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// First LBA usable for partitions, and the disk size needed for `content_bytes` of
/// partitions plus the backup table.
pub const FIRST_USABLE_LBA: u64 = 2 + ENTRIES_SECTORS;

pub fn disk_size_for(last_partition_lba: u64) -> u64 {
    (last_partition_lba + 1 + ENTRIES_SECTORS + 1) * SECTOR
}

/// Returns (offset, bytes) pairs to write: MBR, primary header + entries, backup entries + header.
pub fn tables(disk_size: u64, partitions: &[Partition], seed: &str) -> Vec<(u64, Vec<u8>)> {
    let last_lba = disk_size / SECTOR - 1;
    let backup_entries_lba = last_lba - ENTRIES_SECTORS;

    let mut entries = vec![0u8; ENTRY_SIZE * ENTRY_COUNT];
    for (i, p) in partitions.iter().enumerate() {
        let e = &mut entries[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
        e[0..16].copy_from_slice(&guid_bytes(p.type_guid));
        e[16..32].copy_from_slice(&derived_guid(seed, &p.label));
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        for (j, unit) in p.label.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);

    let header = |current: u64, backup: u64, entries_lba: u64| {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&FIRST_USABLE_LBA.to_le_bytes());
        h[48..56].copy_from_slice(&(backup_entries_lba - 1).to_le_bytes());
        h[56..72].copy_from_slice(&derived_guid(seed, "disk"));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRY_COUNT as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h.resize(SECTOR as usize, 0);
        h
    };

    let mut mbr = vec![0u8; SECTOR as usize];
    let record = &mut mbr[446..462];
    record[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    record[4] = 0xEE; // GPT protective
    record[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    record[8..12].copy_from_slice(&1u32.to_le_bytes());
    record[12..16].copy_from_slice(&(last_lba.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    vec![
        (0, mbr),
        (SECTOR, header(1, last_lba, 2)),
        (2 * SECTOR, entries.clone()),
        (backup_entries_lba * SECTOR, entries),
        (last_lba * SECTOR, header(last_lba, 1, backup_entries_lba)),
    ]
}

/// Reads the partition table of a disk image: (label, byte offset, byte size) per
/// partition, in table order. For tools and tests that work on built images.
pub fn read(image: &std::path::Path) -> anyhow::Result<Vec<(String, u64, u64)>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(image)?;
    let mut header = [0u8; 92];
    file.seek(SeekFrom::Start(SECTOR))?;
    file.read_exact(&mut header)?;
    if &header[0..8] != b"EFI PART" {
        anyhow::bail!("{}: no GPT header", image.display());
    }
    let entries_lba = u64::from_le_bytes(header[72..80].try_into()?);
    let count = u32::from_le_bytes(header[80..84].try_into()?) as usize;
    let size = u32::from_le_bytes(header[84..88].try_into()?) as usize;
    if count > 1024 || !(128..=4096).contains(&size) {
        anyhow::bail!(
            "{}: implausible GPT entry table ({count} x {size})",
            image.display()
        );
    }
    let mut entries = vec![0u8; count * size];
    file.seek(SeekFrom::Start(entries_lba * SECTOR))?;
    file.read_exact(&mut entries)?;
    let mut out = Vec::new();
    for e in entries.chunks_exact(size) {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first = u64::from_le_bytes(e[32..40].try_into()?);
        let last = u64::from_le_bytes(e[40..48].try_into()?);
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        out.push((
            String::from_utf16_lossy(&units),
            first * SECTOR,
            (last + 1 - first) * SECTOR,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_mixed_endian() {
        let b = guid_bytes(TYPE_ESP);
        assert_eq!(&b[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(&b[8..], &[0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);
    }

    #[test]
    fn headers_carry_valid_crcs() {
        let parts = [Partition {
            label: "esp".into(),
            type_guid: TYPE_ESP,
            first_lba: 2048,
            last_lba: 4095,
        }];
        let size = disk_size_for(4095);
        let t = tables(size, &parts, "seed");
        for (_, header) in [&t[1], &t[4]] {
            let mut h = header[..92].to_vec();
            let stored = u32::from_le_bytes(h[16..20].try_into().unwrap());
            h[16..20].fill(0);
            assert_eq!(crc32fast::hash(&h), stored);
        }
        assert_eq!(t[4].0, size - SECTOR);
    }

    /// The device's edit (stage 1 growing the data partition onto a larger card) of a
    /// table the builder wrote: both headers valid, the data partition to the end.
    #[test]
    fn the_device_grows_the_last_partition_of_a_built_table() {
        let parts = [
            Partition {
                label: "esp".into(),
                type_guid: TYPE_ESP,
                first_lba: 2048,
                last_lba: 4095,
            },
            Partition {
                label: "llamabox-data".into(),
                type_guid: TYPE_LINUX_DATA,
                first_lba: 4096,
                last_lba: 6143,
            },
        ];
        let small = disk_size_for(6143);
        let mut disk = vec![0u8; small as usize];
        for (offset, bytes) in tables(small, &parts, "seed") {
            disk[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
        }
        let grow = |disk: &mut Vec<u8>, label: &str| {
            let len = disk.len() as u64;
            llamabox_format::gpt::grow_to_disk_end(&mut std::io::Cursor::new(disk), len, label)
        };
        // Written to the card it was built for: nothing to do.
        assert_eq!(grow(&mut disk, "llamabox-data"), Ok(None));
        // Only the last partition grows.
        disk.resize(64 << 20, 0);
        assert_eq!(grow(&mut disk, "esp"), Ok(None));
        let grown = grow(&mut disk, "llamabox-data").unwrap().unwrap();
        assert_eq!(grown.old_bytes, 1 << 20);
        assert!(grown.new_bytes > 60 << 20, "{grown:?}");

        let path = std::env::temp_dir().join(format!("gpt-grow-{}.img", std::process::id()));
        std::fs::write(&path, &disk).unwrap();
        let table = read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            table[1],
            ("llamabox-data".into(), 4096 * SECTOR, grown.new_bytes)
        );
        let backup = &disk[disk.len() - SECTOR as usize..];
        assert_eq!(&backup[0..8], b"EFI PART");
        let mut h = backup[..92].to_vec();
        let stored = u32::from_le_bytes(h[16..20].try_into().unwrap());
        h[16..20].fill(0);
        assert_eq!(crc32fast::hash(&h), stored, "backup header checksum");
        // Growing again finds nothing to do; a corrupt table is refused.
        assert_eq!(grow(&mut disk, "llamabox-data"), Ok(None));
        disk[SECTOR as usize + 50] ^= 1;
        assert!(grow(&mut disk, "llamabox-data")
            .unwrap_err()
            .contains("checksum"));
    }
}
