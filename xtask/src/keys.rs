//! Signing keys. The development key in `keys/` is committed and marked as such;
//! production keys never enter the repository: point `LLAMABOX_SIGNING_KEY` at one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llamabox_format::update::metadata::parse_time;
use llamabox_format::update::{Root, Signed};
use llamabox_format::SecretKey;

use crate::project::Project;

pub const SIGNING_KEY_ENV: &str = "LLAMABOX_SIGNING_KEY";
pub const DEV_SECRET: &str = "dev.secret";
pub const DEV_PUBLIC: &str = "dev.pub";
/// Points at a repository's root metadata (`1.root.json`) for images and releases;
/// without it the development root (every role signed by the development key) is used.
pub const UPDATE_ROOT_ENV: &str = "LLAMABOX_UPDATE_ROOT";
/// The development root never expires in practice; a fixed date keeps images reproducible.
const DEV_ROOT_EXPIRES: &str = "2036-01-01T00:00:00Z";

/// The key root filesystems are signed with: `$LLAMABOX_SIGNING_KEY`, else the
/// development key (with a warning: images signed with it are for development only).
pub fn signing_key(project: &Project) -> Result<SecretKey> {
    let (path, is_dev) = match std::env::var_os(SIGNING_KEY_ENV) {
        Some(p) => (PathBuf::from(p), false),
        None => (project.keys_dir().join(DEV_SECRET), true),
    };
    let key = read_secret(&path)?;
    if is_dev {
        eprintln!(
            "    signing with the DEVELOPMENT key {} ({}); set {SIGNING_KEY_ENV} for release images",
            path.display(),
            key.public().id()
        );
    }
    Ok(key)
}

pub fn read_secret(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read signing key {}", path.display()))?;
    SecretKey::parse(&text).with_context(|| format!("{}: not a signing key", path.display()))
}

/// Writes a new key pair as `<out>/<name>.secret` and `<out>/<name>.pub`.
pub fn generate(out: &Path, name: &str, comment: &str) -> Result<(PathBuf, PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(out)?;
    let secret_path = out.join(format!("{name}.secret"));
    let public_path = out.join(format!("{name}.pub"));
    if secret_path.exists() {
        bail!(
            "{} exists; refusing to overwrite a key",
            secret_path.display()
        );
    }
    let key = SecretKey::generate(&mut rand_core::OsRng);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)?;
    f.write_all(key.to_file(comment).as_bytes())?;
    std::fs::write(&public_path, key.public().to_file(comment))?;
    Ok((secret_path, public_path))
}

/// `cargo xtask keys`: a new key pair in `out`, and how to sign with it.
pub fn generate_command(out: &Path, name: &str) -> Result<()> {
    let (secret, public) = generate(out, name, &format!("Llama Box signing key `{name}`"))?;
    println!(
        "secret key: {} (keep it out of the repository)",
        secret.display()
    );
    println!("public key: {}", public.display());
    println!(
        "sign images with it: {}={} cargo xtask image",
        SIGNING_KEY_ENV,
        secret.display()
    );
    Ok(())
}

/// The development repository's root: version 1, the development key for every role.
pub fn dev_root(key: &SecretKey) -> Vec<u8> {
    let public = key.public();
    let expires = parse_time(DEV_ROOT_EXPIRES).expect("constant parses");
    let root = Root::with_keys(1, expires, [(&[&public], 1); 4]);
    Signed::sign(&root, &[key])
}

/// The root metadata images trust: `$LLAMABOX_UPDATE_ROOT`, else the development root.
pub fn trusted_root(project: &Project) -> Result<Vec<u8>> {
    match std::env::var_os(UPDATE_ROOT_ENV) {
        Some(path) => {
            let bytes = std::fs::read(&path)
                .with_context(|| format!("cannot read {}", Path::new(&path).display()))?;
            let root = Signed::<Root>::parse(&bytes)
                .with_context(|| format!("{}", Path::new(&path).display()))?;
            root.signed.validate()?;
            root.verify(&root.signed)
                .context("the update root must be signed by its own root keys")?;
            Ok(bytes)
        }
        None => {
            let dev = read_secret(&project.keys_dir().join(DEV_SECRET))?;
            Ok(dev_root(&dev))
        }
    }
}
