//! Model versions: `MAJOR.MINOR.PATCH`, compared as numbers (1.10.0 is newer than 1.9.0).
//! A leaf module: the manifest, the trust metadata, the server's repository and the
//! agent's update rules all order versions with this one type.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A parsed `MAJOR.MINOR.PATCH` version; ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible change.
    pub major: u64,
    /// New labels or backbone.
    pub minor: u64,
    /// Retrained head.
    pub patch: u64,
}

/// Why a version string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a version: expected MAJOR.MINOR.PATCH, e.g. 1.2.0")]
pub struct VersionError(pub String);

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Version, VersionError> {
        parse_version(s)
            .map(|(major, minor, patch)| Version {
                major,
                minor,
                patch,
            })
            .ok_or_else(|| VersionError(s.chars().take(64).collect()))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `MAJOR.MINOR.PATCH` (pre-release and build suffixes are not accepted).
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    let c = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((a, b, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_numbers_and_round_trip() {
        let a: Version = "1.9.0".parse().unwrap();
        let b: Version = "1.10.0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1.10.0");
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"1.10.0\"");
        assert!("1.2".parse::<Version>().is_err());
        assert!("1.2.3-rc1".parse::<Version>().is_err());
        assert!(serde_json::from_str::<Version>("\"x\"").is_err());
    }
}
