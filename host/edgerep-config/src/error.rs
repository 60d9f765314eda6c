//! [`ConfigError`] and the helpers that turn byte offsets and TOML paths into what it reports.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Why a configuration file was refused: which file, which key (if one is to blame), where in the
/// file (if known) and what is wrong.
///
/// Displays as `<file>[:<line>:<column>]: [key `<key>`: ]<message>`, e.g.
/// ``/etc/edgerep.toml:12:11: key `limits.max_key_bytes`: must be greater than 0``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}{message}", .file.display(), LineCol(.line_col), KeyPart(.key))]
pub struct ConfigError {
    /// The configuration file, as the caller named it.
    pub file: PathBuf,
    /// The dotted path of the offending key (`peers[1].address`, `limits.max_key_bytes`), if the
    /// error is about one key.
    pub key: Option<String>,
    /// 1-based line and column (in characters) of the offending text, when known.
    pub line_col: Option<(usize, usize)>,
    /// What is wrong: lowercase, no trailing period.
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole (cannot read it, and the like).
    pub(crate) fn file(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            key: None,
            line_col: None,
            message: message.into(),
        }
    }
}

/// Renders the `:line:col` part of a [`ConfigError`], or nothing.
struct LineCol<'a>(&'a Option<(usize, usize)>);

impl fmt::Display for LineCol<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, col)) => write!(f, ":{line}:{col}"),
            None => Ok(()),
        }
    }
}

/// Renders the ``key `…`: `` part of a [`ConfigError`], or nothing.
struct KeyPart<'a>(&'a Option<String>);

impl fmt::Display for KeyPart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "key `{key}`: "),
            None => Ok(()),
        }
    }
}

/// The 1-based line and column (counted in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Lowercases the first letter of a message when it is a capitalised word (`No such file` ->
/// `no such file`) and drops a trailing period, so every message reads the same way.
pub(crate) fn tidy_message(message: &str) -> String {
    let message = message.trim().trim_end_matches('.');
    let mut chars = message.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_ascii_uppercase() && second.is_lowercase() => {
            let mut out = String::with_capacity(message.len());
            out.push(first.to_ascii_lowercase());
            out.push_str(&message[first.len_utf8()..]);
            out
        }
        _ => message.to_owned(),
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// `name` in a table.
    Key(&'static str),
    /// `[i]` in an array.
    Index(usize),
    /// A name chosen in the file (a plugin name), as a key.
    Name(String),
}

/// Renders a key path the way `serde_path_to_error` does: `peers[1].address`.
pub(crate) fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Name(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// The byte range of the value at `path` in the TOML `text`, if the text parses and has it.
pub(crate) fn locate(text: &str, path: &[Seg]) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut current: Option<&Spanned<DeValue<'_>>> = None;
    for seg in path {
        let next = match seg {
            Seg::Key(key) => table?
                .iter()
                .find(|(k, _)| k.get_ref() == key)
                .map(|(_, v)| v)?,
            Seg::Name(name) => table?
                .iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(_, v)| v)?,
            Seg::Index(i) => match current?.get_ref() {
                DeValue::Array(array) => array.get(*i)?,
                _ => return None,
            },
        };
        table = match next.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
        current = Some(next);
    }
    current.map(Spanned::span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(text, 9), (2, 3));
        assert_eq!(line_col(text, 1000), (3, 1));
    }

    #[test]
    fn tidy_message_lowercases_and_trims() {
        assert_eq!(tidy_message("No such file."), "no such file");
        assert_eq!(tidy_message("TOML error"), "TOML error");
        assert_eq!(tidy_message("invalid type"), "invalid type");
    }

    #[test]
    fn paths_render_like_serde_path_to_error() {
        let path = [
            Seg::Key("collections"),
            Seg::Key("declared"),
            Seg::Index(2),
            Seg::Key("name"),
        ];
        assert_eq!(render_path(&path), "collections.declared[2].name");
    }

    #[test]
    fn locate_finds_values_in_arrays_of_tables() {
        let text = "[[peers]]\nid = \"a\"\n[[peers]]\nid = \"b\"\n";
        let span = locate(text, &[Seg::Key("peers"), Seg::Index(1), Seg::Key("id")]).unwrap();
        assert_eq!(&text[span.clone()], "\"b\"");
        assert_eq!(line_col(text, span.start), (4, 6));
        assert_eq!(locate(text, &[Seg::Key("peers"), Seg::Index(2)]), None);
    }

    #[test]
    fn display_omits_missing_parts() {
        let e = ConfigError {
            file: PathBuf::from("/etc/edgerep.toml"),
            key: Some("peers[1].address".into()),
            line_col: Some((12, 1)),
            message: "invalid port \"99999\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/edgerep.toml:12:1: key `peers[1].address`: invalid port \"99999\""
        );
        let e = ConfigError::file(Path::new("x.toml"), "cannot read it");
        assert_eq!(e.to_string(), "x.toml: cannot read it");
    }
}
