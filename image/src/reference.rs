//! Image names: `name[:tag]` locally, `[registry/]repository[:tag|@digest]` remotely.

use std::fmt;

/// A local image name, always with a tag (`hello` means `hello:latest`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageName {
    /// Repository: lowercase path components of `[a-z0-9._-]`, separated by `/`.
    pub repository: String,
    /// Tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    pub tag: String,
}

/// Why a string is not an image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image name {name:?}: {why}")]
pub struct NameError {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl ImageName {
    /// Parses `repo[:tag]`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = |why| NameError {
            name: s.to_string(),
            why,
        };
        // A colon after the last slash separates the tag (a colon before it is a port).
        let (repository, tag) = match s.rfind(':') {
            Some(i) if !s[i..].contains('/') => (&s[..i], &s[i + 1..]),
            _ => (s, "latest"),
        };
        if repository.is_empty() || repository.len() > 255 {
            return Err(err("the repository must be 1 to 255 characters"));
        }
        for part in repository.split('/') {
            let ok = !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:".contains(&b))
                && part.as_bytes()[0].is_ascii_alphanumeric();
            if !ok {
                return Err(err(
                    "repository parts are lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
                ));
            }
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_');
        if !tag_ok {
            return Err(err(
                "the tag is 1 to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-'",
            ));
        }
        Ok(Self {
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            ImageName::parse("hello").unwrap().to_string(),
            "hello:latest"
        );
        assert_eq!(
            ImageName::parse("my-web-app:v1.2").unwrap().to_string(),
            "my-web-app:v1.2"
        );
        assert_eq!(
            ImageName::parse("localhost:5000/team/app:1")
                .unwrap()
                .repository,
            "localhost:5000/team/app"
        );
        assert_eq!(
            ImageName::parse("localhost:5000/team/app").unwrap().tag,
            "latest"
        );
        for bad in [
            "",
            "Hello",
            "a//b",
            "-a",
            "a:",
            "a:-x",
            "a:b c",
            &format!("a:{}", "x".repeat(129)),
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad}");
        }
    }
}
