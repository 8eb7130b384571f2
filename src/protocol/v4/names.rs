//! The rules of protocol 4's paths and client names (docs/protocol-v4.md, "Names and
//! paths"). The codec only checks that a name is UTF-8 of a length its field can carry; these
//! rules are the receiver's, so that a breach is a refusal that names the rule
//! (`name_refused`), not a malformed frame. The server checks every path it receives; the
//! client checks every path a server sends it, so that a server cannot make it write outside
//! its target directory.

use crate::protocol::TEMP_PREFIX;
use std::fmt;
use unicode_normalization::is_nfc;

/// The longest path, in bytes: far below `PATH_MAX` with the storage prefix in front.
pub const MAX_PATH_LEN: usize = 1024;
/// The most components a path may have: bounded work per request.
pub const MAX_PATH_COMPONENTS: usize = 32;
/// The longest component, in bytes: what a file-system name can hold.
pub const MAX_COMPONENT_LEN: usize = 255;
/// The longest client name, in bytes (protocol 3's name field without its NUL).
pub const MAX_NAME_LEN: usize = 254;

/// The rule a path or client name breaks. Its text is what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Empty.
    Empty,
    /// Longer than its limit.
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not in Unicode normalisation form C.
    NotNfc,
    /// A control character (Unicode category Cc).
    Control {
        /// Its byte offset.
        position: usize,
    },
    /// A backslash, a separator on Windows.
    Backslash,
    /// An empty component: a leading, trailing or doubled `/`.
    EmptyComponent,
    /// A component that is `.` or `..`.
    DotComponent,
    /// More components than allowed.
    TooManyComponents(usize),
    /// A component longer than a file-system name.
    ComponentTooLong(usize),
    /// A component with the prefix of the server's temporary files.
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("it is empty"),
            NameError::TooLong { len, max } => {
                write!(f, "it is {len} bytes long; at most {max} are allowed")
            }
            NameError::NotNfc => f.write_str(
                "it is not in Unicode normalisation form C (NFC); normalise it before sending",
            ),
            NameError::Control { position } => {
                write!(f, "it has a control character at byte {position}")
            }
            NameError::Backslash => f.write_str("it has a backslash, which is not allowed"),
            NameError::EmptyComponent => f.write_str(
                "it has an empty component (a leading, trailing or doubled /): paths are relative",
            ),
            NameError::DotComponent => f.write_str("it has a . or .. component"),
            NameError::TooManyComponents(n) => {
                write!(f, "it has {n} components; at most {MAX_PATH_COMPONENTS} are allowed")
            }
            NameError::ComponentTooLong(len) => write!(
                f,
                "a component is {len} bytes long; at most {MAX_COMPONENT_LEN} are allowed"
            ),
            NameError::Reserved => {
                write!(f, "a component starts with {TEMP_PREFIX}, which the server reserves")
            }
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a path against every rule of "Names and paths".
pub fn check_path(path: &str) -> Result<(), NameError> {
    check_text(path, MAX_PATH_LEN)?;
    if path.contains('\\') {
        return Err(NameError::Backslash);
    }
    let mut count = 0;
    for component in path.split('/') {
        count += 1;
        match component {
            "" => return Err(NameError::EmptyComponent),
            "." | ".." => return Err(NameError::DotComponent),
            c if c.len() > MAX_COMPONENT_LEN => return Err(NameError::ComponentTooLong(c.len())),
            c if c.starts_with(TEMP_PREFIX) => return Err(NameError::Reserved),
            _ => {}
        }
    }
    if count > MAX_PATH_COMPONENTS {
        return Err(NameError::TooManyComponents(count));
    }
    Ok(())
}

/// Checks a client name (`REGISTER`): NFC, 1 to 254 bytes, no control characters.
pub fn check_client_name(name: &str) -> Result<(), NameError> {
    check_text(name, MAX_NAME_LEN)
}

/// The rules names and paths share: not empty, within `max` bytes, no control character,
/// NFC. Control characters are checked before NFC so that the message names the more
/// telling breach.
fn check_text(text: &str, max: usize) -> Result<(), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.len() > max {
        return Err(NameError::TooLong { len: text.len(), max });
    }
    if let Some((position, _)) = text.char_indices().find(|(_, c)| c.is_control()) {
        return Err(NameError::Control { position });
    }
    if !is_nfc(text) {
        return Err(NameError::NotNfc);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_and_folders_pass() {
        for ok in ["a", "report.pdf", "photos/2026/ski.jpg", "Ünïcödé/naïve café.txt", "a b/c"]
        {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn each_rule_is_named() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/abs", NameError::EmptyComponent),
            ("dir/", NameError::EmptyComponent),
            ("a//b", NameError::EmptyComponent),
            ("..", NameError::DotComponent),
            ("a/../b", NameError::DotComponent),
            ("./a", NameError::DotComponent),
            ("a\\b", NameError::Backslash),
            ("a\nb", NameError::Control { position: 1 }),
            ("a\u{85}b", NameError::Control { position: 1 }),
            ("a/.securexfer-part-1", NameError::Reserved),
            // "e" and a combining acute accent: NFD, not NFC.
            ("cafe\u{301}", NameError::NotNfc),
        ];
        for (path, error) in cases {
            assert_eq!(check_path(path).as_ref(), Err(error), "{path:?}");
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn the_limits_are_inclusive() {
        let component = "x".repeat(MAX_COMPONENT_LEN);
        assert_eq!(check_path(&component), Ok(()));
        assert_eq!(
            check_path(&format!("{component}y")),
            Err(NameError::ComponentTooLong(MAX_COMPONENT_LEN + 1))
        );
        let deep = vec!["d"; MAX_PATH_COMPONENTS].join("/");
        assert_eq!(check_path(&deep), Ok(()));
        assert_eq!(
            check_path(&format!("{deep}/d")),
            Err(NameError::TooManyComponents(MAX_PATH_COMPONENTS + 1))
        );
        let long = vec!["x".repeat(200); 6].join("/");
        assert_eq!(check_path(&long), Err(NameError::TooLong { len: 1205, max: MAX_PATH_LEN }));
        assert_eq!(check_client_name(&"n".repeat(MAX_NAME_LEN)), Ok(()));
        assert!(check_client_name(&"n".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn client_names_may_hold_slashes_but_no_control_characters() {
        assert_eq!(check_client_name("alice/laptop"), Ok(()));
        assert_eq!(check_client_name("Zoë"), Ok(()));
        assert_eq!(check_client_name("a\tb"), Err(NameError::Control { position: 1 }));
        assert_eq!(check_client_name("Zoe\u{308}"), Err(NameError::NotNfc));
    }

    /// Every name protocol 3 can store (what `storage_name` keeps of what a client sent)
    /// is a protocol-4 path, so protocol-3 files list unchanged.
    #[test]
    fn every_name_protocol_3_stores_is_a_path() {
        let mut sent: Vec<String> = (0x20u8..0x7f).map(|b| format!("f{}g", b as char)).collect();
        sent.extend(["C:\\dir\\f.txt", "/home/u/f.txt", "C:f.txt", "..x", "x.."].map(String::from));
        sent.push("n".repeat(254));
        for name in &sent {
            if let Ok(stored) = crate::protocol::storage_name(name) {
                assert_eq!(check_path(stored), Ok(()), "{name:?} stored as {stored:?}");
            }
        }
    }
}
