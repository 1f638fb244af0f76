//! Who this box is: its id, mDNS name and setup code.
//!
//! A provisioned box has them in `device.toml`, written by the flashing tool onto the
//! ESP and copied to `/run/llamabox/` at boot (the code printed on its label). A box
//! that was never provisioned (a development image) makes its own on first boot and
//! keeps them on the data partition, so the code stays the same across reboots.

use anyhow::{bail, Context, Result};
use llamabox_pairing::SetupCode;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub struct Device {
    /// 16 hex digits, random per device.
    pub id: String,
    pub code: SetupCode,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DeviceFile {
    id: String,
    setup_code: String,
}

impl Device {
    /// `llamabox-1a2b`: the mDNS host name (`llamabox-1a2b.local`) and the name
    /// phones show. Four hex digits tell boxes on one network apart.
    pub fn name(&self) -> String {
        format!("llamabox-{}", &self.id[..4])
    }

    /// The provisioned identity if there is one, else this box's own (made on first use).
    pub fn load_or_create(provisioned: &Path, state: &Path) -> Result<Device> {
        if provisioned.exists() {
            return Device::read(provisioned);
        }
        let own = state.join("device.toml");
        if own.exists() {
            return Device::read(&own);
        }
        let mut id = [0u8; 8];
        OsRng.fill_bytes(&mut id);
        let device = Device {
            id: hex::encode(id),
            code: SetupCode::generate(&mut OsRng),
        };
        device.write(&own)?;
        tracing::warn!(
            "this box was not provisioned: made a setup code on first boot ({}); it is {}",
            own.display(),
            device.code.display()
        );
        Ok(device)
    }

    fn read(path: &Path) -> Result<Device> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: DeviceFile =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if file.id.len() != 16 || !file.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{}: id must be 16 hex digits", path.display());
        }
        let code = SetupCode::parse(&file.setup_code)
            .with_context(|| format!("{}: setup-code", path.display()))?;
        Ok(Device {
            id: file.id.to_ascii_lowercase(),
            code,
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(&DeviceFile {
            id: self.id.clone(),
            setup_code: self.code.digits().to_string(),
        })?;
        crate::files::write_private(path, text.as_bytes())
    }
}
