//! The header at the start of every file (and of every directory's key file): an id, and the
//! data key wrapped by a CMK through the key provider, in two slots so re-wrapping is crash-atomic.
//!
//! ```text
//! prefix (32)   magic (4) | version u16 | flags u16 | id (16) | blocks reserved u64
//! slot 0 (496)  generation u64 | blob length u16 | blob (454, zero padded) | mac (32)
//! slot 1 (496)  the same
//! ```
//! A re-wrap writes the slot not in use with generation + 1; the valid slot with the highest
//! generation wins, so a crash leaves the old or the new wrapping. Each slot's MAC is
//! HMAC-SHA256 under a key derived from the data key, over the prefix (without the block counter)
//! and the slot's fields. The block counter reserves block encryptions under the data key in
//! chunks, so that a key never encrypts more than 2^32 blocks with random nonces, even across
//! crashes (see `contentenc::MAX_BLOCK_ENCRYPTIONS`).

use crate::cryptocore::{self, KEY_LEN, SecretKey};
use crate::kms::EncryptionContext;

pub const HEADER_LEN: usize = 1024;
pub const PREFIX_LEN: usize = 32;
pub const SLOT_LEN: usize = 496;
pub const MAX_BLOB: usize = SLOT_LEN - 8 - 2 - 32;
pub const VERSION: u16 = 1;
pub const FILE_MAGIC: [u8; 4] = *b"KMSF";
pub const DIR_MAGIC: [u8; 4] = *b"KMSD";
const MAC_LABEL: &[u8] = b"kmsfs header slot v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    DirKey,
}

impl Kind {
    fn magic(self) -> [u8; 4] {
        match self {
            Kind::File => FILE_MAGIC,
            Kind::DirKey => DIR_MAGIC,
        }
    }

    /// The encryption context the data key is wrapped under: it binds the wrapping to this id.
    pub fn context(self, id: &[u8; 16]) -> EncryptionContext {
        let k = match self {
            Kind::File => "kmsfs:file-id",
            Kind::DirKey => "kmsfs:dir-id",
        };
        EncryptionContext([(k.to_string(), hex::encode(id))].into_iter().collect())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Too short, wrong magic: not a kmsfs file of this kind.
    Foreign,
    UnsupportedVersion(u16),
    /// The wrapped key does not fit a slot.
    BlobTooLarge,
}

/// One slot as stored, not yet authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub index: usize,
    pub generation: u64,
    pub blob: Vec<u8>,
    pub mac: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub id: [u8; 16],
    /// Non-empty slots, highest generation first.
    pub slots: Vec<Slot>,
}

fn mac_key(data_key: &[u8], id: &[u8; 16]) -> SecretKey {
    cryptocore::derive_key(data_key, id, b"kmsfs/v1/header-mac")
}

fn prefix(kind: Kind, id: &[u8; 16]) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[..4].copy_from_slice(&kind.magic());
    p[4..6].copy_from_slice(&VERSION.to_be_bytes());
    p[8..24].copy_from_slice(id);
    p
}

fn slot_mac(data_key: &[u8], kind: Kind, id: &[u8; 16], generation: u64, blob: &[u8]) -> [u8; 32] {
    let k = mac_key(data_key, id);
    cryptocore::hmac_sha256(
        k.as_ref(),
        &[
            MAC_LABEL,
            &prefix(kind, id),
            &generation.to_be_bytes(),
            &(blob.len() as u16).to_be_bytes(),
            blob,
        ],
    )
}

/// Offset of the block-encryption reservation counter in the header.
pub const COUNTER_OFFSET: usize = 24;

/// Reads the block-encryption reservation counter.
pub fn counter(data: &[u8]) -> u64 {
    let mut c = [0u8; 8];
    if data.len() >= COUNTER_OFFSET + 8 {
        c.copy_from_slice(&data[COUNTER_OFFSET..COUNTER_OFFSET + 8]);
    }
    u64::from_be_bytes(c)
}

/// Byte offset of slot `i` in the header.
pub fn slot_offset(i: usize) -> usize {
    PREFIX_LEN + i * SLOT_LEN
}

/// Encodes one slot.
pub fn encode_slot(
    kind: Kind,
    id: &[u8; 16],
    generation: u64,
    blob: &[u8],
    data_key: &[u8],
) -> Result<[u8; SLOT_LEN], HeaderError> {
    if blob.len() > MAX_BLOB {
        return Err(HeaderError::BlobTooLarge);
    }
    let mut s = [0u8; SLOT_LEN];
    s[..8].copy_from_slice(&generation.to_be_bytes());
    s[8..10].copy_from_slice(&(blob.len() as u16).to_be_bytes());
    s[10..10 + blob.len()].copy_from_slice(blob);
    s[SLOT_LEN - 32..].copy_from_slice(&slot_mac(data_key, kind, id, generation, blob));
    Ok(s)
}

/// A new header: slot 0 holds the wrapped key at generation 1, slot 1 is empty.
pub fn encode_new(
    kind: Kind,
    id: &[u8; 16],
    blob: &[u8],
    data_key: &[u8],
) -> Result<[u8; HEADER_LEN], HeaderError> {
    let mut h = [0u8; HEADER_LEN];
    h[..PREFIX_LEN].copy_from_slice(&prefix(kind, id));
    h[slot_offset(0)..slot_offset(1)].copy_from_slice(&encode_slot(kind, id, 1, blob, data_key)?);
    Ok(h)
}

/// Parses a header of the expected kind. Slots are not authenticated here: that needs the data
/// key, which needs the wrapped blob. See `Slot::verify`.
pub fn parse(kind: Kind, data: &[u8]) -> Result<Header, HeaderError> {
    if data.len() < HEADER_LEN || data[..4] != kind.magic() {
        return Err(HeaderError::Foreign);
    }
    let version = u16::from_be_bytes([data[4], data[5]]);
    if version != VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    // Version 1 defines no flags; the MAC covers them only as zero, so anything else is refused.
    if data[6] != 0 || data[7] != 0 {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&data[8..24]);
    let mut slots = Vec::new();
    for index in 0..2 {
        let s = &data[slot_offset(index)..slot_offset(index) + SLOT_LEN];
        let mut g = [0u8; 8];
        g.copy_from_slice(&s[..8]);
        let generation = u64::from_be_bytes(g);
        let len = u16::from_be_bytes([s[8], s[9]]) as usize;
        if generation == 0 || len == 0 || len > MAX_BLOB {
            continue;
        }
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&s[SLOT_LEN - 32..]);
        slots.push(Slot {
            index,
            generation,
            blob: s[10..10 + len].to_vec(),
            mac,
        });
    }
    slots.sort_by_key(|s| std::cmp::Reverse(s.generation));
    Ok(Header { kind, id, slots })
}

impl Slot {
    /// Checks the slot's MAC with the data key its blob unwrapped to.
    pub fn verify(&self, kind: Kind, id: &[u8; 16], data_key: &[u8]) -> bool {
        let k = mac_key(data_key, id);
        cryptocore::hmac_verify(
            k.as_ref(),
            &[
                MAC_LABEL,
                &prefix(kind, id),
                &self.generation.to_be_bytes(),
                &(self.blob.len() as u16).to_be_bytes(),
                &self.blob,
            ],
            &self.mac,
        )
    }
}

/// Subkeys of a file's (or directory's) data key, one per purpose.
pub struct DataKeys {
    pub content: SecretKey,
    pub xattr: SecretKey,
    /// 64-byte AES-SIV key for the names in a directory.
    pub names: zeroize::Zeroizing<[u8; 64]>,
}

impl DataKeys {
    pub fn derive(data_key: &[u8], id: &[u8; 16]) -> DataKeys {
        let mut names = zeroize::Zeroizing::new([0u8; 64]);
        cryptocore::derive_into(data_key, id, b"kmsfs/v1/names", names.as_mut());
        DataKeys {
            content: cryptocore::derive_key(data_key, id, b"kmsfs/v1/content"),
            xattr: cryptocore::derive_key(data_key, id, b"kmsfs/v1/xattr"),
            names,
        }
    }
}

/// Data keys are AES-256 keys.
pub const DATA_KEY_LEN: usize = KEY_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_header_round_trip_and_slot_choice() {
        let id = [9u8; 16];
        let dk = [1u8; 32];
        let mut h = encode_new(Kind::File, &id, b"blob-one", &dk).unwrap();
        let p = parse(Kind::File, &h).unwrap();
        assert_eq!(p.id, id);
        assert_eq!(p.slots.len(), 1);
        assert!(p.slots[0].verify(Kind::File, &id, &dk));
        assert!(!p.slots[0].verify(Kind::File, &id, &[2u8; 32]));
        assert!(!p.slots[0].verify(Kind::DirKey, &id, &dk));
        // A re-wrap into slot 1 with a higher generation wins.
        let s = encode_slot(Kind::File, &id, 2, b"blob-two", &dk).unwrap();
        h[slot_offset(1)..slot_offset(1) + SLOT_LEN].copy_from_slice(&s);
        let p = parse(Kind::File, &h).unwrap();
        assert_eq!(p.slots[0].blob, b"blob-two");
        assert_eq!(p.slots[1].blob, b"blob-one");
        assert!(p.slots.iter().all(|s| s.verify(Kind::File, &id, &dk)));
        assert_eq!(parse(Kind::DirKey, &h), Err(HeaderError::Foreign));
        assert_eq!(parse(Kind::File, &h[..100]), Err(HeaderError::Foreign));
        h[5] = 9;
        assert_eq!(
            parse(Kind::File, &h),
            Err(HeaderError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn tampered_slot_fails_verification() {
        let id = [3u8; 16];
        let dk = [4u8; 32];
        let h = encode_new(Kind::DirKey, &id, b"wrapped", &dk).unwrap();
        for i in [
            slot_offset(0) + 3,
            slot_offset(0) + 12,
            slot_offset(0) + SLOT_LEN - 1,
        ] {
            let mut t = h;
            t[i] ^= 1;
            if let Ok(p) = parse(Kind::DirKey, &t) {
                assert!(
                    p.slots.iter().all(|s| !s.verify(Kind::DirKey, &id, &dk)),
                    "flip at {i}"
                );
            }
        }
        // Changing the id (prefix) breaks the MAC too.
        let mut t = h;
        t[10] ^= 1;
        let p = parse(Kind::DirKey, &t).unwrap();
        assert!(!p.slots[0].verify(Kind::DirKey, &p.id, &dk));
        assert!(encode_new(Kind::File, &id, &[0u8; MAX_BLOB + 1], &dk).is_err());
    }

    #[test]
    fn layout_vector() {
        let h = encode_new(Kind::File, &[0xAB; 16], &[0xCD; 3], &[0u8; 32]).unwrap();
        assert_eq!(
            hex::encode(&h[..32]),
            format!(
                "4b4d5346{}{}{}{}",
                "0001",
                "0000",
                "ab".repeat(16),
                "00".repeat(8)
            )
        );
        assert_eq!(hex::encode(&h[32..45]), "00000000000000010003cdcdcd");
        assert!(h[slot_offset(1)..].iter().all(|b| *b == 0));
    }
}
