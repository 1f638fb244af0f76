//! Provisioning: giving one device its own identity (id and pairing setup code) and
//! printing the label that goes on it.
//!
//! The image is the same for every box, signed and read-only; the identity is the one
//! thing that differs, so it goes onto the ESP after flashing
//! (`llamabox_format::provisioning`, docs/pairing.md).

use std::path::Path;

use anyhow::{Context, Result};
use llamabox_format::provisioning::{DeviceIdentity, ESP_PATH};
use llamabox_pairing::SetupCode;
use rand_core::{OsRng, RngCore};

/// A fresh identity: a random id and a random setup code that is not a weak one.
pub fn new_identity() -> DeviceIdentity {
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    DeviceIdentity {
        id: hex::encode(id),
        setup_code: SetupCode::generate(&mut OsRng).digits().to_string(),
    }
}

/// Writes `identity` into the ESP of `disk` (a disk image or a flashed block device).
pub fn write(disk: &Path, identity: &DeviceIdentity) -> Result<()> {
    let table = llamabox_image::gpt::read(disk)
        .with_context(|| format!("{}: reading the partition table", disk.display()))?;
    let (_, offset, size) = table
        .into_iter()
        .find(|(label, _, _)| label == "esp")
        .with_context(|| format!("{}: no partition labelled `esp`", disk.display()))?;
    llamabox_image::esp::write_file(disk, offset, size, ESP_PATH, &identity.to_json())
        .with_context(|| format!("{}: writing {ESP_PATH} on the ESP", disk.display()))
}

/// The device's name on the network (`<name>.local`), as the gateway derives it.
pub fn device_name(identity: &DeviceIdentity) -> String {
    format!("llamabox-{}", &identity.id[..4])
}

/// What goes on the device's label: its name, its setup code, and a QR code that opens
/// the web app's pairing screen over HTTPS. The code is printed for the user to type,
/// never put in the link: whoever answers `<name>.local` first on a LAN would be handed
/// it (docs/pairing.md).
pub fn label(identity: &DeviceIdentity) -> String {
    let name = device_name(identity);
    let code = &identity.setup_code;
    let url = pairing_link(&name);
    let qr = qrcode::QrCode::new(url.as_bytes())
        .map(|qr| {
            qr.render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build()
        })
        .unwrap_or_default();
    format!(
        "{qr}\n    {name}    setup code {}-{}\n    {url}\n",
        &code[..4],
        &code[4..]
    )
}

/// The label's QR link: the box's HTTPS origin and the pairing screen, no secret.
pub fn pairing_link(name: &str) -> String {
    format!("https://{name}.local/#pair")
}

/// `cargo xtask provision`: a new identity written onto `disk`; prints its label.
pub fn command(disk: &Path) -> Result<()> {
    let identity = new_identity();
    write(disk, &identity)?;
    println!("{}", label(&identity));
    println!(
        "provisioned {}: keep the setup code with the box (it is on no other copy)",
        disk.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_prints_the_code_but_keeps_it_out_of_its_link() {
        let identity = new_identity();
        let code = identity.setup_code.clone();
        let label = label(&identity);
        let link = pairing_link(&device_name(&identity));
        assert!(link.starts_with("https://"), "{link}");
        assert!(!link.contains(&code), "{link}");
        assert!(
            label.contains(&format!("{}-{}", &code[..4], &code[4..])),
            "{label}"
        );
        assert!(!label.contains(&code), "{label}");
    }
}
