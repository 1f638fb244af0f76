//! Boards that cannot boot here: what their images hold is checked instead (LX2160A),
//! and a board whose vendor files are missing stops at once (Jetson Orin).
//!
//! Tests named `arm64_*` cross-build the arm64 device code; `cargo xtask test` runs
//! them in the arm64 suite (`--board qemu-aarch64`), not in the x86_64 one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use xtask::build::{self, BuildOptions};
use xtask::project::Project;

fn options(board: &str) -> BuildOptions {
    BuildOptions {
        board: board.into(),
        image: build::DEFAULT_IMAGE.into(),
        out_dir: None,
        cache_dir: None,
        inputs: BTreeMap::new(),
    }
}

#[test]
fn jetson_orin_without_its_bsp_stops_at_once_naming_the_file() {
    let project = Project::locate();
    let board = xtask::config::board::load(&project.boards_dir(), "jetson-orin").unwrap();
    let input = &board.inputs[0];
    assert!(
        !xtask::inputs::inputs_dir(&project)
            .join(&input.file)
            .exists(),
        "this test needs the BSP to be absent from the downloads folder"
    );
    let started = Instant::now();
    let err = build::build(&project, &options("jetson-orin"))
        .map(|_| ())
        .unwrap_err();
    let elapsed = started.elapsed();
    let message = format!("{err:#}");
    assert!(
        elapsed < Duration::from_secs(1),
        "took {elapsed:?}: {message}"
    );
    for needed in [
        input.file.as_str(),
        input.sha256.as_str(),
        input.url.as_str(),
        "--input jetson-linux=PATH",
    ] {
        assert!(message.contains(needed), "`{needed}` missing in: {message}");
    }
}

#[test]
fn a_wrong_file_for_an_input_is_refused_by_its_sha256() {
    let project = Project::locate();
    let dir = project.build_dir().join("tests").join("wrong-input");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("Jetson_Linux_R36.4.3_aarch64.tbz2");
    std::fs::write(&fake, b"not NVIDIA's BSP").unwrap();
    let mut opts = options("jetson-orin");
    opts.inputs.insert("jetson-linux".into(), fake.clone());
    let message = format!(
        "{:#}",
        build::build(&project, &opts).map(|_| ()).unwrap_err()
    );
    assert!(message.contains("has SHA-256"), "{message}");
    assert!(message.contains("not the file it needs"), "{message}");

    opts.inputs.clear();
    opts.inputs.insert("kernel".into(), fake);
    let message = format!(
        "{:#}",
        build::build(&project, &opts).map(|_| ()).unwrap_err()
    );
    assert!(
        message.contains("has no input `kernel` (its inputs: jetson-linux)"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn board_options_are_checked() {
    let project = Project::locate();
    let dir = project.boards_dir();
    let honeycomb = xtask::config::board::load(&dir, "lx2160a").unwrap();
    assert_eq!(honeycomb.name, "lx2160a-honeycomb");
    let clearfog = xtask::config::board::load(&dir, "lx2160a:clearfog-cx").unwrap();
    assert_eq!(clearfog.name, "lx2160a-clearfog-cx");
    assert_eq!(honeycomb.cpu_baseline, "armv8-a+crc+crypto");
    let qemu = xtask::config::board::load(&dir, "qemu-aarch64").unwrap();
    assert_eq!(qemu.cpu_baseline, honeycomb.cpu_baseline);
    let orin = xtask::config::board::load(&dir, "jetson-orin").unwrap();
    assert_eq!(orin.cpu_baseline, "armv8.2-a+dotprod+fp16");

    let err = xtask::config::board::load(&dir, "lx2160a:clearfog")
        .map(|_| ())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("did you mean `clearfog-cx`"),
        "{err:#}"
    );
    let err = xtask::config::board::load(&dir, "qemu-aarch64:honeycomb")
        .map(|_| ())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("has no device tree options"),
        "{err:#}"
    );
}

/// The named sections of a PE file: name → bytes.
fn pe_sections(pe: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let u16_at = |at: usize| u16::from_le_bytes(pe[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(pe[at..at + 4].try_into().unwrap()) as usize;
    let header = u32_at(0x3c);
    assert_eq!(&pe[header..header + 4], b"PE\0\0");
    let count = u16_at(header + 6);
    let optional_size = u16_at(header + 20);
    let table = header + 24 + optional_size;
    (0..count)
        .map(|i| {
            let at = table + i * 40;
            let name = String::from_utf8_lossy(&pe[at..at + 8])
                .trim_end_matches('\0')
                .to_string();
            let (virtual_size, raw_size, raw_at) =
                (u32_at(at + 8), u32_at(at + 16), u32_at(at + 20));
            let len = virtual_size.min(raw_size);
            (name, pe[raw_at..raw_at + len].to_vec())
        })
        .collect()
}

fn pe_machine(pe: &[u8]) -> u16 {
    let header = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
    u16::from_le_bytes(pe[header + 4..header + 6].try_into().unwrap())
}

/// The device tree Debian's kernel package ships for `name`, unpacked in the build cache.
fn debian_dtb(name: &str) -> PathBuf {
    let pattern = Project::locate().default_cache_dir().join(format!(
        "deb/*/usr/lib/linux-image-*-arm64/freescale/{name}"
    ));
    let found: Vec<PathBuf> = glob::glob(&pattern.to_string_lossy())
        .unwrap()
        .flatten()
        .collect();
    // Entries are per build tool binary; each holds the same unpacked package.
    found
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("nothing matches {pattern:?}"))
}

#[test]
fn arm64_lx2160a_images_carry_the_boards_kernel_device_tree_and_drivers() {
    let project = Project::locate();
    for (option, dtb, compatible) in [
        (
            "honeycomb",
            "fsl-lx2160a-honeycomb.dtb",
            "solidrun,honeycomb",
        ),
        (
            "clearfog-cx",
            "fsl-lx2160a-clearfog-cx.dtb",
            "solidrun,clearfog-cx",
        ),
    ] {
        let board = format!("lx2160a:{option}");
        let out = {
            let _building = crate::common::BUILD_LOCK
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            build::build(&project, &options(&board)).unwrap()
        };
        assert!(out.image.exists() && out.bmap.exists() && out.sha256_file.exists());
        let table = llamabox_image::gpt::read(&out.image).unwrap();
        let labels: Vec<&str> = table.iter().map(|(l, _, _)| l.as_str()).collect();
        assert!(
            labels.contains(&"esp") && labels.contains(&"llamabox-a"),
            "{labels:?}"
        );

        let parts = out.release.unwrap();
        for uki in [&parts.uki_a, &parts.uki_b] {
            let pe = std::fs::read(uki).unwrap();
            assert_eq!(pe_machine(&pe), 0xaa64, "the UKI's stub is arm64");
            let sections = pe_sections(&pe);
            let kernel = &sections[".linux"];
            assert_eq!(&kernel[..2], b"MZ");
            assert_eq!(pe_machine(kernel), 0xaa64, "the kernel is an arm64 Image");
            assert_eq!(
                sections[".dtb"],
                std::fs::read(debian_dtb(dtb)).unwrap(),
                "{board}: the UKI's device tree is Debian's {dtb}"
            );
            let dtb_text = String::from_utf8_lossy(&sections[".dtb"]).into_owned();
            assert!(dtb_text.contains(compatible), "{board}: {compatible}");
            let cmdline = String::from_utf8_lossy(&sections[".cmdline"]).into_owned();
            for part in [
                "console=ttyAMA0,115200",
                "earlycon=pl011,mmio32,0x21c0000",
                "pci=pcie_bus_perf",
            ] {
                assert!(cmdline.contains(part), "{board}: {cmdline}");
            }
            let initrd = String::from_utf8_lossy(&sections[".initrd"]).into_owned();
            let load_order = initrd
                .split("lib/modules/load-order\0")
                .nth(1)
                .expect("the initramfs has a module load order");
            for module in [
                "fsl-mc-dpio.ko",
                "fsl-dpaa2-eth.ko",
                "pcs-lynx.ko",
                "sfp.ko",
                "nvme.ko",
                "nvme-core.ko",
                "sdhci-of-esdhc.ko",
                "dm-verity.ko",
            ] {
                assert!(
                    load_order.contains(&format!("{module}\n")),
                    "{board}: {module} is not in the module closure"
                );
            }
        }
    }
}
