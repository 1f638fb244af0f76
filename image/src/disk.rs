//! The whole disk: GPT with `esp`, `llamabox-a`, `llamabox-b` and `llamabox-data`.
//!
//! Slots hold EROFS + hash tree from their start and the signed manifest in their last
//! 4 KiB. The data partition is left empty: stage 1 formats it on first boot.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::gpt::{self, Partition, SECTOR};
use crate::rootfs::SlotImage;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub esp_mib: u64,
    pub slot_mib: u64,
    pub data_mib: u64,
}

pub struct DiskInputs<'a> {
    pub esp_image: &'a Path,
    pub slot_a: &'a SlotImage,
    /// `None` leaves slot B empty (no manifest): stage 1 then refuses to boot it.
    pub slot_b: Option<&'a SlotImage>,
    pub root_type_guid: &'static str,
    pub layout: Layout,
    pub seed: &'a str,
}

/// Byte range of each partition, by label.
pub struct Written {
    pub partitions: Vec<(String, u64, u64)>,
}

pub fn assemble(out: &Path, inputs: &DiskInputs) -> Result<Written> {
    let l = inputs.layout;
    let sizes = [
        ("esp", gpt::TYPE_ESP, l.esp_mib),
        ("llamabox-a", inputs.root_type_guid, l.slot_mib),
        ("llamabox-b", inputs.root_type_guid, l.slot_mib),
        ("llamabox-data", gpt::TYPE_LINUX_DATA, l.data_mib),
    ];
    let mut partitions = Vec::new();
    let mut next = MIB; // 1 MiB alignment leaves room for the primary table
    for (label, type_guid, mib) in sizes {
        let first = next / SECTOR;
        let last = (next + mib * MIB) / SECTOR - 1;
        partitions.push(Partition {
            label: label.to_string(),
            type_guid,
            first_lba: first,
            last_lba: last,
        });
        next += mib * MIB;
    }
    let disk_size = gpt::disk_size_for(partitions.last().unwrap().last_lba).next_multiple_of(MIB);

    let mut file = File::create(out).with_context(|| out.display().to_string())?;
    file.set_len(disk_size)?;
    for (offset, bytes) in gpt::tables(disk_size, &partitions, inputs.seed) {
        write_at(&mut file, offset, &bytes)?;
    }

    let range = |p: &Partition| {
        (
            p.first_lba * SECTOR,
            (p.last_lba + 1 - p.first_lba) * SECTOR,
        )
    };
    let (esp_off, esp_len) = range(&partitions[0]);
    if std::fs::metadata(inputs.esp_image)?.len() > esp_len {
        bail!(
            "the ESP image is larger than the board's esp partition ({} MiB)",
            l.esp_mib
        );
    }
    copy_at(&mut file, esp_off, inputs.esp_image)?;
    for (slot, partition) in [
        (Some(inputs.slot_a), &partitions[1]),
        (inputs.slot_b, &partitions[2]),
    ] {
        let Some(slot) = slot else { continue };
        let (off, len) = range(partition);
        let need = slot.required_size()?;
        if need > len {
            bail!(
                "the root filesystem needs {} MiB but the board's slot partitions are {} MiB: raise `partitions.slot-mib` in board.toml",
                need.div_ceil(MIB),
                l.slot_mib
            );
        }
        copy_at(&mut file, off, &slot.erofs)?;
        copy_at(&mut file, off + slot.manifest.hash_offset, &slot.hash_tree)?;
        write_at(
            &mut file,
            off + len - slot.manifest_block.len() as u64,
            &slot.manifest_block,
        )?;
    }
    file.sync_all()?;
    Ok(Written {
        partitions: partitions
            .iter()
            .map(|p| {
                let (o, s) = range(p);
                (p.label.clone(), o, s)
            })
            .collect(),
    })
}

fn write_at(file: &mut File, offset: u64, bytes: &[u8]) -> Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)?;
    Ok(())
}

fn copy_at(file: &mut File, offset: u64, source: &Path) -> Result<()> {
    let mut input = File::open(source).with_context(|| source.display().to_string())?;
    file.seek(SeekFrom::Start(offset))?;
    std::io::copy(&mut input, file)?;
    Ok(())
}
