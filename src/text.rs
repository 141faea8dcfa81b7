//! Text that came from somewhere else (a commit subject, a path in a repository, an error from a
//! server), made safe to print on a terminal or in a text log line.
//!
//! Anyone who can push to the repository chooses commit subjects and file names. Printed raw, a
//! carriage return can overwrite a line with a fake commit id, and an escape sequence can clear
//! the operator's screen or retitle the terminal. Every text output of dagsnap passes such text
//! through [`escape`]; JSON output is escaped by the JSON encoder already.

use std::borrow::Cow;

/// `text` with control characters (C0, DEL, C1) written as escapes (`\n`, `\t`, `\r`,
/// `\u{1b}`), so that it prints as one inert line. Text without any comes back unchanged.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A path or name given as bytes (git allows any byte but NUL), for messages: invalid UTF-8 is
/// shown as `\x..`, control characters escaped.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_made_inert() {
        assert_eq!(escape("plain subject"), "plain subject");
        assert_eq!(
            escape("fix\r0000000 fake\x1b[2J\x1b]0;owned\x07"),
            "fix\\r0000000 fake\\u{1b}[2J\\u{1b}]0;owned\\u{7}"
        );
        assert_eq!(escape("a\tb\nc\u{9b}"), "a\\tb\\nc\\u{9b}");
        assert_eq!(escape_bytes(b"caf\xc3\xa9 \xff\n"), "café \\xff\\n");
    }
}
