//! Files the image builder writes into an image and the device reads: one definition
//! for both sides. Absolute paths as the device sees them; the builder writes them
//! under its staging tree with [`in_tree`].

/// The board the image was built for (`qemu-x86_64`, `lx2160a-honeycomb`, …), one line.
/// Stage 1 and the update service match bundles and device trees against it.
pub const BOARD: &str = "/etc/llamabox/board";
/// The update repository's root metadata the image trusts (TUF-style `root.json`).
pub const UPDATE_ROOT: &str = "/etc/llamabox/update/root.json";
/// Boot attempts the bootloader gives a new slot (the board's `tries`), one number.
pub const BOOT_TRIES: &str = "/etc/llamabox/update/boot-tries";
/// The health gate's grace period and deadline (TOML), read by init.
pub const HEALTH: &str = "/etc/llamabox/health.toml";
/// When the image's source was committed (RFC 3339, one line; `SOURCE_DATE_EPOCH` when
/// set): the earliest "now" the update client believes, so a box without a real-time
/// clock that wakes up in 1970 still refuses metadata that expired before its image.
pub const IMAGE_TIME: &str = "/etc/llamabox/image-time";
/// Keys trusted to sign root filesystems (in the initramfs): `<key id>.pub` files.
pub const TRUSTED_KEYS: &str = "/etc/llamabox/trusted-keys";

/// `path` relative to a root filesystem tree: `/etc/x` → `etc/x`.
pub fn in_tree(path: &str) -> &str {
    path.trim_start_matches('/')
}
/// The default-deny nftables ruleset PID 1 loads; the update client opens its mirror sets
/// only where it is installed (docs/privacy.md).
pub const FIREWALL_RULESET: &str = "/usr/lib/llamabox/firewall.nft";
/// Models pulled as signed updates, on the data partition: written by the update service
/// only, read by inference and voice (docs/models.md).
pub const MODEL_STORE: &str = "/var/lib/llamabox/models";
