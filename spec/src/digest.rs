use std::fmt;

use serde::{Deserialize, Serialize};

/// A content digest, `sha256:<64 lowercase hex digits>`, as OCI writes them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest([u8; 32]);

/// Why a string is not a valid [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
pub struct DigestError(pub String);

impl Digest {
    /// Wraps the raw 32 bytes of a sha256 sum.
    pub fn from_sha256(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 64 hex digits, without the algorithm prefix (used for file names).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, as `docker images` shows them.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    /// Parses the hex digits of a sha256 digest (no prefix).
    pub fn from_hex(hex_digits: &str) -> Result<Self, DigestError> {
        let mut out = [0u8; 32];
        if hex_digits.len() != 64
            || hex_digits.bytes().any(|b| b.is_ascii_uppercase())
            || hex::decode_to_slice(hex_digits, &mut out).is_err()
        {
            return Err(DigestError(hex_digits.to_string()));
        }
        Ok(Self(out))
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_digits = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError(s.to_string()))?;
        Self::from_hex(hex_digits).map_err(|_| DigestError(s.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Digest> for String {
    fn from(value: Digest) -> Self {
        value.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_junk() {
        let s = format!("sha256:{}", "ab".repeat(32));
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.short(), "abababababab");
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &format!("sha256:{}", "AB".repeat(32)),
            &"ab".repeat(32),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }
}
