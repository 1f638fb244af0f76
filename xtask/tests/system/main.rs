//! System tests: the built image, booted in QEMU (TCG) and driven from the host; the
//! image-level checks (boards, flashing, reproducibility); and the device's update
//! client against repositories the build tool publishes; the web app in Chromium against
//! the real gateway and services on the host.
//!
//! One test binary, not one per file: libtest then runs these slow, mostly
//! single-core tests two at a time across all of them (a binary with one test would
//! leave a core idle), the harness (`common/`) is compiled and linked once, and one
//! `BUILD_LOCK` covers every image the tests build. Pick a file's tests with its
//! module name: `cargo test -p xtask --test system update::`.

mod common;

mod audio;
mod boards;
mod boot;
mod egress;
mod flash;
mod inference;
mod load;
mod models;
mod phone_link;
mod release_check;
mod reproducible;
mod supervision;
mod update;
mod update_client;
mod web_app;
