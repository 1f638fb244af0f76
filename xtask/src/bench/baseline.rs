//! The CPU baseline a benchmark builds both sides for: our service and the reference
//! (llama.cpp's tools, whisper-cli) get the same ggml flags, so ratios compare code, not
//! instruction sets. The default on x86_64 is x86-64-v3 (AVX2, FMA, F16C): what any x86
//! machine of the last decade runs, and what an x86 appliance would ship. The image's
//! x86-64-v2 is the QEMU test vehicle's (TCG emulates AVX2 slowly) and makes Whisper base
//! five times slower (docs/perf.md); `--cpu-baseline x86-64-v2` measures it.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::config::Arch;
use crate::project::Project;

#[derive(Debug, Clone)]
pub struct CpuBaseline {
    arch: Arch,
    name: String,
}

impl CpuBaseline {
    /// `name`, or the default for the host's architecture; checked against what the
    /// host can run (a benchmark runs where it builds).
    pub fn for_host(name: Option<&str>) -> Result<CpuBaseline> {
        let Some(arch) = Arch::parse(std::env::consts::ARCH) else {
            bail!(
                "benchmarks run on x86_64 or aarch64 hosts, not {}",
                std::env::consts::ARCH
            );
        };
        let name = match (arch, name) {
            (_, Some(name)) => name.to_string(),
            (Arch::X86_64, None) => "x86-64-v3".to_string(),
            (Arch::Aarch64, None) => arch.default_cpu_baseline().to_string(),
        };
        if arch == Arch::X86_64 {
            if !["x86-64-v2", "x86-64-v3"].contains(&name.as_str()) {
                bail!("unknown x86_64 CPU baseline `{name}` (known: x86-64-v2, x86-64-v3)");
            }
            if name == "x86-64-v3" && !host_has_avx2() {
                bail!("this CPU has no AVX2, so it cannot run x86-64-v3 code: pass --cpu-baseline x86-64-v2");
            }
        }
        Ok(CpuBaseline { arch, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `GGML_*` variables llama-cpp-sys-2 and whisper-rs-sys pass to CMake.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        crate::build::ggml_baseline_env(self.arch, &self.name)
    }

    /// The same settings as CMake flags, for the reference builds.
    pub fn cmake_flags(&self) -> Vec<String> {
        self.env()
            .into_iter()
            .map(|(name, value)| format!("-D{name}={value}"))
            .collect()
    }

    /// Cargo's target directory for our side's build (one per baseline, like boards').
    pub fn target_dir(&self, project: &Project) -> PathBuf {
        crate::build::crate_target_dir(project, self.arch, &self.name)
    }
}

fn host_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
