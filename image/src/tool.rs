//! Running host tools: the command is shown when it fails, with its stderr.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `cmd`, returning its stdout. On failure the error names the command and
/// carries its stderr, so a failing `mkfs.erofs` explains itself.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let output = cmd.output().with_context(|| {
        format!(
            "cannot run `{shown}` (is the tool installed? `cargo xtask setup` installs host tools)"
        )
    })?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
