//! Boot tests: the built image in QEMU (TCG), each scenario on its own sparse copy of
//! the image and its own firmware variable store, asserting on the serial console.
//!
//! `cargo xtask test` builds the image first and passes its path in
//! `LLAMABOX_TEST_IMAGE`; run alone, these tests build it themselves.

use crate::common::{TestMachine, BOOT_TIMEOUT};
use llamabox_format::SecretKey;

#[test]
fn boots_to_stage_2_from_slot_a() {
    let mut vm = TestMachine::new("boots-slot-a");
    let mut machine = vm.boot();
    let console = machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
    assert!(
        console.contains("llamabox-stage1: booting slot a"),
        "{console}"
    );
    assert!(
        console.contains("llamabox-init: stage 2 reached: slot a"),
        "{console}"
    );
    assert!(
        console.contains("slot a: manifest signed by a trusted key"),
        "{console}"
    );
    assert!(
        console.contains("healthy: every critical service ready"),
        "{console}"
    );
}

#[test]
fn corrupt_slot_a_fails_verification_and_slot_b_boots() {
    let mut vm = TestMachine::new("corrupt-slot-a");
    let (_, manifest) = vm.manifest("llamabox-a");
    let data_size = manifest.unverified_payload().unwrap().data_size;
    // One flipped bit in the middle of slot A's root filesystem.
    let (slot_a, _) = vm.partition("llamabox-a");
    let target = slot_a + (data_size / 2 / 4096) * 4096 + 100;
    let byte = vm.read_at(target, 1)[0];
    vm.write_at(target, &[byte ^ 0x01]);

    let mut machine = vm.boot();
    let console = machine
        .wait_for("slot b blessed", BOOT_TIMEOUT * 2)
        .unwrap();
    assert!(
        console.contains("slot verification FAILED: slot a: root filesystem block"),
        "{console}"
    );
    assert!(
        console.contains("does not match its dm-verity hash"),
        "{console}"
    );
    assert!(console.contains("marked slot a bad"), "{console}");
    assert!(!console.contains("stage 2 reached: slot a"), "{console}");
    assert!(
        console.contains("llamabox-init: stage 2 reached: slot b"),
        "{console}"
    );
}

#[test]
fn root_hash_signed_by_an_untrusted_key_is_refused() {
    let mut vm = TestMachine::new("untrusted-key");
    let (at, manifest) = vm.manifest("llamabox-a");
    // The same, genuine root hash, signed by a key the initramfs does not trust.
    let impostor = SecretKey::generate(&mut rand_core::OsRng);
    let block = manifest
        .unverified_payload()
        .unwrap()
        .sign(&impostor)
        .unwrap();
    vm.write_at(at, &block);

    let mut machine = vm.boot();
    let console = machine
        .wait_for("slot b blessed", BOOT_TIMEOUT * 2)
        .unwrap();
    let refusal = format!(
        "manifest is signed by key {}, which is not a trusted key",
        impostor.public().id()
    );
    assert!(console.contains(&refusal), "{console}");
    assert!(!console.contains("stage 2 reached: slot a"), "{console}");
    assert!(console.contains("stage 2 reached: slot b"), "{console}");
}

#[test]
fn data_partition_is_created_on_first_boot_and_survives_a_reboot() {
    let mut vm = TestMachine::new("data-partition");
    // Written to a card larger than the image: the data partition takes the rest.
    let (offset, built) = vm.partition("llamabox-data");
    let card = vm.grow_disk(1 << 30);
    let mut first = vm.boot();
    let console = first.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
    // To the last whole MiB before the backup table.
    let grown = (card - (17 << 10)) / (1 << 20) * (1 << 20) - offset;
    assert!(
        console.contains(&format!(
            "first boot: the data partition grew from {} MiB to {} MiB",
            built >> 20,
            grown >> 20
        )),
        "{console}"
    );
    let formatting = console
        .lines()
        .find(|l| l.contains("first boot: formatting the data partition"))
        .unwrap_or_else(|| panic!("{console}"));
    assert!(
        formatting.contains(&format!("({} MiB)", grown >> 20)),
        "{formatting}"
    );
    assert!(console.contains("boot number 1 recorded"), "{console}");
    assert!(
        console.contains("root filesystem is read-only"),
        "{console}"
    );
    first.kill(); // pull the plug: the boot record was made durable before services started

    let mut second = vm.boot();
    let console = second
        .wait_for("slot a already blessed", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        !console.contains("formatting the data partition"),
        "{console}"
    );
    assert!(console.contains("boot number 2 recorded"), "{console}");
    assert!(
        console.contains("root filesystem is read-only"),
        "{console}"
    );
    assert!(
        console.contains("boot entry llamabox-2-a.efi (blessed)"),
        "{console}"
    );
    assert!(!console.contains("data partition grew"), "{console}");
    assert_eq!(vm.partition("llamabox-data"), (offset, grown));
}
