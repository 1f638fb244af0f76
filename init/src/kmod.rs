//! Loading the kernel modules the initramfs carries.
//!
//! The build resolved their dependency closure (including soft dependencies such as
//! `crc32c` before `libcrc32c`) from the modules' own `.modinfo` and wrote the load order
//! to `/lib/modules/load-order`, one file name per line, dependencies first.

use std::ffi::CString;
use std::fs::File;

use nix::kmod::{finit_module, ModuleInitFlags};

pub const LOAD_ORDER: &str = "/lib/modules/load-order";
const DIRECTORY: &str = "/lib/modules";

/// Loads every module in the load order. A module that is already loaded is fine;
/// any other failure is returned with the module's name.
pub fn load_all() -> Result<usize, String> {
    let order = std::fs::read_to_string(LOAD_ORDER)
        .map_err(|e| format!("cannot read {LOAD_ORDER}: {e}"))?;
    let mut loaded = 0;
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = format!("{DIRECTORY}/{name}");
        let file = File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
        let params = CString::default();
        match finit_module(&file, &params, ModuleInitFlags::empty()) {
            Ok(()) => loaded += 1,
            Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("cannot load module {name}: {e}")),
        }
    }
    Ok(loaded)
}
