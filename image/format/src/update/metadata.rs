//! Repository metadata in the spirit of TUF: four roles, each signed by a threshold of
//! its keys as listed in the current root.
//!
//! A file is `{"signed": {...}, "signatures": [{"keyid": "...", "sig": "..."}]}`. The
//! signatures cover a domain-separation prefix and the canonical form of `signed`
//! (object keys sorted, no whitespace), so pretty-printing or reordering a file does not
//! break it, and the canonical form does not depend on how serde_json was built.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keys::{PublicKey, SecretKey};

/// Upper bound for a metadata file whose length is not pinned by another file
/// (root and timestamp). Pinned files are bounded by their pinned length.
pub const MAX_METADATA_LEN: u64 = 1 << 20;
const SIGNING_CONTEXT: &[u8] = b"llamabox update metadata v1\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{what} is {len} bytes, more than the {limit}-byte limit")]
    TooLong { what: String, len: u64, limit: u64 },
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{role} metadata: {valid} valid signature(s) from keys the root trusts for it, {threshold} needed{untrusted}")]
    Threshold {
        role: Role,
        valid: usize,
        threshold: u32,
        /// ", and signatures by untrusted keys …" when there were any.
        untrusted: String,
    },
    #[error("{role} metadata expired at {expires} (the box's clock reads {now}): a frozen or stale repository")]
    Expired {
        role: Role,
        expires: String,
        now: String,
    },
    #[error("{role} metadata version {found} is older than version {seen}, which this box has already seen")]
    VersionRollback { role: Role, found: u64, seen: u64 },
    #[error("{what}: expected {expected}, found {found} (metadata from different snapshots)")]
    Mismatch {
        what: String,
        expected: String,
        found: String,
    },
}

fn malformed(what: &str, reason: impl ToString) -> MetadataError {
    MetadataError::Malformed {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Keys allowed to sign for a role, and how many of them must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub root: RoleKeys,
    pub targets: RoleKeys,
    pub snapshot: RoleKeys,
    pub timestamp: RoleKeys,
}

impl Roles {
    pub fn get(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Targets => &self.targets,
            Role::Snapshot => &self.snapshot,
            Role::Timestamp => &self.timestamp,
        }
    }
}

/// The root of trust: every key, and which roles each may sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    #[serde(rename = "type")]
    pub kind: Role,
    pub version: u64,
    pub expires: String,
    /// Key id (hex) → public key (hex).
    pub keys: BTreeMap<String, String>,
    pub roles: Roles,
}

/// Length and hash of another metadata file, pinned by the file that names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaFile {
    pub version: u64,
    pub length: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timestamp {
    #[serde(rename = "type")]
    pub kind: Role,
    pub version: u64,
    pub expires: String,
    pub snapshot: MetaFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    #[serde(rename = "type")]
    pub kind: Role,
    pub version: u64,
    pub expires: String,
    pub targets: MetaFile,
}

/// One installable image: the bundle index it points to is pinned by length and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub board: String,
    pub version: String,
    pub length: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(rename = "type")]
    pub kind: Role,
    pub version: u64,
    pub expires: String,
    /// Target name (`llamabox-<board>`) → target.
    pub targets: BTreeMap<String, Target>,
}

impl Targets {
    pub fn name_for_board(board: &str) -> String {
        format!("llamabox-{board}")
    }
}

/// What every role's metadata has in common.
pub trait RoleMetadata: Serialize + DeserializeOwned {
    const ROLE: Role;
    fn kind(&self) -> Role;
    fn version(&self) -> u64;
    fn expires(&self) -> &str;
    /// The pins it carries are usable: hashes are SHA-256 in lowercase hex (they become
    /// file names), lengths are within what the box will ever download for that file.
    fn check_pins(&self) -> Result<(), String> {
        Ok(())
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_pin(what: &str, length: u64, sha256: &str, limit: u64) -> Result<(), String> {
    if !is_sha256_hex(sha256) {
        return Err(format!("{what}: sha256 is not a SHA-256 in lowercase hex"));
    }
    if length > limit {
        return Err(format!(
            "{what}: length {length} is more than the {limit}-byte limit"
        ));
    }
    Ok(())
}

impl MetaFile {
    fn check_pin(&self, what: &str) -> Result<(), String> {
        check_pin(what, self.length, &self.sha256, MAX_METADATA_LEN)
    }
}

macro_rules! role_metadata {
    ($ty:ty, $role:expr) => {
        role_metadata!($ty, $role, |_m: &$ty| Ok(()));
    };
    ($ty:ty, $role:expr, $check:expr) => {
        impl RoleMetadata for $ty {
            fn check_pins(&self) -> Result<(), String> {
                $check(self)
            }
            const ROLE: Role = $role;
            fn kind(&self) -> Role {
                self.kind
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> &str {
                &self.expires
            }
        }
    };
}
role_metadata!(Root, Role::Root);
role_metadata!(Timestamp, Role::Timestamp, |t: &Timestamp| t
    .snapshot
    .check_pin("snapshot"));
role_metadata!(Snapshot, Role::Snapshot, |s: &Snapshot| s
    .targets
    .check_pin("targets"));
role_metadata!(Targets, Role::Targets, |t: &Targets| {
    t.targets.iter().try_for_each(|(name, target)| {
        check_pin(
            &format!("target `{name}`"),
            target.length,
            &target.sha256,
            crate::update::bundle::MAX_INDEX_LEN,
        )
    })
});

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    signed: Value,
    signatures: Vec<Signature>,
}

/// A parsed metadata file whose signatures are not yet checked.
#[derive(Debug, Clone)]
pub struct Signed<T> {
    pub signed: T,
    canonical: Vec<u8>,
    signatures: Vec<Signature>,
}

impl<T: RoleMetadata> Signed<T> {
    /// Parses a metadata file. Bounds its length and checks its shape and role; checks
    /// no signature yet.
    pub fn parse(bytes: &[u8]) -> Result<Self, MetadataError> {
        let what = format!("{} metadata", T::ROLE);
        if bytes.len() as u64 > MAX_METADATA_LEN {
            return Err(MetadataError::TooLong {
                what,
                len: bytes.len() as u64,
                limit: MAX_METADATA_LEN,
            });
        }
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| malformed(&what, e))?;
        if envelope.signatures.len() > 64 {
            return Err(malformed(&what, "more than 64 signatures"));
        }
        let canonical = canonical_json(&envelope.signed);
        let signed: T = serde_json::from_value(envelope.signed).map_err(|e| malformed(&what, e))?;
        if signed.kind() != T::ROLE {
            return Err(malformed(&what, format!("its type is {}", signed.kind())));
        }
        parse_time(signed.expires()).map_err(|e| malformed(&what, e))?;
        signed.check_pins().map_err(|e| malformed(&what, e))?;
        Ok(Signed {
            signed,
            canonical,
            signatures: envelope.signatures,
        })
    }

    /// Signs `signed` with `keys` and returns the file's bytes (pretty JSON).
    pub fn sign(signed: &T, keys: &[&SecretKey]) -> Vec<u8> {
        let value = serde_json::to_value(signed).expect("metadata serializes");
        let message = [SIGNING_CONTEXT, &canonical_json(&value)].concat();
        let signatures: Vec<Value> = keys
            .iter()
            .map(|key| {
                serde_json::json!({
                    "keyid": key.public().id().to_string(),
                    "sig": hex::encode(key.sign(&message)),
                })
            })
            .collect();
        let mut file = serde_json::to_vec_pretty(&serde_json::json!({
            "signed": value,
            "signatures": signatures,
        }))
        .expect("metadata serializes");
        file.push(b'\n');
        file
    }

    /// Checks that a threshold of the keys `root` lists for this role signed the file.
    pub fn verify(&self, root: &Root) -> Result<(), MetadataError> {
        self.verify_role(root, T::ROLE)
    }

    fn verify_role(&self, root: &Root, role: Role) -> Result<(), MetadataError> {
        let role_keys = root.roles.get(role);
        let message = [SIGNING_CONTEXT, &self.canonical].concat();
        let mut valid: Vec<&str> = Vec::new();
        let mut untrusted: Vec<&str> = Vec::new();
        for signature in &self.signatures {
            let id = signature.keyid.as_str();
            if valid.contains(&id) {
                continue; // one key counts once, however often it signed
            }
            let trusted = role_keys.keyids.iter().any(|k| k == id);
            let key = root
                .keys
                .get(id)
                .and_then(|hex_key| PublicKey::from_hex(hex_key).ok());
            match key {
                Some(key) if trusted => {
                    let sig: Option<[u8; 64]> = hex::decode(&signature.sig)
                        .ok()
                        .and_then(|s| s.try_into().ok());
                    if sig.is_some_and(|sig| key.verify(&message, &sig)) {
                        valid.push(id);
                    }
                }
                _ => untrusted.push(id),
            }
        }
        if valid.len() < role_keys.threshold.max(1) as usize {
            return Err(MetadataError::Threshold {
                role,
                valid: valid.len(),
                threshold: role_keys.threshold.max(1),
                untrusted: if untrusted.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; signed by key(s) {} that root version {} does not trust for {role}",
                        untrusted.join(", "),
                        root.version
                    )
                },
            });
        }
        Ok(())
    }

    /// Refuses metadata whose `expires` is before `now`.
    pub fn check_fresh(&self, now: SystemTime) -> Result<(), MetadataError> {
        let expires = parse_time(self.signed.expires()).expect("checked in parse");
        if expires < now {
            return Err(MetadataError::Expired {
                role: T::ROLE,
                expires: self.signed.expires().to_string(),
                now: format_time(now),
            });
        }
        Ok(())
    }

    /// Refuses a version older than one already seen (`seen`).
    pub fn check_not_older(&self, seen: u64) -> Result<(), MetadataError> {
        if self.signed.version() < seen {
            return Err(MetadataError::VersionRollback {
                role: T::ROLE,
                found: self.signed.version(),
                seen,
            });
        }
        Ok(())
    }
}

impl Signed<Root> {
    /// Checks the next root in the chain: version `current + 1`, signed by a threshold
    /// of the current root's root keys and of its own (so a rotation needs both the old
    /// and the new keys).
    pub fn verify_successor(&self, current: &Root) -> Result<(), MetadataError> {
        if self.signed.version != current.version + 1 {
            return Err(MetadataError::Mismatch {
                what: "next root version".into(),
                expected: (current.version + 1).to_string(),
                found: self.signed.version.to_string(),
            });
        }
        self.verify_role(current, Role::Root)?;
        self.verify_role(&self.signed, Role::Root)
    }
}

impl Root {
    /// Validates the key table: every key parses and its id matches, every role names
    /// keys that exist and a threshold it can reach.
    pub fn validate(&self) -> Result<(), MetadataError> {
        for (id, key) in &self.keys {
            let key = PublicKey::from_hex(key)
                .map_err(|e| malformed("root metadata", format!("key {id}: {e}")))?;
            if &key.id().to_string() != id {
                return Err(malformed(
                    "root metadata",
                    format!("key listed as {id} has id {}", key.id()),
                ));
            }
        }
        for role in [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp] {
            let keys = self.roles.get(role);
            if let Some(missing) = keys.keyids.iter().find(|k| !self.keys.contains_key(*k)) {
                return Err(malformed(
                    "root metadata",
                    format!("role {role} names unknown key {missing}"),
                ));
            }
            if keys.threshold == 0 || keys.threshold as usize > keys.keyids.len() {
                return Err(malformed(
                    "root metadata",
                    format!(
                        "role {role} has threshold {} over {} key(s)",
                        keys.threshold,
                        keys.keyids.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A root listing `keys` for every role with the given threshold: for tests and the
    /// development repository.
    pub fn with_keys(version: u64, expires: SystemTime, roles: [(&[&PublicKey], u32); 4]) -> Root {
        let mut keys = BTreeMap::new();
        let mut role_keys = roles.iter().map(|(role_keys, threshold)| {
            let keyids = role_keys
                .iter()
                .map(|k| {
                    keys.insert(k.id().to_string(), k.to_hex());
                    k.id().to_string()
                })
                .collect();
            RoleKeys {
                keyids,
                threshold: *threshold,
            }
        });
        let roles = Roles {
            root: role_keys.next().unwrap(),
            targets: role_keys.next().unwrap(),
            snapshot: role_keys.next().unwrap(),
            timestamp: role_keys.next().unwrap(),
        };
        Root {
            kind: Role::Root,
            version,
            expires: format_time(expires),
            keys,
            roles,
        }
    }
}

impl MetaFile {
    /// Describes `bytes` as version `version` of a file.
    pub fn describe(version: u64, bytes: &[u8]) -> MetaFile {
        MetaFile {
            version,
            length: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// Checks downloaded bytes against the pinned length and hash.
    pub fn check(&self, what: &str, bytes: &[u8]) -> Result<(), MetadataError> {
        check_pinned(what, self.length, &self.sha256, bytes)
    }
}

/// Checks `bytes` against a pinned length and SHA-256.
pub fn check_pinned(
    what: &str,
    length: u64,
    sha256: &str,
    bytes: &[u8],
) -> Result<(), MetadataError> {
    if bytes.len() as u64 != length {
        return Err(MetadataError::Mismatch {
            what: format!("length of {what}"),
            expected: length.to_string(),
            found: bytes.len().to_string(),
        });
    }
    let found = hex::encode(Sha256::digest(bytes));
    if found != sha256 {
        return Err(MetadataError::Mismatch {
            what: format!("sha256 of {what}"),
            expected: sha256.to_string(),
            found,
        });
    }
    Ok(())
}

/// RFC 3339 in UTC, whole seconds: `2026-11-25T20:00:00Z`.
pub fn format_time(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(text).map_err(|e| format!("`{text}` is not an RFC 3339 UTC time: {e}"))
}

/// Serializes `value` with object keys sorted and no whitespace.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("strings serialize");
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("scalars serialize"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::generate(&mut rand_core::OsRng)
    }

    fn in_days(days: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(days * 86400)
    }

    fn timestamp(version: u64, expires: SystemTime) -> Timestamp {
        Timestamp {
            kind: Role::Timestamp,
            version,
            expires: format_time(expires),
            snapshot: MetaFile::describe(1, b"snapshot"),
        }
    }

    /// A pinned hash becomes a file name on the mirror and on the box: it must be hex
    /// before anything uses it, and a pinned length must be one the box would download.
    #[test]
    fn pins_must_be_hex_hashes_and_bounded_lengths() {
        let k = key();
        let mut ts = timestamp(1, in_days(1));
        ts.snapshot.sha256 = "../../run/llamabox/x".into();
        let err = Signed::<Timestamp>::parse(&Signed::sign(&ts, &[&k])).unwrap_err();
        assert!(err.to_string().contains("lowercase hex"), "{err}");

        let mut ts = timestamp(1, in_days(1));
        ts.snapshot.length = u64::MAX;
        let err = Signed::<Timestamp>::parse(&Signed::sign(&ts, &[&k])).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");

        let mut targets = Targets {
            kind: Role::Targets,
            version: 1,
            expires: format_time(in_days(1)),
            targets: BTreeMap::new(),
        };
        targets.targets.insert(
            "llamabox-qemu-x86_64".into(),
            Target {
                board: "qemu-x86_64".into(),
                version: "0.2.0".into(),
                length: 100,
                sha256: "AB".repeat(32),
            },
        );
        let err = Signed::<Targets>::parse(&Signed::sign(&targets, &[&k])).unwrap_err();
        assert!(
            err.to_string().contains("target `llamabox-qemu-x86_64`"),
            "{err}"
        );
    }

    #[test]
    fn threshold_counts_distinct_trusted_keys() {
        let (k1, k2, k3) = (key(), key(), key());
        let ks = [&k1.public(), &k2.public(), &k3.public()];
        let root = Root::with_keys(1, in_days(365), [(&ks, 2), (&ks, 2), (&ks, 2), (&ks, 2)]);
        root.validate().unwrap();
        let ts = timestamp(1, in_days(1));

        let two = Signed::<Timestamp>::parse(&Signed::sign(&ts, &[&k1, &k2])).unwrap();
        two.verify(&root).unwrap();

        let same_twice = Signed::<Timestamp>::parse(&Signed::sign(&ts, &[&k1, &k1])).unwrap();
        let err = same_twice.verify(&root).unwrap_err();
        assert!(
            matches!(
                err,
                MetadataError::Threshold {
                    valid: 1,
                    threshold: 2,
                    ..
                }
            ),
            "{err}"
        );

        let stranger = key();
        let err = Signed::<Timestamp>::parse(&Signed::sign(&ts, &[&k1, &stranger]))
            .unwrap()
            .verify(&root)
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&stranger.public().id().to_string()),
            "{message}"
        );
        assert!(message.contains("does not trust"), "{message}");
    }

    #[test]
    fn reformatting_keeps_signatures_and_editing_breaks_them() {
        let k = key();
        let root = Root::with_keys(1, in_days(9), [(&[&k.public()], 1); 4]);
        let file = Signed::sign(&timestamp(7, in_days(1)), &[&k]);
        let value: Value = serde_json::from_slice(&file).unwrap();
        let compact = serde_json::to_vec(&value).unwrap();
        Signed::<Timestamp>::parse(&compact)
            .unwrap()
            .verify(&root)
            .unwrap();

        let edited = String::from_utf8(file)
            .unwrap()
            .replace("\"version\": 7", "\"version\": 8");
        let err = Signed::<Timestamp>::parse(edited.as_bytes())
            .unwrap()
            .verify(&root)
            .unwrap_err();
        assert!(
            matches!(err, MetadataError::Threshold { valid: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn expired_and_older_metadata_are_refused() {
        let k = key();
        let old = SystemTime::now() - Duration::from_secs(60);
        let file = Signed::sign(&timestamp(3, old), &[&k]);
        let parsed = Signed::<Timestamp>::parse(&file).unwrap();
        assert!(matches!(
            parsed.check_fresh(SystemTime::now()),
            Err(MetadataError::Expired { .. })
        ));
        assert!(matches!(
            parsed.check_not_older(4),
            Err(MetadataError::VersionRollback {
                found: 3,
                seen: 4,
                ..
            })
        ));
        parsed.check_not_older(3).unwrap();
    }

    #[test]
    fn wrong_role_is_malformed() {
        let k = key();
        let file = Signed::sign(&timestamp(1, in_days(1)), &[&k]);
        let err = Signed::<Snapshot>::parse(&file).unwrap_err();
        assert!(matches!(err, MetadataError::Malformed { .. }), "{err}");
    }

    #[test]
    fn root_rotation_needs_old_and_new_keys() {
        let (old, new) = (key(), key());
        let v1 = Root::with_keys(1, in_days(9), [(&[&old.public()], 1); 4]);
        let v2 = Root::with_keys(2, in_days(9), [(&[&new.public()], 1); 4]);

        let both = Signed::<Root>::parse(&Signed::sign(&v2, &[&old, &new])).unwrap();
        both.verify_successor(&v1).unwrap();

        let only_new = Signed::<Root>::parse(&Signed::sign(&v2, &[&new])).unwrap();
        assert!(only_new.verify_successor(&v1).is_err());
        let only_old = Signed::<Root>::parse(&Signed::sign(&v2, &[&old])).unwrap();
        assert!(only_old.verify_successor(&v1).is_err());

        let mut v3 = v2.clone();
        v3.version = 3;
        let skipped = Signed::<Root>::parse(&Signed::sign(&v3, &[&old, &new])).unwrap();
        assert!(matches!(
            skipped.verify_successor(&v1),
            Err(MetadataError::Mismatch { .. })
        ));
    }
}
