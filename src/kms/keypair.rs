//! Asymmetric and HMAC key material: generation, public keys, sign/verify, RSA-OAEP, HMAC.
//! All arithmetic comes from RustCrypto crates (rsa, p256, p384, hmac, sha1, sha2); this module
//! only chooses the scheme an AWS algorithm name means. Private material is PKCS#8 DER and lives
//! only in `Zeroizing` buffers and the key store's sealed records.

use crate::cryptocore;
use crate::error::{ErrorKind, KmsError, Result};
use crate::kms::keyspec::{
    EncryptionAlgorithm, Hash, KeySpec, MacAlgorithm, MessageType, SigningAlgorithm,
};
use hmac::{Hmac, KeyInit, Mac};
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use rsa::Generate;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

fn internal(what: &str) -> KmsError {
    KmsError::internal(format!("{what} failed"))
}

fn damaged() -> KmsError {
    KmsError::keystore("stored private key material does not parse")
}

/// Fresh private material for `spec`: PKCS#8 DER for RSA and ECC, random bytes for HMAC.
pub fn generate(spec: KeySpec) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(bits) = spec.rsa_bits() {
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits)
            .map_err(|_| internal("RSA key generation"))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|_| internal("PKCS#8 encoding"))?;
        return Ok(Zeroizing::new(der.as_bytes().to_vec()));
    }
    if let Some(len) = spec.hmac_len() {
        let mut m = Zeroizing::new(vec![0u8; len]);
        cryptocore::fill_random(&mut m).map_err(|_| internal("the system random source"))?;
        return Ok(m);
    }
    let der = match spec {
        KeySpec::EccNistP256 => p256_generate()?,
        KeySpec::EccNistP384 => p384_generate()?,
        _ => {
            return Err(KmsError::internal(format!(
                "{} has no key pair",
                spec.as_str()
            )));
        }
    };
    Ok(der)
}

macro_rules! ecc {
    ($gen:ident, $public:ident, $sign:ident, $verify:ident, $curve:ident) => {
        fn $gen() -> Result<Zeroizing<Vec<u8>>> {
            let k = $curve::ecdsa::SigningKey::try_generate()
                .map_err(|_| internal("the system random source"))?;
            let der = k.to_pkcs8_der().map_err(|_| internal("PKCS#8 encoding"))?;
            Ok(Zeroizing::new(der.as_bytes().to_vec()))
        }

        fn $public(material: &[u8]) -> Result<Vec<u8>> {
            let k = $curve::ecdsa::SigningKey::from_pkcs8_der(material).map_err(|_| damaged())?;
            let der = k
                .verifying_key()
                .to_public_key_der()
                .map_err(|_| internal("SubjectPublicKeyInfo encoding"))?;
            Ok(der.as_bytes().to_vec())
        }

        fn $sign(material: &[u8], digest: &[u8]) -> Result<Vec<u8>> {
            let k = $curve::ecdsa::SigningKey::from_pkcs8_der(material).map_err(|_| damaged())?;
            let sig: $curve::ecdsa::DerSignature = k
                .sign_prehash(digest)
                .map_err(|_| internal("ECDSA signing"))?;
            Ok(sig.as_bytes().to_vec())
        }

        fn $verify(public_der: &[u8], digest: &[u8], sig: &[u8]) -> Result<bool> {
            let k = $curve::ecdsa::VerifyingKey::from_public_key_der(public_der)
                .map_err(|_| damaged())?;
            let Ok(sig) = $curve::ecdsa::DerSignature::try_from(sig) else {
                return Ok(false);
            };
            Ok(k.verify_prehash(digest, &sig).is_ok())
        }
    };
}

ecc!(p256_generate, p256_public, p256_sign, p256_verify, p256);
ecc!(p384_generate, p384_public, p384_sign, p384_verify, p384);

fn rsa_private(material: &[u8]) -> Result<rsa::PrivateKey> {
    rsa::PrivateKey::from_pkcs8_der(material).map_err(|_| damaged())
}

/// The DER SubjectPublicKeyInfo of a key pair's public half.
pub fn public_key_der(spec: KeySpec, material: &[u8]) -> Result<Vec<u8>> {
    match spec {
        KeySpec::EccNistP256 => p256_public(material),
        KeySpec::EccNistP384 => p384_public(material),
        s if s.is_rsa() => {
            let der = rsa_private(material)?
                .to_public_key()
                .to_public_key_der()
                .map_err(|_| internal("SubjectPublicKeyInfo encoding"))?;
            Ok(der.as_bytes().to_vec())
        }
        _ => Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            format!("{} keys have no public key", spec.as_str()),
        )),
    }
}

/// The hash of `message` under `hash`, or the message itself when it already is a digest.
fn digest_of(hash: Hash, kind: MessageType, message: &[u8]) -> Zeroizing<Vec<u8>> {
    if kind == MessageType::Digest {
        return Zeroizing::new(message.to_vec());
    }
    Zeroizing::new(match hash {
        Hash::Sha1 => sha1::Sha1::digest(message).to_vec(),
        Hash::Sha224 => Sha224::digest(message).to_vec(),
        Hash::Sha256 => Sha256::digest(message).to_vec(),
        Hash::Sha384 => Sha384::digest(message).to_vec(),
        Hash::Sha512 => Sha512::digest(message).to_vec(),
    })
}

/// Signs (the digest of) `message`; the caller checked the algorithm against the key and the
/// message's length (keyspec::check_signing, check_message).
pub fn sign(
    spec: KeySpec,
    material: &[u8],
    alg: SigningAlgorithm,
    kind: MessageType,
    message: &[u8],
) -> Result<Vec<u8>> {
    let digest = digest_of(alg.hash(), kind, message);
    match spec {
        KeySpec::EccNistP256 => p256_sign(material, &digest),
        KeySpec::EccNistP384 => p384_sign(material, &digest),
        _ => {
            let k = rsa_private(material)?;
            let r = match (alg.is_pss(), alg.hash()) {
                (true, Hash::Sha256) => k.pss_sign_prehash::<Sha256>(&digest),
                (true, Hash::Sha384) => k.pss_sign_prehash::<Sha384>(&digest),
                (true, _) => k.pss_sign_prehash::<Sha512>(&digest),
                (false, Hash::Sha256) => k.pkcs1v15_sign_prehash::<Sha256>(&digest),
                (false, Hash::Sha384) => k.pkcs1v15_sign_prehash::<Sha384>(&digest),
                (false, _) => k.pkcs1v15_sign_prehash::<Sha512>(&digest),
            };
            r.map_err(|_| internal("RSA signing"))
        }
    }
}

/// Whether `signature` is valid for (the digest of) `message` under the public key.
pub fn verify(
    spec: KeySpec,
    public_der: &[u8],
    alg: SigningAlgorithm,
    kind: MessageType,
    message: &[u8],
    signature: &[u8],
) -> Result<bool> {
    let digest = digest_of(alg.hash(), kind, message);
    match spec {
        KeySpec::EccNistP256 => p256_verify(public_der, &digest, signature),
        KeySpec::EccNistP384 => p384_verify(public_der, &digest, signature),
        _ => {
            let k = rsa::PublicKey::from_public_key_der(public_der).map_err(|_| damaged())?;
            let r = match (alg.is_pss(), alg.hash()) {
                (true, Hash::Sha256) => k.pss_verify_prehash::<Sha256>(&digest, signature),
                (true, Hash::Sha384) => k.pss_verify_prehash::<Sha384>(&digest, signature),
                (true, _) => k.pss_verify_prehash::<Sha512>(&digest, signature),
                (false, Hash::Sha256) => k.pkcs1v15_verify_prehash::<Sha256>(&digest, signature),
                (false, Hash::Sha384) => k.pkcs1v15_verify_prehash::<Sha384>(&digest, signature),
                (false, _) => k.pkcs1v15_verify_prehash::<Sha512>(&digest, signature),
            };
            Ok(r.is_ok())
        }
    }
}

/// RSA-OAEP encryption with the public half (hash and MGF1 hash both the algorithm's).
pub fn rsa_encrypt(
    public_der: &[u8],
    alg: EncryptionAlgorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let k = rsa::PublicKey::from_public_key_der(public_der).map_err(|_| damaged())?;
    let r = match alg {
        EncryptionAlgorithm::RsaesOaepSha1 => k.oaep_encrypt::<sha1::Sha1>(plaintext),
        _ => k.oaep_encrypt::<Sha256>(plaintext),
    };
    r.map_err(|e| match e {
        rsa::Error::MessageTooLong => KmsError::validation("plaintext is too long for this key"),
        _ => internal("RSA-OAEP encryption"),
    })
}

/// RSA-OAEP decryption; any failure is InvalidCiphertext, with no detail (no padding oracle).
pub fn rsa_decrypt(
    material: &[u8],
    alg: EncryptionAlgorithm,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let k = rsa_private(material)?;
    let r = match alg {
        EncryptionAlgorithm::RsaesOaepSha1 => k.oaep_decrypt::<sha1::Sha1>(ciphertext),
        _ => k.oaep_decrypt::<Sha256>(ciphertext),
    };
    r.map(Zeroizing::new).map_err(|_| {
        KmsError::invalid_ciphertext(
            "the ciphertext does not decrypt under this key and encryption algorithm",
        )
    })
}

fn hmac_tag<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Result<Vec<u8>> {
    let mut m = <M as KeyInit>::new_from_slice(key).map_err(|_| damaged())?;
    m.update(message);
    Ok(m.finalize().into_bytes().to_vec())
}

fn hmac_check<M: Mac + KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> Result<bool> {
    let mut m = <M as KeyInit>::new_from_slice(key).map_err(|_| damaged())?;
    m.update(message);
    // verify_slice compares in constant time.
    Ok(m.verify_slice(tag).is_ok())
}

pub fn generate_mac(material: &[u8], alg: MacAlgorithm, message: &[u8]) -> Result<Vec<u8>> {
    match alg {
        MacAlgorithm::HmacSha224 => hmac_tag::<Hmac<Sha224>>(material, message),
        MacAlgorithm::HmacSha256 => hmac_tag::<Hmac<Sha256>>(material, message),
        MacAlgorithm::HmacSha384 => hmac_tag::<Hmac<Sha384>>(material, message),
        MacAlgorithm::HmacSha512 => hmac_tag::<Hmac<Sha512>>(material, message),
    }
}

pub fn verify_mac(material: &[u8], alg: MacAlgorithm, message: &[u8], tag: &[u8]) -> Result<bool> {
    match alg {
        MacAlgorithm::HmacSha224 => hmac_check::<Hmac<Sha224>>(material, message, tag),
        MacAlgorithm::HmacSha256 => hmac_check::<Hmac<Sha256>>(material, message, tag),
        MacAlgorithm::HmacSha384 => hmac_check::<Hmac<Sha384>>(material, message, tag),
        MacAlgorithm::HmacSha512 => hmac_check::<Hmac<Sha512>>(material, message, tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::keyspec::{KeyUsage, signing_algorithms};

    #[test]
    fn every_signing_algorithm_round_trips_raw_and_digest() {
        for spec in [KeySpec::Rsa2048, KeySpec::EccNistP256, KeySpec::EccNistP384] {
            let m = generate(spec).unwrap();
            let public = public_key_der(spec, &m).unwrap();
            for alg in signing_algorithms(spec, KeyUsage::SignVerify) {
                let msg = b"the message";
                let sig = sign(spec, &m, alg, MessageType::Raw, msg).unwrap();
                assert!(verify(spec, &public, alg, MessageType::Raw, msg, &sig).unwrap());
                assert!(!verify(spec, &public, alg, MessageType::Raw, b"other", &sig).unwrap());
                // A DIGEST message is the hash of the RAW one: the same signature verifies.
                let d = digest_of(alg.hash(), MessageType::Raw, msg);
                assert!(verify(spec, &public, alg, MessageType::Digest, &d, &sig).unwrap());
                let sig2 = sign(spec, &m, alg, MessageType::Digest, &d).unwrap();
                assert!(verify(spec, &public, alg, MessageType::Raw, msg, &sig2).unwrap());
                let mut bad = sig.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(!verify(spec, &public, alg, MessageType::Raw, msg, &bad).unwrap());
            }
        }
    }

    #[test]
    fn oaep_round_trips_and_refuses_the_wrong_hash() {
        let m = generate(KeySpec::Rsa2048).unwrap();
        let public = public_key_der(KeySpec::Rsa2048, &m).unwrap();
        let c = rsa_encrypt(&public, EncryptionAlgorithm::RsaesOaepSha256, &[7; 190]).unwrap();
        assert_eq!(c.len(), 256);
        let p = rsa_decrypt(&m, EncryptionAlgorithm::RsaesOaepSha256, &c).unwrap();
        assert_eq!(&p[..], &[7; 190]);
        let e = rsa_decrypt(&m, EncryptionAlgorithm::RsaesOaepSha1, &c).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidCiphertext);
        let e = rsa_encrypt(&public, EncryptionAlgorithm::RsaesOaepSha256, &[7; 191]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Validation);
        let c = rsa_encrypt(&public, EncryptionAlgorithm::RsaesOaepSha1, &[1; 214]).unwrap();
        assert_eq!(
            &rsa_decrypt(&m, EncryptionAlgorithm::RsaesOaepSha1, &c).unwrap()[..],
            &[1; 214]
        );
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let tag = generate_mac(
            b"Jefe",
            MacAlgorithm::HmacSha256,
            b"what do ya want for nothing?",
        )
        .unwrap();
        assert_eq!(
            hex::encode(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let ok = verify_mac(
            b"Jefe",
            MacAlgorithm::HmacSha256,
            b"what do ya want for nothing?",
            &tag,
        );
        assert!(ok.unwrap());
        assert!(!verify_mac(b"Jefe", MacAlgorithm::HmacSha256, b"x", &tag).unwrap());
        let m = generate(KeySpec::Hmac512).unwrap();
        assert_eq!(m.len(), 64);
        assert_eq!(
            generate_mac(&m, MacAlgorithm::HmacSha512, b"x")
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn public_keys_are_spki_der() {
        let m = generate(KeySpec::EccNistP256).unwrap();
        let der = public_key_der(KeySpec::EccNistP256, &m).unwrap();
        // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65-byte point) }
        assert_eq!(der.len(), 91);
        assert_eq!(der[0], 0x30);
        assert!(public_key_der(KeySpec::Hmac256, &[0; 32]).is_err());
    }
}
