//! Encrypted names: AES-SIV (deterministic, so a lookup can encrypt the name it looks for) under the
//! directory's own name key, encoded base64url without padding. A name whose encoding exceeds the
//! backing filesystem's 255 bytes is stored as `kmsfs.longname.<sha256 of the encoding>`, with the
//! full encoding in the side file `<that>.name`.

use crate::cryptocore;
use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const NAME_MAX: usize = 255;
pub const CONFIG_FILE: &str = "kmsfs.conf";
pub const DIRKEY_FILE: &str = "kmsfs.dirkey";
pub const LONGNAME_PREFIX: &str = "kmsfs.longname.";
pub const LONGNAME_SUFFIX: &str = ".name";
/// Temporaries of `reencrypt` start with this (hidden from the mount like every `.kmsfs` name).
pub const REENCRYPT_TMP_PREFIX: &str = ".kmsfs.reencrypt.";
const NAME_AD: &[u8] = b"kmsfs name v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingName {
    Short(String),
    /// The entry's name, and the full encoding kept in its side file.
    Long {
        entry: String,
        full: String,
    },
}

impl BackingName {
    pub fn entry(&self) -> &str {
        match self {
            BackingName::Short(s) => s,
            BackingName::Long { entry, .. } => entry,
        }
    }

    /// The side file's name, for long names.
    pub fn side_file(&self) -> Option<String> {
        match self {
            BackingName::Short(_) => None,
            BackingName::Long { entry, .. } => Some(format!("{entry}{LONGNAME_SUFFIX}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Empty, over 255 bytes, or containing '/' or NUL.
    Invalid,
    /// Not an encoding this directory's key produced.
    Undecryptable,
}

fn siv(key: &[u8; 64]) -> Aes256Siv {
    Aes256Siv::new(key.into())
}

/// Encrypts a plaintext name for the directory whose name key is `key`.
pub fn encrypt(key: &[u8; 64], name: &[u8]) -> Result<BackingName, NameError> {
    if name.is_empty()
        || name.len() > NAME_MAX
        || name.contains(&b'/')
        || name.contains(&0)
        || name == b"."
        || name == b".."
    {
        return Err(NameError::Invalid);
    }
    let ct = siv(key)
        .encrypt([NAME_AD], name)
        .map_err(|_| NameError::Invalid)?;
    let full = URL_SAFE_NO_PAD.encode(ct);
    if full.len() <= NAME_MAX {
        return Ok(BackingName::Short(full));
    }
    let hash = URL_SAFE_NO_PAD.encode(cryptocore::sha256(full.as_bytes()));
    Ok(BackingName::Long {
        entry: format!("{LONGNAME_PREFIX}{hash}"),
        full,
    })
}

/// Decrypts an encoded name (the full encoding, for long names).
pub fn decrypt(key: &[u8; 64], encoded: &str) -> Result<Vec<u8>, NameError> {
    NameCipher::new(key).decrypt(encoded)
}

/// A directory's name key set up once for a whole listing (the CMAC half of AES-SIV; its CTR
/// half is keyed per name inside the crate).
pub struct NameCipher(Aes256Siv);

impl NameCipher {
    pub fn new(key: &[u8; 64]) -> NameCipher {
        NameCipher(siv(key))
    }

    /// As `decrypt`.
    pub fn decrypt(&mut self, encoded: &str) -> Result<Vec<u8>, NameError> {
        // Decoded and decrypted in one buffer: a listing decrypts every name in it.
        let mut buf = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| NameError::Undecryptable)?;
        self.0
            .decrypt_in_place([NAME_AD], &mut buf)
            .map_err(|_| NameError::Undecryptable)?;
        Ok(buf)
    }
}

/// Checks that a long-name side file's content belongs to the entry `entry`.
pub fn long_name_matches(entry: &str, full: &str) -> bool {
    let hash = URL_SAFE_NO_PAD.encode(cryptocore::sha256(full.as_bytes()));
    entry.strip_prefix(LONGNAME_PREFIX) == Some(hash.as_str())
}

/// What a backing directory entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// kmsfs's own files (config, directory key, long-name side files, temporaries): hidden.
    Internal,
    LongName,
    Encrypted,
}

pub fn classify(backing: &str) -> EntryKind {
    if backing.starts_with(LONGNAME_PREFIX) && !backing.ends_with(LONGNAME_SUFFIX) {
        EntryKind::LongName
    } else if backing.starts_with("kmsfs.") || backing.starts_with('.') {
        EntryKind::Internal
    } else {
        EntryKind::Encrypted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: [u8; 64] = [5u8; 64];

    /// One prepared cipher decrypts a whole listing, also after a name that fails.
    #[test]
    fn a_name_cipher_serves_a_listing() {
        let mut c = NameCipher::new(&K);
        let names: Vec<String> = ["a", "b.txt", "dir"]
            .iter()
            .map(|n| encrypt(&K, n.as_bytes()).unwrap().entry().to_string())
            .collect();
        assert_eq!(c.decrypt(&names[0]).unwrap(), b"a");
        let other = encrypt(&[6u8; 64], b"a").unwrap();
        assert_eq!(c.decrypt(other.entry()), Err(NameError::Undecryptable));
        assert_eq!(c.decrypt("not base64!"), Err(NameError::Undecryptable));
        assert_eq!(c.decrypt(&names[1]).unwrap(), b"b.txt");
        assert_eq!(c.decrypt(&names[2]).unwrap(), b"dir");
    }

    #[test]
    fn short_and_long_names() {
        let n = encrypt(&K, b"hello.txt").unwrap();
        let BackingName::Short(s) = &n else {
            panic!("short")
        };
        assert_eq!(classify(s), EntryKind::Encrypted);
        assert_eq!(decrypt(&K, s).unwrap(), b"hello.txt");
        assert_eq!(encrypt(&K, b"hello.txt").unwrap(), n, "deterministic");
        assert!(decrypt(&[6u8; 64], s).is_err(), "another directory's key");
        let long = vec![b'x'; 255];
        let l = encrypt(&K, &long).unwrap();
        let BackingName::Long { entry, full } = &l else {
            panic!("long")
        };
        assert!(entry.len() <= NAME_MAX);
        assert_eq!(classify(entry), EntryKind::LongName);
        assert_eq!(classify(&l.side_file().unwrap()), EntryKind::Internal);
        assert!(long_name_matches(entry, full));
        assert!(!long_name_matches(entry, &full[1..]));
        assert_eq!(decrypt(&K, full).unwrap(), long);
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'y'; 256]] {
            assert_eq!(encrypt(&K, bad), Err(NameError::Invalid));
        }
        assert_eq!(classify(CONFIG_FILE), EntryKind::Internal);
        assert_eq!(classify(DIRKEY_FILE), EntryKind::Internal);
    }

    proptest! {
        #[test]
        fn round_trip(name in proptest::collection::vec(1u8..=255, 1..=255)) {
            prop_assume!(!name.contains(&b'/') && name != b"." && name != b"..");
            let b = encrypt(&K, &name).unwrap();
            let full = match &b { BackingName::Short(s) => s.clone(), BackingName::Long { full, .. } => full.clone() };
            prop_assert!(b.entry().len() <= NAME_MAX);
            prop_assert!(!b.entry().contains('/') && !b.entry().starts_with('.'));
            prop_assert_eq!(decrypt(&K, &full).unwrap(), name);
        }

        #[test]
        fn decrypt_never_panics(s in ".{0,300}") {
            let _ = decrypt(&K, &s);
        }
    }
}
