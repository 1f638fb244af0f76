//! System tests: the built image, booted in QEMU (TCG) and driven from the host, plus
//! the image-level checks (boards, flashing, reproducibility).
//!
//! One test binary, not one per file: libtest then runs these slow, mostly
//! single-core tests two at a time across all of them (a binary with one test would
//! leave a core idle), the harness (`common/`) is compiled and linked once, and one
//! `BUILD_LOCK` covers every image the tests build. Pick a file's tests with its
//! module name: `cargo test -p xtask --test system update::`.

#[path = "../../../services/gateway/tests/common/browser.rs"]
mod browser;
mod common;

mod audio;
mod boards;
mod boot;
mod flash;
mod inference;
mod phone_link;
mod reproducible;
mod supervision;
mod update;
