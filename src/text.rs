//! Text a caller sent, made fit to show in a log line, a report or a terminal: bounded, and
//! with control characters escaped, so it can forge no log line, move no cursor and fill
//! no disk.

use std::borrow::Cow;

/// The most bytes of one piece of caller text that are shown.
pub const SHOWN_LIMIT: usize = 256;

/// What replaces the part of a text past [`SHOWN_LIMIT`].
const CUT_MARK: &str = "...[cut]";

/// `text` with control characters escaped (`\n`, `\u{1b}`) and cut to about
/// [`SHOWN_LIMIT`] bytes, marked as cut. Borrowed when nothing needed changing, which is
/// nearly always.
pub fn shown(text: &str) -> Cow<'_, str> {
    if text.len() <= SHOWN_LIMIT && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(SHOWN_LIMIT + CUT_MARK.len());
    for char in text.chars() {
        if shown.len() >= SHOWN_LIMIT {
            shown.push_str(CUT_MARK);
            break;
        }
        if char.is_control() {
            shown.extend(char.escape_default());
        } else {
            shown.push(char);
        }
    }
    Cow::Owned(shown)
}

/// [`shown`], owned.
pub fn shown_owned(text: &str) -> String {
    shown(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_borrowed_as_it_is() {
        assert!(matches!(shown("claude-opus-4-5"), Cow::Borrowed(_)));
        assert_eq!(shown("gpt-4.1 ü"), "gpt-4.1 ü");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            shown("m\nERROR forged\u{1b}[2J\r"),
            "m\\nERROR forged\\u{1b}[2J\\r"
        );
        assert!(!shown("\u{7}\u{9b}x").chars().any(char::is_control));
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let long = "é".repeat(10_000);
        let cut = shown(&long);
        assert!(
            cut.len() <= SHOWN_LIMIT + 2 + CUT_MARK.len(),
            "{}",
            cut.len()
        );
        assert!(cut.ends_with(CUT_MARK));
        let escapes = "\u{1b}".repeat(1_000);
        assert!(shown(&escapes).len() <= SHOWN_LIMIT + 8 + CUT_MARK.len());
    }
}
