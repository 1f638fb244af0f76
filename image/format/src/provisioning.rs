//! A box's own identity: its id and pairing setup code.
//!
//! The flashing tool (`cargo xtask run`, `cargo xtask provision`) writes it onto the
//! ESP, outside the signed slots, because it differs per device while the image is the
//! same for all. Stage 1 copies it to `/run` (readable by root only); the gateway reads
//! it there. A box without one (a development image) makes its own on first boot.

use serde::{Deserialize, Serialize};

/// Where the flashing tool puts it, relative to the ESP's root.
pub const ESP_PATH: &str = "llamabox/device.json";
/// Where stage 1 leaves it for the gateway, the one service that reads it: in the
/// gateway's runtime directory, which the supervisor hands to the gateway's user.
pub const RUN_PATH: &str = "/run/llamabox/gateway/device.json";
/// Largest file accepted (the ESP is writable by anyone with the disk).
pub const MAX_SIZE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeviceIdentity {
    /// 16 lowercase hex digits, random per device; `llamabox-<first 4>.local`.
    pub id: String,
    /// The 8-digit pairing code printed on the device's label (checked for weak codes
    /// by the pairing crate).
    pub setup_code: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("device identity is larger than {MAX_SIZE} bytes")]
    TooLarge,
    #[error("device identity is not valid JSON: {0}")]
    Json(String),
    #[error("device id must be 16 hex digits")]
    Id,
    #[error("setup code must be 8 digits")]
    Code,
}

impl DeviceIdentity {
    pub fn parse(bytes: &[u8]) -> Result<DeviceIdentity, IdentityError> {
        if bytes.len() > MAX_SIZE {
            return Err(IdentityError::TooLarge);
        }
        let identity: DeviceIdentity =
            serde_json::from_slice(bytes).map_err(|e| IdentityError::Json(e.to_string()))?;
        if identity.id.len() != 16
            || !identity
                .id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(IdentityError::Id);
        }
        if identity.setup_code.len() != 8
            || !identity.setup_code.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(IdentityError::Code);
        }
        Ok(identity)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("plain strings serialize");
        json.push(b'\n');
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_fields() {
        let id = DeviceIdentity {
            id: "0123456789abcdef".into(),
            setup_code: "27182818".into(),
        };
        assert_eq!(DeviceIdentity::parse(&id.to_json()), Ok(id));
        let bad = |json: &str| DeviceIdentity::parse(json.as_bytes()).unwrap_err();
        assert_eq!(
            bad(r#"{"id": "xyz", "setup-code": "27182818"}"#),
            IdentityError::Id
        );
        assert_eq!(
            bad(r#"{"id": "0123456789abcdef", "setup-code": "2718"}"#),
            IdentityError::Code
        );
        assert!(matches!(bad("{"), IdentityError::Json(_)));
        assert_eq!(
            DeviceIdentity::parse(&[b' '; 5000]),
            Err(IdentityError::TooLarge)
        );
    }
}
