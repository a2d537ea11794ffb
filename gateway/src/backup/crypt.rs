//! The backup file's encryption: age v1 (C2SP age) to the operator's passphrase (scrypt
//! recipient), through the `age` crate. age authenticates the file in 64 KiB chunks and marks
//! the last one, so a flipped byte, a cut or an appended tail is refused where it is met.

use std::io::{self, Read, Write};
use std::path::Path;

use age::secrecy::SecretString;

use super::BackupError;

/// Shortest passphrase accepted: age's scrypt makes each guess cost about a second, which
/// only helps a passphrase that is not guessable to begin with.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Reads the passphrase from `path` (the file's first line; the file must be private, like a
/// key), refusing a short one.
pub fn read_passphrase(path: &Path) -> Result<SecretString, BackupError> {
    let refused = |problem: String| {
        BackupError::Decrypt(format!("passphrase file {}: {problem}", path.display()))
    };
    pki_tools::files::check_private_key_permissions(path).map_err(|e| refused(e.to_string()))?;
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| refused(e.to_string()))?);
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(refused(format!(
            "the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    Ok(SecretString::from(line.to_owned()))
}

/// A writer that encrypts everything written to it into `out`; call `finish` at the end (an
/// unfinished file lacks its last chunk and is refused on restore).
pub fn encrypt<W: Write>(
    out: W,
    passphrase: SecretString,
) -> Result<age::stream::StreamWriter<W>, BackupError> {
    age::Encryptor::with_user_passphrase(passphrase)
        .wrap_output(out)
        .map_err(BackupError::io("encrypt backup", Path::new("output")))
}

/// A reader of the plaintext of `input`, once the passphrase opened its header.
pub fn decrypt<R: Read>(
    input: R,
    passphrase: SecretString,
) -> Result<age::stream::StreamReader<R>, BackupError> {
    let decryptor = age::Decryptor::new(input).map_err(|e| match e {
        age::DecryptError::Io(e) => BackupError::Damaged(format!("cannot read the file: {e}")),
        _ => BackupError::Damaged(format!(
            "not an age-encrypted backup, or its header is damaged ({e})"
        )),
    })?;
    if !decryptor.is_scrypt() {
        return Err(BackupError::Decrypt(
            "the file is not encrypted to a passphrase".to_owned(),
        ));
    }
    let identity = age::scrypt::Identity::new(passphrase);
    decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::ExcessiveWork { required, target } => BackupError::Decrypt(format!(
                "the passphrase's work factor (2^{required}) is far above this machine's (2^{target})"
            )),
            age::DecryptError::InvalidMac => BackupError::Damaged(
                "the file's header fails authentication (damaged or altered)".to_owned(),
            ),
            age::DecryptError::Io(e) => BackupError::Damaged(format!("cannot read the file: {e}")),
            _ => BackupError::Decrypt("wrong passphrase".to_owned()),
        })
}

/// Words for an error met while reading the decrypted stream (age reports a chunk that fails
/// authentication as an I/O error of kind `InvalidData`).
pub fn describe_read_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::InvalidData => {
            "the encrypted data fails authentication (the file is damaged or was altered)"
                .to_owned()
        }
        io::ErrorKind::UnexpectedEof => "the file ends early (truncated)".to_owned(),
        _ => e.to_string(),
    }
}
