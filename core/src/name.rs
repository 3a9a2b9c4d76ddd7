//! File names are names, never paths: validated before they reach any store.

use crate::limits::NAME_MAX_BYTES;

/// Why a file name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("file name is empty")]
    Empty,
    /// The name is longer than 255 bytes.
    #[error("file name is longer than {NAME_MAX_BYTES} bytes")]
    TooLong,
    /// The name contains `/` or `\`.
    #[error("file name {0:?} contains a path separator ('/' or '\\')")]
    Separator(String),
    /// The name contains `..`.
    #[error("file name {0:?} contains '..'")]
    DotDot(String),
    /// The name contains a control character (NUL, newline...).
    #[error("file name {0:?} contains a control character")]
    Control(String),
}

/// Check that `name` is a plain name: non-empty, at most 255 bytes, no `/`,
/// `\`, `..` or control characters.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(NameError::TooLong);
    }
    if name.contains('/') || name.contains('\\') {
        return Err(NameError::Separator(name.to_string()));
    }
    if name.contains("..") {
        return Err(NameError::DotDot(name.to_string()));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every shape of path-like name is refused; ordinary names pass.
    #[test]
    fn names_are_not_paths() {
        for bad in ["", "a/b", "/etc", "a\\b", "..", "x..y", "a\nb", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(validate_name(&"n".repeat(256)), Err(NameError::TooLong));
        for good in ["report.pdf", "a b c", "été.txt", ".hidden", "x.y.z"] {
            assert_eq!(validate_name(good), Ok(()), "{good:?} refused");
        }
    }
}
