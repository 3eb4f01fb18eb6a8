//! Primitives, all from maintained crates: AES-256-GCM sealing, HKDF-SHA256, HMAC-SHA256, randomness.
//! Everything above this module speaks in sealed byte strings and derived keys, never in cipher APIs.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext: nonce and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A 256-bit secret key, wiped from memory when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

/// A plaintext buffer, wiped on drop by one bulk write over its whole capacity. zeroize's
/// `Zeroizing<Vec<u8>>` clears a Vec element by element (a volatile write per byte), which for
/// a 1 MiB read took longer than decrypting it. Like that, it cannot wipe copies left behind
/// by a reallocation: reserve the capacity up front.
#[derive(Default)]
pub struct PlainBuf(Vec<u8>);

impl PlainBuf {
    pub fn new() -> PlainBuf {
        PlainBuf(Vec::new())
    }

    pub fn with_capacity(n: usize) -> PlainBuf {
        PlainBuf(Vec::with_capacity(n))
    }

    /// Empties the buffer and zeroes all of its memory (kept allocated).
    pub fn wipe(&mut self) {
        use zeroize::Zeroize;
        self.0.clear();
        self.0.spare_capacity_mut().zeroize();
    }
}

impl std::ops::Deref for PlainBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for PlainBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for PlainBuf {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// Authentication failed, or the input was too short to hold a nonce and tag. Deliberately opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

/// The operating system's random source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomError;

pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|_| RandomError)
}

pub fn random_key() -> Result<SecretKey, RandomError> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(k.as_mut())?;
    Ok(k)
}

/// HKDF-SHA256: one input key, one purpose per `info`.
pub fn derive_key(ikm: &[u8], salt: &[u8], info: &[u8]) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
    if hk.expand(info, okm.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 expand of 32 bytes");
    }
    okm
}

/// HKDF-SHA256 into a buffer of any length up to 8160 bytes (e.g. 64-byte AES-SIV keys).
pub fn derive_into(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    if hk.expand(info, out).is_err() {
        unreachable!("HKDF-SHA256 output longer than 8160 bytes");
    }
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(&(*key).into())
}

/// AES-256-GCM with a fresh random nonce. Output: nonce || ciphertext || tag.
pub fn seal(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, RandomError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let ct = cipher(key)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Only fails for messages over 64 GiB, which no caller of `seal` builds.
        .map_err(|_| RandomError)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what `seal` produced; the plaintext is wiped when dropped.
pub fn open(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(OpenError);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
    cipher(key)
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| OpenError)
}

fn hmac_over(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for p in parts {
        mac.update(p);
    }
    mac
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    hmac_over(key, parts).finalize().into_bytes().into()
}

/// Constant-time check of an HMAC-SHA256 tag (the comparison is the crate's).
pub fn hmac_verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    hmac_over(key, parts).verify_slice(tag).is_ok()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time equality for secrets of equal length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_buf_wipe_zeroes_the_whole_capacity() {
        let mut b = super::PlainBuf::with_capacity(8192);
        b.extend_from_slice(&[7u8; 5000]);
        let cap = b.capacity();
        b.wipe();
        assert!(b.is_empty());
        assert_eq!(b.capacity(), cap);
        // SAFETY: wipe wrote zeroes over the whole capacity, so every byte is initialised.
        assert!(
            b.spare_capacity_mut()
                .iter()
                .all(|x| unsafe { x.assume_init() } == 0)
        );
    }

    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = random_key().unwrap();
        let s = seal(&k, b"aad", b"hello").unwrap();
        assert_eq!(s.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(&open(&k, b"aad", &s).unwrap()[..], b"hello");
        assert_eq!(open(&k, b"other", &s), Err(OpenError));
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert_eq!(open(&k, b"aad", &t), Err(OpenError), "flip at {i}");
        }
        assert_eq!(open(&k, b"aad", &s[..s.len() - 1]), Err(OpenError));
        assert_eq!(open(&k, b"aad", &[]), Err(OpenError));
    }

    #[test]
    fn derive_separates_purposes() {
        let a = derive_key(b"ikm", b"salt", b"one");
        let b = derive_key(b"ikm", b"salt", b"two");
        assert_ne!(*a, *b);
        assert_eq!(*a, *derive_key(b"ikm", b"salt", b"one"));
    }

    #[test]
    fn hmac_verifies() {
        let t = hmac_sha256(b"k", &[b"a", b"b"]);
        assert!(hmac_verify(b"k", &[b"ab"], &t));
        assert!(!hmac_verify(b"k", &[b"ac"], &t));
        assert!(!hmac_verify(b"k", &[b"ab"], &t[..31]));
    }

    /// RFC 4231 test case 2, so the MAC is the standard one.
    #[test]
    fn hmac_matches_rfc4231() {
        let t = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(t),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
