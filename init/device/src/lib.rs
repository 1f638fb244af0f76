//! What the programs on a box share besides the formats the builder writes
//! (`llamabox-format`): what stage 1 recorded about this boot, the ESP and the
//! partitions, and the D-Bus contract between the supervisor, the services and the CLI.
//!
//! Services and the CLI depend on this crate, never on `llamabox-init` (PID 1's crate).
#![forbid(unsafe_code)]

pub mod block;
pub mod boot_info;
pub mod bus;
pub mod esp;
pub mod fs;
