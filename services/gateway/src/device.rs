//! Who this box is: its id, mDNS name and setup code.
//!
//! A provisioned box gets them from the flashing tool (`llamabox_format::provisioning`:
//! written onto the ESP, copied to `/run` by stage 1; the code is on its label). A box
//! that was never provisioned (a development image) makes its own on first boot and
//! keeps them on the data partition, so its code stays the same across reboots.

use anyhow::{Context, Result};
use llamabox_format::provisioning::DeviceIdentity;
use llamabox_pairing::{phone_storage, SetupCode};
use rand_core::{OsRng, RngCore};
use std::path::Path;

pub struct Device {
    /// 16 hex digits, random per device.
    pub id: String,
    pub code: SetupCode,
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
        let own = state.join("device.json");
        if own.exists() {
            return Device::read(&own);
        }
        let mut id = [0u8; 8];
        OsRng.fill_bytes(&mut id);
        let device = Device {
            id: hex::encode(id),
            code: SetupCode::generate(&mut OsRng),
        };
        let identity = DeviceIdentity {
            id: device.id.clone(),
            setup_code: device.code.digits().to_string(),
        };
        crate::files::write_private(&own, &identity.to_json())?;
        // The code itself stays out of the log: it is what pairs a phone.
        tracing::warn!(
            "this box was not provisioned: made a setup code on first boot; it is in {} (root only)",
            own.display()
        );
        Ok(device)
    }

    fn read(path: &Path) -> Result<Device> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let identity =
            DeviceIdentity::parse(&bytes).with_context(|| format!("{}", path.display()))?;
        let code = SetupCode::parse(&identity.setup_code)
            .with_context(|| format!("{}: setup-code", path.display()))?;
        Ok(Device {
            id: identity.id,
            code,
        })
    }
}

/// The key that seals what the web app keeps on phones (`llamabox_pairing::phone_storage`),
/// made on first use and kept with the gateway's state. A damaged key file is replaced,
/// with a warning: phones' sealed data is then unreadable, and they pair again.
pub fn phone_storage_key(state: &Path) -> Result<[u8; phone_storage::KEY_LEN]> {
    let path = state.join("phone-storage.key");
    match std::fs::read(&path) {
        Ok(bytes) => match <[u8; phone_storage::KEY_LEN]>::try_from(bytes.as_slice()) {
            Ok(key) => return Ok(key),
            Err(_) => tracing::warn!(
                "{} is {} bytes, not {}: making a new key (phones will pair again)",
                path.display(),
                bytes.len(),
                phone_storage::KEY_LEN
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut key = [0u8; phone_storage::KEY_LEN];
    OsRng.fill_bytes(&mut key);
    crate::files::write_private(&path, &key)?;
    Ok(key)
}
