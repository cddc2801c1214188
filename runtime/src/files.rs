//! Bounded reads of files named by the user: only regular files, and at most a stated number of
//! bytes. A FIFO would block a plain read for ever, and `/dev/zero` would fill memory.

use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// The most bytes a model or checkpoint tensors file may have (64 GiB).
pub const MAX_TENSOR_FILE: u64 = 64 << 30;
/// The most bytes a text file of settings may have (a config, a manifest: 1 MiB).
pub const MAX_TEXT_FILE: u64 = 1 << 20;

/// Reads `path` whole when it is a regular file (after following links) of at most `max` bytes.
///
/// Other files fail with `InvalidInput`, larger ones with `InvalidData`. Both messages are short
/// phrases, without the path, for the caller to put after it. The size is checked before the
/// read and again while reading, since a file may grow in between.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let too_large = |n: u64| {
        Error::new(
            ErrorKind::InvalidData,
            format!("{n} bytes, more than the {max} allowed"),
        )
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_others_refused() {
        let dir = std::env::temp_dir().join(format!("metaloop-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.txt");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_bounded(&file, 5).unwrap(), b"12345");
        let e = read_bounded(&file, 4).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "5 bytes, more than the 4 allowed");
        let e = read_bounded(&dir, 5).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let e = read_bounded(Path::new("/dev/zero"), 5).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Returns at once instead of waiting for a writer.
            assert_eq!(
                read_bounded(&fifo, 5).unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
