use std::fmt;

use serde::{Deserialize, Serialize};

/// The name of an app: a DNS label (RFC 1123), because it becomes the host
/// `<name>.<domain>` under which the ingress serves the app.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

/// Why a string is not a valid [`AppName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("app name is empty")]
    Empty,
    /// Longer than a DNS label may be.
    #[error("app name {name:?} is {len} characters long; at most 63 are allowed")]
    TooLong {
        /// The offending name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// A character outside `a-z`, `0-9` and `-`.
    #[error(
        "app name {name:?} has {ch:?} at position {pos}; use lowercase letters, digits and '-'"
    )]
    BadChar {
        /// The offending name.
        name: String,
        /// The first bad character.
        ch: char,
        /// Its position (0-based, in characters).
        pos: usize,
    },
    /// Starts or ends with a hyphen.
    #[error("app name {0:?} must start and end with a letter or digit")]
    Hyphen(String),
}

impl AppName {
    /// Validates `name` as a DNS label: 1 to 63 characters of `a-z`, `0-9` and `-`, not
    /// starting or ending with `-`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > 63 {
            let len = name.chars().count();
            return Err(NameError::TooLong { name, len });
        }
        if let Some((pos, ch)) = name
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::BadChar { name, ch, pos });
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(NameError::Hyphen(name));
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AppName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<AppName> for String {
    fn from(value: AppName) -> Self {
        value.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AppName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "hello", "hello-world", "a1", "1a", &"x".repeat(63)] {
            assert_eq!(AppName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(AppName::new(""), Err(NameError::Empty));
        assert!(matches!(
            AppName::new("x".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
        assert!(matches!(
            AppName::new("Hello"),
            Err(NameError::BadChar {
                ch: 'H',
                pos: 0,
                ..
            })
        ));
        assert!(matches!(
            AppName::new("a.b"),
            Err(NameError::BadChar { ch: '.', .. })
        ));
        assert!(matches!(
            AppName::new("a_b"),
            Err(NameError::BadChar { ch: '_', .. })
        ));
        assert!(matches!(
            AppName::new("../x"),
            Err(NameError::BadChar { .. })
        ));
        assert!(matches!(AppName::new("-a"), Err(NameError::Hyphen(_))));
        assert!(matches!(AppName::new("a-"), Err(NameError::Hyphen(_))));
        let msg = AppName::new("Bad_Name").unwrap_err().to_string();
        assert!(
            msg.contains("Bad_Name") && msg.contains("lowercase"),
            "{msg}"
        );
    }
}
