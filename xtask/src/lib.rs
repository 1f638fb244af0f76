//! The Llama Box build tool as a library, so the boot tests can drive QEMU with the
//! same code `cargo xtask run` uses. `main.rs` only parses arguments and dispatches.

pub mod bench;
pub mod build;
pub mod cache;
pub mod cli;
pub mod config;
pub mod convert;
pub mod fetch;
pub mod flash;
pub mod fuzz;
pub mod inputs;
pub mod keys;
pub mod lock;
pub mod project;
pub mod provision;
pub mod python;
pub mod qemu;
pub mod release;
pub mod run;
pub mod serve;
pub mod setup;
pub mod stage;
pub mod suite;
pub mod web;
