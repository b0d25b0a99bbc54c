//! Relative paths taken from untrusted input (annotations, tar entries) and proven to stay
//! inside the directory they are joined to: no absolute paths, no `..`, no NUL, no empty names.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A normalised relative path with at least one normal component.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SafePath(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsafe path {path:?}: {reason}")]
pub struct UnsafePath {
    pub path: String,
    pub reason: &'static str,
}

impl SafePath {
    pub fn new(raw: &str) -> Result<Self, UnsafePath> {
        let refuse = |reason| UnsafePath {
            path: raw.chars().take(200).collect(),
            reason,
        };
        if raw.is_empty() {
            return Err(refuse("empty"));
        }
        if raw.len() > 4096 {
            return Err(refuse("longer than 4096 bytes"));
        }
        if raw.contains('\0') {
            return Err(refuse("contains a NUL byte"));
        }
        if raw.starts_with('/') || raw.starts_with('\\') {
            return Err(refuse("absolute paths are not allowed"));
        }
        if raw.contains('\\') {
            return Err(refuse("backslashes are not allowed"));
        }
        let mut parts: Vec<&str> = Vec::new();
        for component in Path::new(raw).components() {
            match component {
                Component::Normal(part) => {
                    let part = part.to_str().ok_or_else(|| refuse("not UTF-8"))?;
                    if part.len() > 255 {
                        return Err(refuse("a component is longer than 255 bytes"));
                    }
                    parts.push(part);
                }
                Component::CurDir => {}
                Component::ParentDir => return Err(refuse("'..' components are not allowed")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refuse("absolute paths are not allowed"))
                }
            }
        }
        if parts.is_empty() {
            return Err(refuse("names no file"));
        }
        Ok(SafePath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `root/self`; safe because `self` has no `..` and is relative.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// The first component (the top-level entry this path creates).
    pub fn top(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for SafePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SafePath {
    type Error = UnsafePath;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        SafePath::new(&value)
    }
}

impl From<SafePath> for String {
    fn from(value: SafePath) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(SafePath::new("model.gguf").unwrap().as_str(), "model.gguf");
        assert_eq!(SafePath::new("./a//b/./c").unwrap().as_str(), "a/b/c");
        assert_eq!(SafePath::new("a/b/").unwrap().top(), "a");
    }

    #[test]
    fn refuses_escapes() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a/..",
            ".",
            "./",
            "a\0b",
            "..\\x",
            "\\abs",
        ] {
            assert!(SafePath::new(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
