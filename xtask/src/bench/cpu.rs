//! How much of the CPU other processes took while the servers were measured: both
//! sides are measured alternately, but a compiler on one of two cores still halves the
//! figures, and the report should say so.

/// CPU time in clock ticks, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
struct Ticks {
    /// All CPUs: time spent not idle.
    busy: u64,
    /// All CPUs: all time.
    total: u64,
    /// The benchmark itself and the servers.
    ours: u64,
}

pub struct Meter {
    start: Ticks,
}

impl Meter {
    pub fn start(pids: &[u32]) -> Meter {
        Meter {
            start: sample(pids),
        }
    }

    /// The share of all CPUs' time since `start` that went to other processes; `pids`
    /// (the servers) must still be running.
    pub fn others_share(&self, pids: &[u32]) -> Option<f64> {
        let end = sample(pids);
        let total = end.total.checked_sub(self.start.total)?;
        let busy = end.busy.checked_sub(self.start.busy)?;
        let ours = end.ours.checked_sub(self.start.ours)?;
        (total > 0).then(|| busy.saturating_sub(ours) as f64 / total as f64)
    }
}

fn sample(pids: &[u32]) -> Ticks {
    let (busy, total) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| system_ticks(&s))
        .unwrap_or_default();
    let ours = process_ticks("self")
        + pids
            .iter()
            .map(|p| process_ticks(&p.to_string()))
            .sum::<u64>();
    Ticks { busy, total, ours }
}

/// (busy, total) from the `cpu` line of /proc/stat: user nice system idle iowait irq
/// softirq steal …; idle time is idle + iowait.
fn system_ticks(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // guest time is already counted in user time.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// utime + stime of a process (all its threads) and of its children it has waited for
/// (the voice benchmark runs its sides as short-lived children), 0 if it is gone.
fn process_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; the fields after it are fixed.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12) + field(13) + field(14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_stat() {
        let stat = "cpu  100 5 20 800 10 1 2 3 0 0\ncpu0 50 2 10 400 5 0 1 1 0 0\n";
        assert_eq!(system_ticks(stat), Some((131, 941)));
        assert_eq!(system_ticks("intr 1 2 3\n"), None);
    }

    #[test]
    fn counts_this_process() {
        assert!(process_ticks("self") < u64::MAX);
        assert_eq!(process_ticks("0"), 0);
    }
}
