//! Small files written whole or not at all: identities, keys, the client's trust store.
//! A crash or a full disk leaves the old file or the new one, never half of either.
//! Keys others may trust are created once and never replaced ([`create_private`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `content` to `path` with mode 0600: a temporary file in the same directory
/// (created with its parents if need be), synced, then renamed into place.
pub fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = private_temp(path, content)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Like [`write_private`], but only if nothing is at `path` yet: a file there is never
/// replaced (`AlreadyExists`), not even by a process racing this one. For keys that others
/// may already trust once written.
pub fn create_private(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = private_temp(path, content)?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    Ok(())
}

/// `content` in a synced temporary file with mode 0600 beside `path`.
fn private_temp(path: &Path, content: &[u8]) -> io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".securexfer-").tempfile_in(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_file_is_replaced_whole_with_mode_0600_and_no_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("key");
        super::write_private(&path, b"first").unwrap();
        super::write_private(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
    }

    #[test]
    fn create_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        super::create_private(&path, b"first").unwrap();
        let e = super::create_private(&path, b"second").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }
}
