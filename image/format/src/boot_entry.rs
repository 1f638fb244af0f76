//! Names of the per-slot boot entries (unified kernel images) on the ESP.
//!
//! `EFI/Linux/llamabox-<generation>-<slot>[+<tries-left>[-<tries-done>]].efi`
//!
//! systemd-boot's automatic boot assessment reads the `+left-done` counter, decrements
//! it on every attempt and sorts entries with no tries left after all others. Among the
//! rest it prefers the newest version and then the highest file name, so the install
//! generation in the name makes the most recently installed slot the default and the
//! other slot the fallback. Invariant: the ESP holds at most one entry per slot.

use std::fmt;

pub const PREFIX: &str = "llamabox-";
pub const DIRECTORY: &str = "EFI/Linux";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// GPT partition label of the slot's root filesystem partition.
    pub fn partition_label(self) -> &'static str {
        match self {
            Slot::A => "llamabox-a",
            Slot::B => "llamabox-b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Boot counter as systemd-boot writes it: `+left` or `+left-done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub generation: u64,
    pub slot: Slot,
    /// `None` once the slot is blessed (known good).
    pub counter: Option<Counter>,
}

impl BootEntry {
    /// A freshly installed entry that gets `tries` attempts before the bootloader gives up on it.
    pub fn new_trial(generation: u64, slot: Slot, tries: u32) -> BootEntry {
        BootEntry {
            generation,
            slot,
            counter: Some(Counter {
                left: tries,
                done: None,
            }),
        }
    }

    pub fn parse(file_name: &str) -> Option<BootEntry> {
        let stem = file_name.strip_prefix(PREFIX)?.strip_suffix(".efi")?;
        let (base, counter) = match stem.split_once('+') {
            None => (stem, None),
            Some((base, counter)) => {
                let (left, done) = match counter.split_once('-') {
                    None => (counter.parse().ok()?, None),
                    Some((l, d)) => (l.parse().ok()?, Some(d.parse().ok()?)),
                };
                (base, Some(Counter { left, done }))
            }
        };
        let (generation, slot) = base.rsplit_once('-')?;
        Some(BootEntry {
            generation: generation.parse().ok()?,
            slot: Slot::parse(slot)?,
            counter,
        })
    }

    pub fn file_name(&self) -> String {
        let mut name = format!("{PREFIX}{}-{}", self.generation, self.slot);
        match self.counter {
            None => {}
            Some(Counter { left, done: None }) => name += &format!("+{left}"),
            Some(Counter {
                left,
                done: Some(done),
            }) => name += &format!("+{left}-{done}"),
        }
        name + ".efi"
    }

    /// Path relative to the ESP root.
    pub fn path(&self) -> String {
        format!("{DIRECTORY}/{}", self.file_name())
    }

    /// On trial: not blessed yet, so the bootloader counts its attempts. That includes
    /// `+0-N`: the last try boots under that name (systemd-boot decrements before it
    /// boots), and an entry with no tries left still boots when nothing else can.
    pub fn is_on_trial(&self) -> bool {
        self.counter.is_some()
    }

    /// The entry once the running system has been judged healthy.
    pub fn blessed(&self) -> BootEntry {
        BootEntry {
            counter: None,
            ..self.clone()
        }
    }

    /// The entry with no tries left: systemd-boot sorts it last, so the other slot boots.
    pub fn marked_bad(&self) -> BootEntry {
        let done = match self.counter {
            Some(c) => c.done.unwrap_or(0) + 1,
            None => 1,
        };
        BootEntry {
            counter: Some(Counter {
                left: 0,
                done: Some(done),
            }),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "llamabox-2-a.efi",
            "llamabox-1-b+3.efi",
            "llamabox-17-a+2-1.efi",
            "llamabox-3-b+0-3.efi",
        ] {
            assert_eq!(BootEntry::parse(name).unwrap().file_name(), name);
        }
    }

    #[test]
    fn foreign_names_are_ignored() {
        for name in [
            "systemd-bootx64.efi",
            "llamabox-x-a.efi",
            "llamabox-1-c.efi",
            "llamabox-1-a+x.efi",
        ] {
            assert_eq!(BootEntry::parse(name), None, "{name}");
        }
    }

    #[test]
    fn bless_and_mark_bad() {
        let e = BootEntry::parse("llamabox-2-a+2-1.efi").unwrap();
        assert!(e.is_on_trial());
        assert_eq!(e.blessed().file_name(), "llamabox-2-a.efi");
        assert_eq!(e.marked_bad().file_name(), "llamabox-2-a+0-2.efi");
        // The last try boots as +0-N: still to be judged, like the earlier ones.
        assert!(e.marked_bad().is_on_trial());
        assert!(!e.blessed().is_on_trial());
        assert_eq!(
            BootEntry::parse("llamabox-2-a.efi")
                .unwrap()
                .marked_bad()
                .file_name(),
            "llamabox-2-a+0-1.efi"
        );
    }
}
