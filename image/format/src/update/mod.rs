//! Over-the-air updates: the signed repository metadata and the chunked bundle.
//!
//! A repository is a static directory any plain HTTP server can serve:
//!
//! ```text
//! root.json, 1.root.json, 2.root.json, …   trusted keys per role, thresholds (rotations chain)
//! timestamp.json                           short-lived: names the current snapshot
//! <v>.snapshot.json                        names the current targets metadata
//! <v>.targets.json                         per board: image version, bundle index hash and length
//! bundles/<sha256>.index                   the bundle's chunk list (JSON)
//! bundles/<sha256>.data                    the chunks' bytes, each stored once
//! models/<sha256>.catalog, .index, .blob   models as signed updates ([`models`])
//! ```
//!
//! The roles follow TUF: every metadata file is signed by a threshold of its role's
//! keys from the current root; each step pins the next file's length and hash, so a
//! device reads nothing that is not bounded and verified before it is used.

pub mod bundle;
pub mod chunk;
pub mod metadata;
pub mod models;
pub mod version;

pub use bundle::{BundleError, BundleFile, BundleIndex, ChunkRef};
pub use metadata::{
    MetaFile, MetadataError, Role, RoleKeys, Root, Signed, Snapshot, Target, Targets, Timestamp,
};
pub use version::Version;
