//! Where things are: the checkout's input folders and the build's output folders.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Project {
    pub root: PathBuf,
}

/// What cargo sets for one crate's build script, binary or test (besides `CARGO_PKG_*`,
/// `CARGO_BIN_EXE_*` and `DEP_*`): not configuration, so never passed to a nested cargo.
const CRATE_VARIABLES: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

impl Project {
    pub fn locate() -> Project {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        Project {
            root: manifest_dir
                .parent()
                .expect("xtask lives in the workspace")
                .to_path_buf(),
        }
    }

    /// `cargo` (the one running us, if any) in the workspace root, without the variables
    /// cargo sets for the crate it is running or testing. Build scripts track some of
    /// them (ring's reruns on `CARGO_MANIFEST_DIR`): passed through, an image built from
    /// `services/update`'s tests would rebuild ring, rustls and every service that
    /// depends on them, and the next build from `xtask` would rebuild them back.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(&self.root);
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if CRATE_VARIABLES.contains(&name)
                || ["CARGO_PKG_", "CARGO_BIN_EXE_", "DEP_"]
                    .iter()
                    .any(|p| name.starts_with(p))
            {
                cmd.env_remove(name);
            }
        }
        cmd
    }

    pub fn recipes_dir(&self) -> PathBuf {
        self.root.join("recipes")
    }
    pub fn boards_dir(&self) -> PathBuf {
        self.root.join("board")
    }
    pub fn overlays_dir(&self) -> PathBuf {
        self.root.join("overlays")
    }
    /// Image definitions (`image/<name>.toml`).
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("image")
    }
    pub fn debian_lock(&self) -> PathBuf {
        self.recipes_dir().join("debian.lock")
    }
    pub fn pypi_lock(&self) -> PathBuf {
        self.recipes_dir().join("pypi.lock")
    }
    /// The host tests' Python packages, pinned (`requirements.in` beside it is the input).
    pub fn python_requirements(&self) -> PathBuf {
        self.root
            .join("xtask")
            .join("python")
            .join("requirements.txt")
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn target_dir(&self) -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("target"))
    }
    /// Everything the image build writes lives below here.
    pub fn build_dir(&self) -> PathBuf {
        self.target_dir().join("llamabox")
    }
    pub fn downloads_dir(&self) -> PathBuf {
        self.build_dir().join("downloads")
    }
    pub fn default_cache_dir(&self) -> PathBuf {
        self.build_dir().join("cache")
    }
    pub fn default_out_dir(&self, board: &str) -> PathBuf {
        self.build_dir().join("out").join(board)
    }
}
