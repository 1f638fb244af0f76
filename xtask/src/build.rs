//! The image pipeline: recipes → staged trees → rootfs (EROFS + dm-verity, signed) and
//! initramfs → per-slot UKIs → ESP → GPT disk image + `.bmap` + `.sha256`.
//!
//! Each step is a cache entry keyed by its inputs (see `cache`), so a no-op build only
//! hashes, and a changed service rebuilds its recipe, the rootfs and the disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use llamabox_format::{BootEntry, PublicKey, SecretKey, Slot};
use llamabox_image::{bmap, cpio, disk, esp, modules, rootfs, uki};

use crate::cache::{Cache, KeyHasher};
use crate::config::board::{Board, KernelSource};
use crate::config::image::ImageDef;
use crate::config::lock::DebianLock;
use crate::config::recipe::{Recipe, Source};
use crate::config::{self, Arch, WASM_TARGET};
use crate::fetch::{debian, pypi};
use crate::project::Project;
use crate::{keys, stage};
use llamabox_format::paths::{self, in_tree};

pub const DEFAULT_IMAGE: &str = "llamabox";

pub struct BuildOptions {
    pub board: String,
    /// `image/<image>.toml`.
    pub image: String,
    pub out_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    /// Files for the board's external inputs (`--input NAME=PATH`), by input name.
    pub inputs: BTreeMap<String, PathBuf>,
}

impl BuildOptions {
    /// The product image for `board`, with the default output and cache folders.
    pub fn for_board(board: impl Into<String>) -> BuildOptions {
        BuildOptions {
            board: board.into(),
            image: DEFAULT_IMAGE.into(),
            out_dir: None,
            cache_dir: None,
            inputs: BTreeMap::new(),
        }
    }
}

/// `cargo xtask image`: builds and prints where the outputs are.
pub fn image_command(project: &Project, options: &BuildOptions) -> Result<()> {
    let output = build(project, options)?;
    println!("image:  {}", output.image.display());
    println!("bmap:   {}", output.bmap.display());
    println!("sha256: {}", output.sha256_file.display());
    println!("rootfs: {}", output.rootfs.display());
    Ok(())
}

/// `cargo xtask stage`: stages one recipe and prints each file's path on the device
/// and in the staged tree.
pub fn stage_command(project: &Project, board: &str, recipe: &str) -> Result<()> {
    let tree = stage_one(project, board, recipe)?;
    for entry in walkdir::WalkDir::new(&tree).sort_by_file_name() {
        let entry = entry?;
        if !entry.file_type().is_dir() {
            let rel = entry.path().strip_prefix(&tree)?;
            println!("/{}\t{}", rel.display(), entry.path().display());
        }
    }
    Ok(())
}

#[derive(Debug)]
pub struct BuildOutput {
    pub image: PathBuf,
    pub bmap: PathBuf,
    pub sha256_file: PathBuf,
    pub rootfs: PathBuf,
    pub image_sha256: String,
    pub rootfs_sha256: String,
    pub reused: bool,
    /// The staged tree of each root filesystem recipe, in the build cache.
    pub rootfs_trees: BTreeMap<String, PathBuf>,
    /// What an update bundle is made of: the slot's contents and one boot entry per
    /// slot (their command lines differ), in the build cache.
    pub release: Option<ReleaseParts>,
}

#[derive(Debug)]
pub struct ReleaseParts {
    pub board: String,
    pub version: String,
    pub slot: rootfs::SlotImage,
    pub uki_a: PathBuf,
    pub uki_b: PathBuf,
}

impl BuildOutput {
    /// Where the build cache holds the root filesystem's file `path` (absolute in the
    /// image), if a recipe installs it: host tests use the same bytes as the device.
    pub fn rootfs_file(&self, path: &str) -> Option<PathBuf> {
        let rel = path.trim_start_matches('/');
        self.rootfs_trees
            .values()
            .map(|tree| tree.join(rel))
            .find(|p| p.symlink_metadata().is_ok())
    }
}

/// Prints a step and how long it took.
pub struct Step {
    name: String,
    start: Instant,
}

impl Step {
    pub fn start(name: impl Into<String>) -> Step {
        let name = name.into();
        eprintln!("==> {name}");
        Step {
            name,
            start: Instant::now(),
        }
    }
    pub fn done(self) {
        let secs = self.start.elapsed().as_secs_f32();
        if secs >= 1.0 {
            eprintln!("    {} took {secs:.1} s", self.name);
        }
    }
}

struct Ctx<'a> {
    project: &'a Project,
    board: &'a Board,
    image: &'a ImageDef,
    recipes: &'a BTreeMap<String, Recipe>,
    lock: &'a DebianLock,
    mirror: Option<String>,
    cache: Cache,
}

impl Ctx<'_> {
    fn mirror(&mut self) -> Result<String> {
        if self.mirror.is_none() {
            self.mirror = Some(debian::mirror(&self.lock.suite)?);
        }
        Ok(self.mirror.clone().unwrap())
    }

    /// The unpacked contents of a locked Debian package.
    fn debian_package(&mut self, name: &str) -> Result<(PathBuf, String)> {
        let package = self.lock.get(name, self.board.arch)?.clone();
        let key = package.sha256[..32].to_string();
        let unpacked = self.cache.entry_dir("deb", &key);
        if !unpacked.exists() {
            let mirror = self.mirror()?;
            let deb = debian::fetch(&mirror, &package, &self.project.downloads_dir())?;
            self.cache
                .get_or_build("deb", &key, |dir| debian::unpack(&deb, dir))?;
        }
        Ok((unpacked, package.sha256))
    }

    /// The unpacked contents of a locked PyPI distribution, and its SHA-256.
    fn pypi_dist(&mut self, name: &str, version: &str) -> Result<(PathBuf, String)> {
        let lock = pypi::PypiLock::load(&self.project.pypi_lock())?;
        let dist = lock.get(name, version)?.clone();
        let downloads = self.project.downloads_dir();
        let dir = self.cache.get_or_build("pypi", &dist.sha256[..32], |dir| {
            let file = pypi::fetch(&dist, &downloads)?;
            pypi::unpack(&file, dir)
        })?;
        Ok((dir, dist.sha256))
    }
}

/// Stages one recipe for a board on its own, in the build cache, and returns its tree
/// (the target filesystem's layout): how tests and benchmarks get a recipe's files,
/// such as a converted model, without building an image that holds them. The entry is
/// the one an image build uses.
pub fn stage_one(project: &Project, board: &str, recipe: &str) -> Result<PathBuf> {
    let recipes = config::recipe::load_all(&project.recipes_dir())?;
    let board = config::board::load(&project.boards_dir(), board)?;
    let Some(r) = recipes.get(recipe) else {
        bail!(
            "no recipe `{recipe}`{}",
            config::suggest(recipe, recipes.keys().map(String::as_str))
        );
    };
    if !r.supports(board.arch) {
        bail!(
            "recipe `{recipe}` does not support {} (board {})",
            board.arch.name(),
            board.name
        );
    }
    let lock = DebianLock::load(&project.debian_lock())?;
    // Only the recipe's crates are built: an image of that one recipe.
    let image = ImageDef {
        name: recipe.to_string(),
        version: String::new(),
        rootfs: vec![recipe.to_string()],
        initramfs: Vec::new(),
        catalog: Vec::new(),
        health_grace_ms: 0,
        health_deadline_ms: 0,
    };
    let mut ctx = Ctx {
        project,
        board: &board,
        image: &image,
        recipes: &recipes,
        lock: &lock,
        mirror: None,
        cache: Cache::new(project.default_cache_dir()),
    };
    let binaries = build_crates(&ctx)?;
    Ok(stage_recipe(&mut ctx, r, &binaries)?.tree)
}

/// The one file a model recipe installs (its single `[[install]]` rule that names a
/// file): where the image has it (`/usr/share/…`), so tests and benches name a model by
/// its recipe and never repeat its path.
pub fn recipe_file(project: &Project, recipe: &str) -> Result<String> {
    let recipes = config::recipe::load_all(&project.recipes_dir())?;
    let Some(r) = recipes.get(recipe) else {
        bail!(
            "no recipe `{recipe}`{}",
            config::suggest(recipe, recipes.keys().map(String::as_str))
        );
    };
    let files: Vec<&str> = r
        .install
        .iter()
        .map(|rule| rule.to.as_str())
        .filter(|to| !to.ends_with('/'))
        .collect();
    match files[..] {
        [file] => Ok(file.to_string()),
        _ => bail!(
            "recipe `{recipe}` installs {} files by name, not one: {files:?}",
            files.len()
        ),
    }
}

pub fn build(project: &Project, options: &BuildOptions) -> Result<BuildOutput> {
    let recipes = config::recipe::load_all(&project.recipes_dir())?;
    let board = config::board::load(&project.boards_dir(), &options.board)?;
    let image = config::image::load(&project.images_dir(), &options.image, &recipes)?;
    let lock = DebianLock::load(&project.debian_lock())?;
    for name in image.rootfs.iter().chain(&image.initramfs) {
        if !recipes[name].supports(board.arch) {
            bail!(
                "recipe `{name}` does not support {} (board {})",
                board.arch.name(),
                board.name
            );
        }
    }
    // A missing vendor input stops the build before anything is compiled.
    let inputs = crate::inputs::resolve(project, &board, &options.inputs)?;
    crate::setup::ensure_host_tools(&[board.arch])?;
    let signing = keys::signing_key(project)?;

    let mut ctx = Ctx {
        project,
        board: &board,
        image: &image,
        recipes: &recipes,
        lock: &lock,
        mirror: None,
        cache: Cache::new(
            options
                .cache_dir
                .clone()
                .unwrap_or_else(|| project.default_cache_dir()),
        ),
    };

    let step = Step::start(format!(
        "building {} for {} ({})",
        image.name,
        board.name,
        board.arch.name()
    ));
    let binaries = build_crates(&ctx)?;
    step.done();

    let step = Step::start("staging recipes");
    let mut staged = BTreeMap::new();
    for name in image.rootfs.iter().chain(&image.initramfs) {
        if !staged.contains_key(name) {
            let entry = stage_recipe(&mut ctx, &recipes[name], &binaries)?;
            staged.insert(name.clone(), entry);
        }
    }
    step.done();

    let step = Step::start("root filesystem (EROFS + dm-verity, signed)");
    let update_root = keys::trusted_root(project)?;
    let slot = build_rootfs(&mut ctx, &staged, &signing, &update_root)?;
    step.done();

    let step = Step::start("kernel and initramfs");
    let (kernel_dir, kernel_sha) = kernel_files(&mut ctx, &inputs)?;
    let kernel_image = find_one(&kernel_dir, &board.kernel.image)?;
    let device_tree = match &board.device_tree {
        Some(pattern) => Some(find_one(&kernel_dir, pattern)?),
        None => None,
    };
    let initramfs = build_initramfs(
        &mut ctx,
        &staged,
        &kernel_dir,
        &kernel_sha,
        &signing.public(),
    )?;
    step.done();

    let step = Step::start("boot entries and ESP");
    let (esp_image, uki_a, uki_b) =
        build_esp(&mut ctx, &kernel_image, device_tree.as_deref(), &initramfs)?;
    step.done();

    let step = Step::start("disk image");
    let mut out = write_disk(&ctx, options, &esp_image, &slot)?;
    step.done();
    out.rootfs_trees = image
        .rootfs
        .iter()
        .map(|name| (name.clone(), staged[name].tree.clone()))
        .collect();
    out.release = Some(ReleaseParts {
        board: board.name.clone(),
        version: image.version.clone(),
        slot,
        uki_a,
        uki_b,
    });
    Ok(out)
}

/// The staged tree of one recipe and the key it is cached under.
struct Staged {
    key: String,
    tree: PathBuf,
}

/// `cargo build` for every crate recipe the image uses, in one invocation per target
/// (static, glibc, WebAssembly). Returns binary name → built file.
fn build_crates(ctx: &Ctx) -> Result<BTreeMap<String, PathBuf>> {
    // target → (package, binaries, wasm)
    type Crates<'a> = Vec<(&'a str, &'a Vec<String>, bool)>;
    let mut by_target: BTreeMap<&str, Crates> = BTreeMap::new();
    for name in ctx.image.rootfs.iter().chain(&ctx.image.initramfs) {
        if let Source::Crate {
            package,
            binaries,
            static_link,
            wasm,
        } = &ctx.recipes[name].source
        {
            let target = if *wasm {
                WASM_TARGET
            } else {
                ctx.board.arch.rust_target(*static_link)
            };
            by_target
                .entry(target)
                .or_default()
                .push((package, binaries, *wasm));
        }
    }
    let mut out = BTreeMap::new();
    let target_dir = crate_target_dir(ctx.project, ctx.board.arch, &ctx.board.cpu_baseline);
    for (target, crates) in by_target {
        let mut cmd = ctx.project.cargo();
        cmd.args(["build", "--release", "--locked", "--target", target]);
        cmd.env("CARGO_TARGET_DIR", &target_dir);
        // ggml's CPU baseline (llama.cpp and whisper.cpp forward GGML_* to CMake).
        for (name, value) in ggml_baseline_env(ctx.board.arch, &ctx.board.cpu_baseline) {
            cmd.env(name, value);
        }
        for (package, binaries, wasm) in &crates {
            cmd.args(["--package", package]);
            if *wasm {
                // A cdylib: the .wasm is the library itself.
                cmd.arg("--lib");
            } else {
                for b in *binaries {
                    cmd.args(["--bin", b]);
                }
            }
        }
        let status = cmd.status().context("cannot run cargo")?;
        if !status.success() {
            bail!("`cargo build --target {target}` for the image's crates failed (see above)");
        }
        let dir = target_dir.join(target).join("release");
        for (_, binaries, _) in crates {
            for b in binaries {
                out.insert(b.clone(), dir.join(b));
            }
        }
    }
    Ok(out)
}

/// ggml's CMake settings for a CPU baseline, always explicit (whatever
/// `.cargo/config.toml` says for the host): x86-64-v2 stops at SSE4.2, x86-64-v3 adds
/// AVX2, FMA, F16C and BMI2; on arm64 the baseline is `-march`. Never the build
/// machine's own CPU (`GGML_NATIVE`, whisper.cpp's default).
pub(crate) fn ggml_baseline_env(arch: Arch, cpu_baseline: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![("GGML_NATIVE", "OFF".to_string())];
    env.extend(ggml_cpu_features(arch, cpu_baseline));
    env
}

fn ggml_cpu_features(arch: Arch, cpu_baseline: &str) -> Vec<(&'static str, String)> {
    match (arch, cpu_baseline) {
        (Arch::Aarch64, march) => vec![("GGML_CPU_ARM_ARCH", march.to_string())],
        // x86-64-v3 adds these to x86-64-v2's SSE4.2 (the board schema admits only the two).
        (Arch::X86_64, baseline) => {
            let v3 = if baseline == "x86-64-v3" { "ON" } else { "OFF" };
            let mut env = vec![("GGML_SSE42", "ON".to_string())];
            env.extend(
                [
                    "GGML_AVX",
                    "GGML_AVX2",
                    "GGML_FMA",
                    "GGML_F16C",
                    "GGML_BMI2",
                ]
                .map(|name| (name, v3.to_string())),
            );
            env
        }
    }
}

/// Where cargo builds binaries for a CPU baseline: the workspace's target directory for
/// the architecture's default baseline, a directory of its own for any other (so boards
/// of one architecture with different baselines, and benchmarks, do not rebuild
/// llama.cpp in turn). Boards with the same baseline share the binaries, byte for byte.
pub(crate) fn crate_target_dir(project: &Project, arch: Arch, cpu_baseline: &str) -> PathBuf {
    if cpu_baseline == arch.default_cpu_baseline() {
        project.target_dir()
    } else {
        let safe: String = cpu_baseline
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        project
            .target_dir()
            .join("llamabox")
            .join(format!("cpu-{safe}"))
    }
}

/// The kernel's files (image, `lib/modules`, device trees) unpacked, and a digest of
/// where they came from: a locked Debian package or a pinned external input.
fn kernel_files(ctx: &mut Ctx, inputs: &BTreeMap<String, PathBuf>) -> Result<(PathBuf, String)> {
    match ctx.board.kernel.source.clone() {
        KernelSource::Debian { package } => ctx.debian_package(&package),
        KernelSource::Input { input, modules } => {
            let spec = ctx
                .board
                .inputs
                .iter()
                .find(|i| i.name == input)
                .context("kernel input not declared")?
                .clone();
            let file = inputs[&input].clone();
            let dir = ctx.cache.get_or_build("input", &spec.sha256[..32], |dir| {
                eprintln!("    unpacking {} ({})", spec.file, spec.name);
                crate::inputs::unpack(&file, dir)?;
                if let Some(modules) = &modules {
                    crate::inputs::unpack(&find_one(dir, modules)?, dir)?;
                }
                Ok(())
            })?;
            Ok((dir, spec.sha256))
        }
    }
}

fn stage_recipe(
    ctx: &mut Ctx,
    recipe: &Recipe,
    binaries: &BTreeMap<String, PathBuf>,
) -> Result<Staged> {
    let arch = ctx.board.arch;
    let mut key = KeyHasher::default();
    key.add_file("recipe", &recipe.file)?
        .add_str("arch", arch.name());
    let sources: Vec<PathBuf> = match &recipe.source {
        Source::Crate {
            binaries: names, ..
        } => {
            let mut dirs = Vec::new();
            for b in names {
                let path = &binaries[b];
                key.add_file(b, path)?;
                dirs.push(path.parent().unwrap().to_path_buf());
            }
            dirs.dedup();
            dirs
        }
        Source::Debian { packages } => {
            let mut dirs = Vec::new();
            for p in packages {
                let (dir, sha) = ctx.debian_package(p)?;
                key.add_str(p, &sha);
                dirs.push(dir);
            }
            dirs
        }
        Source::Pypi { name, version } => {
            let (dir, sha) = ctx.pypi_dist(name, version)?;
            key.add_str("dist", &sha);
            vec![dir]
        }
        Source::Convert(convert) => {
            // The converted file is its own cache entry, keyed by the converter (the
            // build tool's identity is part of every entry), its pinned inputs and
            // settings; the recipe's entry then installs from it like from any source.
            let mut input = KeyHasher::default();
            input.add_str("converter", convert.converter.name());
            let mut dists = Vec::new();
            for (name, version) in &convert.pypi {
                let (dir, sha) = ctx.pypi_dist(name, version)?;
                input.add_str("dist", &sha);
                dists.push(dir);
            }
            for part in &convert.model {
                input.add_str("model", part);
            }
            input
                .add_str("assets", convert.assets.as_deref().unwrap_or_default())
                .add_str("output", &convert.output);
            let input = input.finish();
            key.add_str("converted", &input);
            let dir = ctx.cache.get_or_build("convert", &input, |dir| {
                eprintln!(
                    "    converting {} ({})",
                    recipe.name,
                    convert.converter.name()
                );
                crate::convert::run(convert, &dists, dir)
            })?;
            vec![dir]
        }
        Source::Overlay { path } => {
            let dir = ctx.project.root.join(path);
            if !dir.is_dir() {
                bail!(
                    "recipe `{}`: overlay {} is not a directory",
                    recipe.name,
                    dir.display()
                );
            }
            key.add_tree("overlay", &dir)?;
            vec![dir]
        }
    };
    let key = key.finish();
    let entry = ctx
        .cache
        .get_or_build("recipe", &format!("{}-{key}", recipe.name), |dir| {
            eprintln!("    staging {}", recipe.name);
            stage::install(recipe, arch, &sources, &dir.join("tree"))
        })?;
    Ok(Staged {
        key,
        tree: entry.join("tree"),
    })
}

/// Mount points stage 1 needs in every root filesystem.
const MOUNT_POINTS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "data",
    "var",
    "efi",
    "etc/llamabox/local",
];

/// The os-release of the root filesystem and of each boot entry. systemd-boot sorts UKIs
/// by IMAGE_ID before their version, so IMAGE_ID names the product line (the same for
/// every variant an update may move between) and VARIANT_ID the image definition.
fn os_release(image: &ImageDef, slot: Option<Slot>) -> String {
    let pretty = match slot {
        Some(s) => format!("Llama Box {} (slot {s})", image.version),
        None => format!("Llama Box {}", image.version),
    };
    format!(
        "NAME=\"Llama Box\"\nPRETTY_NAME=\"{pretty}\"\nID=llamabox\nVERSION_ID={v}\nVARIANT_ID={n}\nIMAGE_ID=llamabox\nIMAGE_VERSION={v}\n",
        v = image.version,
        n = image.name
    )
}

/// When the source was committed, as RFC 3339: `SOURCE_DATE_EPOCH` if set (the
/// reproducible-builds convention), else the checkout's last commit; none outside git.
/// A commit's time, not the build's, so two builds of one commit stay byte-identical.
fn source_time(project: &Project) -> Option<String> {
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value,
        Err(_) => {
            let out = std::process::Command::new("git")
                .args(["log", "-1", "--format=%ct"])
                .current_dir(&project.root)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8(out.stdout).ok()?
        }
    };
    let seconds: u64 = epoch.trim().parse().ok()?;
    Some(llamabox_format::update::metadata::format_time(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds),
    ))
}

fn build_rootfs(
    ctx: &mut Ctx,
    staged: &BTreeMap<String, Staged>,
    signing: &SecretKey,
    update_root: &[u8],
) -> Result<rootfs::SlotImage> {
    let mut key = KeyHasher::default();
    key.add_str("board", &ctx.board.name)
        .add_str("version", &ctx.image.version)
        .add_str("health", &ctx.image.health_toml());
    for name in &ctx.image.rootfs {
        key.add_str(name, &staged[name].key);
    }
    key.add_str("signer", &signing.public().id().to_string());
    key.add("update-root", update_root);
    let image_time = source_time(ctx.project);
    key.add_str("image-time", image_time.as_deref().unwrap_or("none"));
    key.add_str("tries", &ctx.board.tries.to_string());
    let key = key.finish();
    let (board, image) = (ctx.board.name.clone(), ctx.image.clone());
    let tries = ctx.board.tries;
    let dir = ctx.cache.get_or_build("rootfs", &key, |dir| {
        let tree = dir.join("tree");
        for name in &image.rootfs {
            stage::merge(&staged[name].tree, &tree)?;
        }
        for m in MOUNT_POINTS {
            std::fs::create_dir_all(tree.join(m))?;
        }
        std::fs::create_dir_all(tree.join("etc/llamabox"))?;
        std::fs::write(tree.join("etc/os-release"), os_release(&image, None))?;
        std::fs::write(tree.join(in_tree(paths::BOARD)), format!("{board}\n"))?;
        if let Some(time) = &image_time {
            std::fs::write(tree.join(in_tree(paths::IMAGE_TIME)), format!("{time}\n"))?;
        }
        std::fs::write(tree.join(in_tree(paths::HEALTH)), image.health_toml())?;
        let root_path = tree.join(in_tree(paths::UPDATE_ROOT));
        std::fs::create_dir_all(root_path.parent().unwrap())?;
        std::fs::write(root_path, update_root)?;
        std::fs::write(tree.join(in_tree(paths::BOOT_TRIES)), format!("{tries}\n"))?;
        normalize_directories(&tree)?;
        let slot = rootfs::build_slot(&tree, dir, &key, &board, &image.version, signing)?;
        std::fs::write(
            dir.join("manifest.json"),
            serde_json::to_string_pretty(&slot.manifest)?,
        )?;
        // The tree is only an intermediate; the EROFS image is what the cache keeps.
        std::fs::remove_dir_all(&tree)?;
        Ok(())
    })?;
    let manifest = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
    Ok(rootfs::SlotImage {
        erofs: dir.join("rootfs.erofs"),
        hash_tree: dir.join("rootfs.verity"),
        manifest_block: std::fs::read(dir.join("manifest.bin"))?,
        manifest,
    })
}

/// Directories get 0755 whatever the host's umask was, so the image is reproducible.
fn normalize_directories(tree: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(tree) {
        let entry = entry?;
        if entry.file_type().is_dir() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

fn find_one(dir: &Path, pattern: &str) -> Result<PathBuf> {
    let full = dir.join(pattern);
    let mut found: Vec<PathBuf> = glob::glob(&full.to_string_lossy())?.flatten().collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("nothing matches {pattern} in {}", dir.display()),
        n => bail!(
            "{n} files match {pattern} in {}; make the pattern exact",
            dir.display()
        ),
    }
}

fn build_initramfs(
    ctx: &mut Ctx,
    staged: &BTreeMap<String, Staged>,
    kernel_dir: &Path,
    kernel_sha: &str,
    trusted: &PublicKey,
) -> Result<PathBuf> {
    let mut key = KeyHasher::default();
    key.add_str("kernel", kernel_sha)
        .add_str("board", &ctx.board.name);
    for m in &ctx.board.kernel.early_modules {
        key.add_str("module", m);
    }
    for name in &ctx.image.initramfs {
        key.add_str(name, &staged[name].key);
    }
    key.add_str("trusted", &trusted.to_file(""));
    let key = key.finish();
    let board = ctx.board.clone();
    let initramfs_recipes = ctx.image.initramfs.clone();
    let dir = ctx.cache.get_or_build("initramfs", &key, |dir| {
        let modules_dir = find_one(kernel_dir, "lib/modules/*")?;
        let order = modules::closure(&modules_dir, &board.kernel.early_modules)?;
        let mut archive = cpio::Archive::default();
        for d in ["dev", "proc", "sys", "run", "sysroot"] {
            archive.directory(d);
        }
        // The kernel opens /dev/console for init before anything is mounted.
        archive.char_device("dev/console", 0o600, 5, 1);
        let mut load_order = String::new();
        for path in &order {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            archive.file(&format!("lib/modules/{name}"), 0o644, std::fs::read(path)?);
            load_order += &format!("{name}\n");
        }
        archive.file("lib/modules/load-order", 0o644, load_order.into_bytes());
        archive.file(
            &format!("{}/{}.pub", in_tree(paths::TRUSTED_KEYS), trusted.id()),
            0o644,
            trusted
                .to_file("trusted to sign root filesystems")
                .into_bytes(),
        );
        archive.file(
            in_tree(paths::BOARD),
            0o644,
            format!("{}\n", board.name).into_bytes(),
        );
        for name in &initramfs_recipes {
            archive.add_tree(&staged[name].tree)?;
        }
        std::fs::write(dir.join("initramfs.cpio"), archive.write())?;
        eprintln!(
            "    {} early modules: {}",
            order.len(),
            board.kernel.early_modules.join(" ")
        );
        Ok(())
    })?;
    Ok(dir.join("initramfs.cpio"))
}

/// The ESP image and the boot entries (UKIs) for slots A and B.
fn build_esp(
    ctx: &mut Ctx,
    kernel: &Path,
    device_tree: Option<&Path>,
    initramfs: &Path,
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let (boot_dir, boot_sha) = ctx.debian_package("systemd-boot-efi")?;
    let arch = ctx.board.arch;
    let (stub_name, loader_name, removable) = arch.systemd_boot_files();
    let efi_dir = boot_dir.join("usr/lib/systemd/boot/efi");
    let (stub, loader) = (efi_dir.join(stub_name), efi_dir.join(loader_name));

    let mut key = KeyHasher::default();
    key.add_str("systemd-boot", &boot_sha)
        .add_file("kernel", kernel)?
        .add_file("initramfs", initramfs)?
        .add_str("version", &ctx.image.version)
        .add_str("cmdline-a", &ctx.board.cmdline(Slot::A))
        .add_str("cmdline-b", &ctx.board.cmdline(Slot::B))
        .add_str("tries", &ctx.board.tries.to_string())
        .add_str("esp-mib", &ctx.board.layout.esp_mib.to_string());
    if let Some(dtb) = device_tree {
        key.add_file("device-tree", dtb)?;
    }
    let key = key.finish();
    let (board, image) = (ctx.board.clone(), ctx.image.clone());
    let dir = ctx.cache.get_or_build("esp", &key, |dir| {
        // The factory image fills both slots; slot A has the higher install generation,
        // so it boots first and slot B is its fallback. Both start on trial.
        let entries = [
            BootEntry::new_trial(2, Slot::A, board.tries),
            BootEntry::new_trial(1, Slot::B, board.tries),
        ];
        let mut files = vec![
            (format!("EFI/BOOT/{removable}"), std::fs::read(&loader)?),
            (
                "loader/loader.conf".to_string(),
                b"timeout 0\neditor no\nauto-entries no\nauto-firmware no\n".to_vec(),
            ),
        ];
        for entry in &entries {
            let out = dir.join(entry.file_name());
            uki::build(
                &uki::UkiParts {
                    objcopy: arch.objcopy(),
                    stub: &stub,
                    kernel,
                    device_tree,
                    initrd: initramfs,
                    cmdline: &board.cmdline(entry.slot),
                    os_release: &os_release(&image, Some(entry.slot)),
                },
                &dir.join(format!("work-{}", entry.slot)),
                &out,
            )?;
            files.push((entry.path(), std::fs::read(&out)?));
        }
        let volume_id = u32::from_str_radix(&key[..8], 16)?;
        esp::build(
            &dir.join("esp.img"),
            board.layout.esp_mib << 20,
            volume_id,
            &files,
        )
    })?;
    let tries = ctx.board.tries;
    Ok((
        dir.join("esp.img"),
        dir.join(BootEntry::new_trial(2, Slot::A, tries).file_name()),
        dir.join(BootEntry::new_trial(1, Slot::B, tries).file_name()),
    ))
}

fn write_disk(
    ctx: &Ctx,
    options: &BuildOptions,
    esp_image: &Path,
    slot: &rootfs::SlotImage,
) -> Result<BuildOutput> {
    let out_dir = options
        .out_dir
        .clone()
        .unwrap_or_else(|| ctx.project.default_out_dir(&ctx.board.name));
    std::fs::create_dir_all(&out_dir)?;
    let base = format!(
        "{}-{}-{}",
        ctx.image.name, ctx.board.name, ctx.image.version
    );
    let image = out_dir.join(format!("{base}.img"));
    let bmap_path = out_dir.join(format!("{base}.img.bmap"));
    let sha_path = out_dir.join(format!("{base}.img.sha256"));
    let rootfs_out = out_dir.join(format!("{base}.rootfs.erofs"));
    let stamp = out_dir.join(format!(".{base}.build-key"));

    let mut key = KeyHasher::default();
    key.add_file("esp", esp_image)?
        .add_str("root-hash", &slot.manifest.root_hash)
        .add("layout", format!("{:?}", ctx.board.layout).as_bytes());
    let key = key.finish();

    let rootfs_sha256 = llamabox_image::sha256_file(&slot.erofs)?;
    let all_present = [&image, &bmap_path, &sha_path, &rootfs_out]
        .iter()
        .all(|p| p.exists());
    let up_to_date =
        all_present && std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str());
    let image_sha256 = if up_to_date {
        eprintln!("    up to date");
        std::fs::read_to_string(&sha_path)?
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    } else {
        let _ = std::fs::remove_file(&stamp);
        let sha256 = assemble_outputs(ctx, &key, esp_image, slot, &image, &bmap_path, &sha_path)?;
        std::fs::copy(&slot.erofs, &rootfs_out)?;
        std::fs::write(&stamp, &key)?;
        sha256
    };
    Ok(BuildOutput {
        image,
        bmap: bmap_path,
        sha256_file: sha_path,
        rootfs: rootfs_out,
        image_sha256,
        rootfs_sha256,
        reused: up_to_date,
        rootfs_trees: BTreeMap::new(),
        release: None,
    })
}

/// Writes the disk image, its `.bmap` and its `.sha256`; returns the image's SHA-256.
fn assemble_outputs(
    ctx: &Ctx,
    key: &str,
    esp_image: &Path,
    slot: &rootfs::SlotImage,
    image: &Path,
    bmap_path: &Path,
    sha_path: &Path,
) -> Result<String> {
    let root_type = ctx.board.arch.gpt_root_type();
    let written = disk::assemble(
        image,
        &disk::DiskInputs {
            esp_image,
            slot_a: slot,
            slot_b: Some(slot),
            root_type_guid: root_type,
            layout: ctx.board.layout,
            seed: key,
        },
    )?;
    // Clear the head of every partition when flashing, so leftovers on the card
    // (an old filesystem in the data partition) are not mistaken for ours.
    let heads: Vec<(u64, u64)> = written
        .partitions
        .iter()
        .map(|(_, off, _)| (*off, 1 << 20))
        .collect();
    std::fs::write(bmap_path, bmap::build(image, &heads)?)?;
    let image_sha256 = llamabox_image::sha256_file(image)?;
    std::fs::write(
        sha_path,
        format!(
            "{image_sha256}  {}\n",
            image.file_name().unwrap().to_string_lossy()
        ),
    )?;
    Ok(image_sha256)
}
