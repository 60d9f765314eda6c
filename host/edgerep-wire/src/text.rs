//! Text from outside (a peer, a plugin, a client) on its way into a log line.

use std::borrow::Cow;

/// `text` with its control characters escaped (`\n`, `\r`, `\u{1b}`, …), so it stays on one
/// log line: text a peer or a plugin chose cannot start a line of its own and pass for one the
/// node wrote.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(one_line("plain text é"), Cow::Borrowed(_)));
        assert_eq!(
            one_line("x\n2026-12-04T00:00:00Z ERROR forged\r\u{1b}[2J"),
            "x\\n2026-12-04T00:00:00Z ERROR forged\\r\\u{1b}[2J"
        );
    }
}
