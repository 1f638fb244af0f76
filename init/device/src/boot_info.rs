//! `/run/llamabox/boot`: what stage 1 learned about this boot, for stage 2 and services.
//! Plain `key=value` lines, so a shell can read it too.

use std::collections::BTreeMap;

pub const PATH: &str = "/run/llamabox/boot";

#[derive(Debug, Default, Clone)]
pub struct BootInfo(pub BTreeMap<String, String>);

impl BootInfo {
    pub fn set(&mut self, key: &str, value: impl ToString) {
        self.0.insert(key.to_string(), value.to_string());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn render(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    pub fn parse(text: &str) -> BootInfo {
        BootInfo(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn read() -> std::io::Result<BootInfo> {
        Ok(BootInfo::parse(&std::fs::read_to_string(PATH)?))
    }

    pub fn write(&self) -> std::io::Result<()> {
        std::fs::create_dir_all("/run/llamabox")?;
        std::fs::write(PATH, self.render())
    }
}
