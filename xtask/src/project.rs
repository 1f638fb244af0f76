//! Where things are: the checkout's input folders and the build's output folders.

use std::path::{Path, PathBuf};

pub struct Project {
    pub root: PathBuf,
}

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
