//! Image versions: dotted numbers (`0.1.0`, `2026.11.3`), compared numerically.
//!
//! The anti-rollback floor compares them, so the order must be total and obvious:
//! no pre-release tags, no build metadata, at most four components.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone)]
pub struct Version(Vec<u64>);

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a version: expected 1 to 4 dot-separated numbers, such as 0.2.0")]
pub struct VersionError(pub String);

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Result<Vec<u64>, _> = s
            .split('.')
            .map(|p| {
                if p.is_empty() || p.len() > 18 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    Err(VersionError(s.to_string()))
                } else {
                    p.parse().map_err(|_| VersionError(s.to_string()))
                }
            })
            .collect();
        let parts = parts?;
        if parts.len() > 4 {
            return Err(VersionError(s.to_string()));
        }
        Ok(Version(parts))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Missing components count as zero: 1.2 == 1.2.0.
        let len = self.0.len().max(other.0.len());
        let at = |v: &Version, i: usize| v.0.get(i).copied().unwrap_or(0);
        (0..len)
            .map(|i| at(self, i).cmp(&at(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("0.10.0") > v("0.9.9"));
        assert_eq!(v("1.0"), v("1.0.0"));
        assert!(v("2026.11.3") > v("2026.11"));
        assert_eq!(v("1.2").cmp(&v("1.2.0")), Ordering::Equal);
    }

    #[test]
    fn non_versions_are_refused() {
        for bad in ["", "1..2", "v1.0", "1.0-rc1", "1.2.3.4.5", "-1", "1.0 "] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }
}
