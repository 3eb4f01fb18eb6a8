//! The ciphertext blob returned by Encrypt and GenerateDataKey (docs/FORMAT.md, "Ciphertext blobs").
//!
//! ```text
//! 0   4  magic "KMSB"
//! 4   1  format version (1)
//! 5  16  key id (UUID bytes)
//! 21  4  key material version, big endian
//! 25 12  nonce
//! 37  n  AES-256-GCM ciphertext, then 16-byte tag
//! ```
//! The first 25 bytes and the canonical encryption context are the AAD, so neither key, version nor
//! context can be changed without the blob failing to decrypt.

use crate::cryptocore::{NONCE_LEN, TAG_LEN};
use crate::error::{KmsError, Result};
use uuid::Uuid;

pub const MAGIC: &[u8; 4] = b"KMSB";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 25;
pub const MIN_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// AWS's CiphertextBlob limit; nothing this KMS makes is longer.
pub const MAX_LEN: usize = 6144;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    pub key_id: Uuid,
    pub key_version: u32,
}

impl BlobHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(MAGIC);
        h[4] = VERSION;
        h[5..21].copy_from_slice(self.key_id.as_bytes());
        h[21..25].copy_from_slice(&self.key_version.to_be_bytes());
        h
    }

    /// The AAD for this header under an encoded encryption context.
    pub fn aad(&self, canonical_context: &[u8]) -> Vec<u8> {
        let mut aad = self.encode().to_vec();
        aad.extend_from_slice(canonical_context);
        aad
    }
}

/// Splits a blob into its header and the sealed part (nonce || ciphertext || tag).
pub fn parse(blob: &[u8]) -> Result<(BlobHeader, &[u8])> {
    if blob.len() < MIN_LEN {
        return Err(KmsError::invalid_ciphertext(format!(
            "ciphertext blob is {} bytes, shorter than the {MIN_LEN}-byte minimum",
            blob.len()
        )));
    }
    if blob.len() > MAX_LEN {
        return Err(KmsError::invalid_ciphertext(format!(
            "ciphertext blob is {} bytes; the limit is {MAX_LEN}",
            blob.len()
        )));
    }
    if &blob[..4] != MAGIC {
        return Err(KmsError::invalid_ciphertext(
            "not a kmsfs ciphertext blob (bad magic)",
        ));
    }
    if blob[4] != VERSION {
        return Err(KmsError::invalid_ciphertext(format!(
            "unsupported ciphertext blob version {}",
            blob[4]
        )));
    }
    let id: [u8; 16] = blob[5..21]
        .try_into()
        .map_err(|_| KmsError::invalid_ciphertext("short key id"))?;
    let ver: [u8; 4] = blob[21..25]
        .try_into()
        .map_err(|_| KmsError::invalid_ciphertext("short key version"))?;
    let header = BlobHeader {
        key_id: Uuid::from_bytes(id),
        key_version: u32::from_be_bytes(ver),
    };
    Ok((header, &blob[HEADER_LEN..]))
}

/// Joins a header and a sealed part into a blob.
pub fn assemble(header: &BlobHeader, sealed: &[u8]) -> Vec<u8> {
    let mut out = header.encode().to_vec();
    out.extend_from_slice(sealed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_layout_vector() {
        let h = BlobHeader {
            key_id: Uuid::from_bytes([0x11; 16]),
            key_version: 0x0102_0304,
        };
        let mut blob = assemble(&h, &[0xAA; NONCE_LEN + TAG_LEN + 3]);
        assert_eq!(
            hex::encode(&blob[..HEADER_LEN]),
            "4b4d5342011111111111111111111111111111111101020304"
        );
        let (p, rest) = parse(&blob).unwrap();
        assert_eq!(p, h);
        assert_eq!(rest.len(), NONCE_LEN + TAG_LEN + 3);
        blob[4] = 2;
        assert!(parse(&blob).is_err());
    }

    #[test]
    fn rejects_short_long_and_foreign() {
        assert!(parse(&[0u8; MIN_LEN]).is_err());
        assert!(parse(&vec![0u8; MAX_LEN + 1]).is_err());
        assert!(parse(b"KMSB").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&data);
        }
    }
}
