//! Two builds from the same inputs, each with an empty cache and output directory,
//! must produce byte-identical root filesystems and disk images.

use xtask::build::{self, BuildOptions};
use xtask::project::Project;

#[test]
fn two_clean_builds_are_byte_identical() {
    let project = Project::locate();
    let board = std::env::var("LLAMABOX_TEST_BOARD").unwrap_or_else(|_| "qemu-x86_64".into());
    let root = project.build_dir().join("tests").join("reproducible");
    let _ = std::fs::remove_dir_all(&root);
    let mut outputs = Vec::new();
    for run in ["first", "second"] {
        let options = BuildOptions {
            board: board.clone(),
            image: build::DEFAULT_IMAGE.into(),
            out_dir: Some(root.join(run).join("out")),
            cache_dir: Some(root.join(run).join("cache")),
            inputs: Default::default(),
        };
        outputs.push(build::build(&project, &options).unwrap());
    }
    let (a, b) = (&outputs[0], &outputs[1]);
    assert!(
        !a.reused && !b.reused,
        "both builds must start from empty directories"
    );
    assert_eq!(
        a.rootfs_sha256, b.rootfs_sha256,
        "root filesystem images differ"
    );
    assert_eq!(
        llamabox_image::sha256_file(&a.rootfs).unwrap(),
        llamabox_image::sha256_file(&b.rootfs).unwrap()
    );
    assert_eq!(a.image_sha256, b.image_sha256, "disk images differ");
    assert_eq!(
        llamabox_image::sha256_file(&a.image).unwrap(),
        llamabox_image::sha256_file(&b.image).unwrap()
    );
    assert_eq!(
        std::fs::read(&a.bmap).unwrap(),
        std::fs::read(&b.bmap).unwrap()
    );
    let _ = std::fs::remove_dir_all(&root);
}
