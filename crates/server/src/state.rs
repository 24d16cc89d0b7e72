//! The state directory: what the server keeps between runs.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;

/// The file that holds the generated REST secret.
pub const SECRET_FILE: &str = "rest-secret";

/// Where the generated REST secret lives under `dir`.
#[must_use]
pub fn secret_path(dir: &Path) -> PathBuf {
    dir.join(SECRET_FILE)
}

/// Reads the REST secret kept in `dir`.
pub fn read_secret(dir: &Path) -> io::Result<String> {
    let secret = fs::read_to_string(secret_path(dir))?.trim().to_owned();
    if secret.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", secret_path(dir).display()),
        ));
    }
    Ok(secret)
}

/// Creates the state directory (mode 0700) if it is not there.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Reads the REST secret kept in `dir`, creating the directory (mode 0700)
/// and a random secret (mode 0600) the first time. Returns the secret and
/// whether it was just created.
pub fn load_or_create_secret(dir: &Path) -> io::Result<(String, bool)> {
    ensure_dir(dir)?;
    match read_secret(dir) {
        Ok(secret) => return Ok((secret, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secret_path(dir))?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    Ok((secret, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn secret_is_created_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (a, created) = load_or_create_secret(&state).unwrap();
        assert!(created);
        assert_eq!(a.len(), 43);
        let (b, created) = load_or_create_secret(&state).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert_eq!(read_secret(&state).unwrap(), a);
        let mode = fs::metadata(secret_path(&state))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
