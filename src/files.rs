//! Reading files a user names (the config, keys files, the state file, request bodies):
//! only regular files, never more than a stated size, so a FIFO, a device or an endless
//! stream is an error instead of a hang or a process out of memory.

use std::io::Read;
use std::path::Path;

/// The whole of `path`, a regular file of at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO would wait for a writer: open without waiting, then refuse it.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    read_bounded(file, limit)
}

/// All of `reader`, unless it holds more than `limit` bytes.
pub fn read_bounded(reader: impl Read, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than {}",
            bytesize::ByteSize::b(limit).display().iec()
        )));
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
pub fn text(bytes: Vec<u8>) -> std::io::Result<String> {
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_past_the_limit_is_refused_without_reading_it_all() {
        let endless = std::io::repeat(b'k');
        let error = read_bounded(endless, 1024).unwrap_err();
        assert_eq!(error.to_string(), "larger than 1.0 KiB");
        assert_eq!(read_bounded(&b"key"[..], 3).unwrap(), b"key");
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            let error = read_regular(path, 1024).unwrap_err();
            assert_eq!(
                error.to_string(),
                "not a regular file",
                "{}",
                path.display()
            );
        }
    }
}
