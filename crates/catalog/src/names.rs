//! Names users type for instances, snapshots and regions, checked once at the boundary.
//!
//! Instance and snapshot names are shown in listings and typed on command lines, so the
//! rules refuse what would be confusing or dangerous there: path separators and `..`
//! (in case a name ever reaches a path), control and invisible characters (names that
//! print alike but differ, terminal escapes), a leading `-` (looks like an option), and
//! surrounding whitespace. Everything else is accepted, including unicode look-alikes of
//! `/` such as U+2215 DIVISION SLASH and U+FF0F FULLWIDTH SOLIDUS, and text like `%2e%2e`:
//! these are plain characters to every filesystem and store, and object keys never embed
//! names anyway — they use snapshot ids.

use crate::Error;
use crate::error::clip;

/// Longest instance or snapshot name, in bytes of UTF-8 (a common filename limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Longest region name, in characters.
pub const MAX_REGION_CHARS: usize = 32;

/// Checks a user-typed instance or snapshot name; `kind` ("instance", "snapshot") goes
/// into the error.
pub fn validate_name(kind: &str, name: &str) -> Result<(), Error> {
    let why = if name.is_empty() {
        Some("a name cannot be empty".to_string())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!(
            "a name can be at most {MAX_NAME_BYTES} bytes long, this one is {}",
            name.len()
        ))
    } else if let Some(c) = name.chars().find(|&c| is_hidden(c)) {
        Some(format!(
            "a name cannot contain control or invisible characters ({})",
            c.escape_unicode()
        ))
    } else if name.contains(['/', '\\']) {
        Some("a name cannot contain '/' or '\\'".to_string())
    } else if name.contains("..") || name == "." {
        Some("a name cannot be '.' or contain '..'".to_string())
    } else if name.starts_with('-') {
        Some("a name cannot start with '-', which reads as a command-line option".to_string())
    } else if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        Some("a name cannot start or end with whitespace".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::InvalidName {
            kind: kind.to_string(),
            name: format!("{:?}", clip(name)),
            why,
        }),
    }
}

/// Checks a region name: lowercase ASCII letters, digits and `-`, 1 to 32 characters,
/// starting with a letter (so it is safe in paths, URLs and bucket names).
pub fn validate_region(name: &str) -> Result<(), Error> {
    let why = if name.is_empty() {
        Some("a region name cannot be empty".to_string())
    } else if name.len() > MAX_REGION_CHARS {
        Some(format!(
            "a region name can be at most {MAX_REGION_CHARS} characters long"
        ))
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("a region name must start with a lowercase letter".to_string())
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("a region name can hold only lowercase letters, digits and '-'".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::InvalidName {
            kind: "region".to_string(),
            name: format!("{:?}", clip(name)),
            why,
        }),
    }
}

/// Control characters (C0, DEL, C1) and the invisible formatting characters that make two
/// names print alike: zero-width characters, bidirectional overrides and isolates, the
/// line and paragraph separators, and the byte-order mark.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str) -> String {
        match validate_name("snapshot", name) {
            Err(Error::InvalidName { kind, why, .. }) => {
                assert_eq!(kind, "snapshot");
                why
            }
            other => panic!("{name:?} gave {other:?}"),
        }
    }

    #[test]
    fn refuses_paths_and_traversal() {
        assert!(refused("../x").contains('/'));
        assert!(refused("a/b").contains('/'));
        assert!(refused("a\\b").contains('\\'));
        assert!(refused("..").contains(".."));
        assert!(refused(".").contains("'.'"));
        assert!(refused("a..b").contains(".."));
    }

    #[test]
    fn refuses_control_and_invisible_characters() {
        assert!(refused("a\0b").contains("control"));
        assert!(refused("\u{7}").contains("control"));
        assert!(refused("a\u{7f}").contains("control"));
        assert!(refused("a\u{85}b").contains("control"));
        assert!(refused("a\tb").contains("control"));
        assert!(refused("a\nb").contains("control"));
        assert!(refused("evil\u{202E}gpj.exe").contains("invisible"));
        assert!(refused("a\u{200B}b").contains("invisible"));
    }

    #[test]
    fn refuses_length_flags_and_padding() {
        assert!(refused("").contains("empty"));
        assert!(refused(&"a".repeat(256)).contains("at most 255 bytes"));
        validate_name("snapshot", &"a".repeat(255)).unwrap();
        // 128 two-byte characters: 128 characters but 256 bytes.
        assert!(refused(&"é".repeat(128)).contains("at most 255 bytes"));
        assert!(refused("-x").contains("option"));
        assert!(refused(" x").contains("whitespace"));
        assert!(refused("x ").contains("whitespace"));
        assert!(refused("x\u{3000}").contains("whitespace"));
    }

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "web-1",
            "nightly 2026-11-26",
            "ünïcødé",
            "db_primary.v2",
            "user@host:backup+1",
            "x-",
            "a.b",
            "快照",
            // Look-alikes and encodings are plain characters (see the module docs).
            "a\u{2215}b",
            "a\u{FF0F}b",
            "%2e%2e",
        ] {
            validate_name("instance", name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
    }

    #[test]
    fn error_escapes_and_truncates_the_name() {
        let long = format!("\u{7}{}", "a".repeat(300));
        let e = validate_name("instance", &long).unwrap_err();
        let Error::InvalidName { name, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(name.starts_with("\"\\u{7}aaa"), "{name}");
        assert!(name.chars().count() < 100, "{name}");
        assert!(!e.to_string().contains('\u{7}'));
    }

    #[test]
    fn regions() {
        for ok in ["it-1", "de-1", "nl-1", "a", "us-east-2", &"a".repeat(32)] {
            validate_region(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in [
            "",
            "1a",
            "-a",
            "IT-1",
            "it_1",
            "it 1",
            "it/1",
            "ìt",
            &"a".repeat(33),
        ] {
            let e = validate_region(bad).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidName { kind, .. } if kind == "region"),
                "{bad:?}: {e:?}"
            );
        }
    }
}
