//! The metadata walk (TUF's client workflow, minus delegations): update the root
//! through its chain, then timestamp → snapshot → targets, each signed by a threshold
//! of its role's keys, pinned by the file before it, no older than what this box has
//! seen and not expired.

use std::path::Path;
use std::time::SystemTime;

use llamabox_format::update::metadata::RoleMetadata;
use llamabox_format::update::metadata::{check_pinned, MAX_METADATA_LEN};
use llamabox_format::update::{
    BundleIndex, MetaFile, MetadataError, Root, Signed, Snapshot, Target, Targets, Timestamp,
    Version,
};

use crate::fetch::{FetchError, Fetcher};
use crate::state::{Seen, Store};
use crate::Error;

/// Roots a repository may rotate through in one check: bounds the walk.
const MAX_ROOT_ROTATIONS: u64 = 1024;

#[derive(Debug)]
pub enum Check {
    /// The repository offers this box's version (or nothing for its board).
    UpToDate {
        version: Option<String>,
    },
    Available {
        target: Target,
    },
}

/// The result of a verified walk, with what to remember if the caller commits it.
#[derive(Debug)]
pub struct Walk {
    pub check: Check,
    pub seen: Seen,
    /// The signed target that pins the model catalog, when the release offers models.
    pub models: Option<Target>,
}

/// The whole file at `path`, at most `limit` bytes; a 404 from every mirror is an error.
pub(crate) fn fetch(fetcher: &Fetcher, path: &str, limit: u64) -> Result<Vec<u8>, Error> {
    fetcher.get(path, limit)?.ok_or_else(|| {
        Error::Fetch(FetchError::Http {
            url: path.to_string(),
            reason: "not found in the repository".into(),
        })
    })
}

/// Walks the repository's metadata for `board`, which runs `installed`.
pub fn check(
    fetcher: &Fetcher,
    store: &Store,
    image_root: &Path,
    board: &str,
    installed: &str,
    seen: &Seen,
    clock: SystemTime,
) -> Result<Walk, Error> {
    let now = seen.now(clock);
    let mut seen = seen.clone();
    // The stored root was verified when it was stored (or came with the image).
    let mut root = Signed::<Root>::parse(&store.trusted_root(image_root)?)?;
    for _ in 0..MAX_ROOT_ROTATIONS {
        let next_name = format!("{}.root.json", root.signed.version + 1);
        let Some(bytes) = fetcher.get(&next_name, MAX_METADATA_LEN)? else {
            break;
        };
        let next = Signed::<Root>::parse(&bytes)?;
        next.verify_successor(&root.signed)?;
        next.signed.validate()?;
        // TUF 5.3.11: versions signed by rotated-out timestamp or snapshot keys no longer
        // count, or a leaked key that signed a huge version would freeze updates for good.
        let (old, new) = (&root.signed.roles, &next.signed.roles);
        if old.timestamp != new.timestamp || old.snapshot != new.snapshot {
            seen.timestamp_version = 0;
            seen.snapshot_version = 0;
        }
        store.save_root(&bytes)?;
        root = next;
    }
    root.check_fresh(now)?;
    let root = root.signed;

    let timestamp =
        Signed::<Timestamp>::parse(&fetch(fetcher, "timestamp.json", MAX_METADATA_LEN)?)?;
    timestamp.verify(&root)?;
    timestamp.check_not_older(seen.timestamp_version)?;
    timestamp.check_fresh(now)?;
    let pinned = &timestamp.signed.snapshot;

    let snapshot: Signed<Snapshot> = fetch_pinned(
        fetcher,
        &root,
        pinned,
        "timestamp",
        seen.snapshot_version,
        now,
    )?;
    let pinned = &snapshot.signed.targets;
    let targets: Signed<Targets> = fetch_pinned(
        fetcher,
        &root,
        pinned,
        "snapshot",
        seen.targets_version,
        now,
    )?;

    seen.timestamp_version = timestamp.signed.version;
    seen.snapshot_version = snapshot.signed.version;
    seen.targets_version = targets.signed.version;
    seen.record_time(now);

    let models = targets
        .signed
        .targets
        .get(llamabox_format::update::models::MODELS_TARGET)
        .cloned();
    let check = match targets.signed.targets.get(&Targets::name_for_board(board)) {
        None => Check::UpToDate { version: None },
        Some(target) => {
            if target.board != board {
                return Err(llamabox_format::update::BundleError::WrongBoard {
                    expected: board.to_string(),
                    found: target.board.clone(),
                }
                .into());
            }
            let offered = parse_version(&target.version)?;
            let mut floor = parse_version(installed)?;
            if let Some(f) = &seen.version_floor {
                floor = floor.max(parse_version(f)?);
            }
            if offered < floor {
                return Err(Error::Rollback {
                    offered: target.version.clone(),
                    installed: floor.to_string(),
                });
            }
            if offered == floor {
                Check::UpToDate {
                    version: Some(target.version.clone()),
                }
            } else {
                Check::Available {
                    target: target.clone(),
                }
            }
        }
    };
    Ok(Walk {
        check,
        seen,
        models,
    })
}

/// Fetches `<version>.<role>.json` as pinned by the `named_by` role's file: at most the
/// pinned length, the pinned hash, signed for its role, the pinned version, not older
/// than `seen`, not expired.
fn fetch_pinned<T: RoleMetadata>(
    fetcher: &Fetcher,
    root: &Root,
    pinned: &MetaFile,
    named_by: &str,
    seen: u64,
    now: SystemTime,
) -> Result<Signed<T>, Error> {
    let name = format!("{}.{}.json", pinned.version, T::ROLE);
    let bytes = fetch(fetcher, &name, pinned.length)?;
    pinned.check(&name, &bytes)?;
    let file = Signed::<T>::parse(&bytes)?;
    file.verify(root)?;
    same_version(
        &format!("{} version named by the {named_by}", T::ROLE),
        pinned.version,
        file.signed.version(),
    )?;
    file.check_not_older(seen)?;
    file.check_fresh(now)?;
    Ok(file)
}

fn same_version(what: &str, expected: u64, found: u64) -> Result<(), Error> {
    if expected != found {
        return Err(MetadataError::Mismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
        .into());
    }
    Ok(())
}

fn parse_version(text: &str) -> Result<Version, Error> {
    text.parse()
        .map_err(|e: llamabox_format::update::version::VersionError| {
            Error::ManifestMismatch(e.to_string())
        })
}

/// Fetches the target's bundle index and checks it against the target and the board.
pub fn fetch_index(fetcher: &Fetcher, target: &Target, board: &str) -> Result<BundleIndex, Error> {
    let name = format!("bundles/{}.index", target.sha256);
    let bytes = fetch(fetcher, &name, target.length)?;
    check_pinned(&name, target.length, &target.sha256, &bytes)?;
    let index = BundleIndex::parse(&bytes)?;
    index.check_board(board)?;
    if index.version != target.version {
        return Err(Error::ManifestMismatch(format!(
            "index says version {}, target says {}",
            index.version, target.version
        )));
    }
    let manifest = index
        .manifest_block()?
        .unverified_payload()
        .map_err(|e| Error::ManifestMismatch(e.to_string()))?;
    if manifest.board != board || manifest.version != target.version {
        return Err(Error::ManifestMismatch(format!(
            "the slot manifest is for {} {}, the target is {} {}",
            manifest.board, manifest.version, board, target.version
        )));
    }
    Ok(index)
}
