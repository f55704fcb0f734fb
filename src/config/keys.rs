//! Key lists: a keys file, or a variable's comma- or newline-separated list.

use std::path::Path;

use crate::secret::ApiKey;

/// The most a keys file may hold: a key is about 100 bytes, so this is some 10,000 keys.
pub const MAX_KEYS_FILE: u64 = 1024 * 1024;

/// Reads a keys file, refusing what is not a regular file (`/dev/zero`, a FIFO, a directory)
/// or is larger than [`MAX_KEYS_FILE`], rather than hang or fill memory.
pub fn read_keys_file(path: &Path) -> std::io::Result<String> {
    crate::files::text(crate::files::read_regular(path, MAX_KEYS_FILE)?)
}

/// Keys from a keys file: one per line; blank lines and comments are skipped. A comment
/// starts a line with `#`, or follows a key after whitespace (`sk-... # prod`).
pub fn parse_keys_file(text: &str) -> impl Iterator<Item = ApiKey> + '_ {
    text.lines()
        .map(|line| without_comment(line).trim())
        .filter(|line| !line.is_empty())
        .map(ApiKey::new)
}

fn without_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    let comment = line
        .char_indices()
        .zip(line.chars().skip(1))
        .find(|((_, char), next)| char.is_whitespace() && *next == '#')
        .map(|((index, _), _)| index);
    comment.map_or(line, |index| &line[..index])
}

/// Keys from a variable: separated by commas or newlines.
pub fn split_key_list(list: &str) -> impl Iterator<Item = ApiKey> + '_ {
    list.split([',', '\n'])
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(ApiKey::new)
}
