//! Key specs, usages and algorithms with AWS KMS's names, and which combine: pure tables, no I/O.

use crate::error::{ErrorKind, KmsError, Result};
use serde::{Deserialize, Serialize};

/// Declares an enum whose variants serialize and parse as AWS's names.
macro_rules! aws_names {
    ($(#[$m:meta])* $name:ident, $what:literal {
        $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)?
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] $v),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }

            /// Parses AWS's name (case-insensitive, `-` accepted for `_`).
            pub fn parse(s: &str) -> Result<$name> {
                let norm = s.trim().to_ascii_uppercase().replace('-', "_");
                Self::ALL.iter().copied().find(|v| v.as_str() == norm).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    KmsError::validation(format!(
                        "{s:?} is not a {}: use one of {}", $what, names.join(", ")
                    ))
                })
            }
        }
    };
}

aws_names!(
    /// What a key is: its material and the algorithms it can serve.
    #[derive(Default)]
    KeySpec, "key spec" {
        #[default]
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        EccNistP256 = "ECC_NIST_P256",
        EccNistP384 = "ECC_NIST_P384",
        Hmac224 = "HMAC_224",
        Hmac256 = "HMAC_256",
        Hmac384 = "HMAC_384",
        Hmac512 = "HMAC_512",
    }
);

aws_names!(
    /// What a key may be used for; fixed when the key is created.
    #[derive(Default)]
    KeyUsage, "key usage" {
        #[default]
        EncryptDecrypt = "ENCRYPT_DECRYPT",
        SignVerify = "SIGN_VERIFY",
        GenerateVerifyMac = "GENERATE_VERIFY_MAC",
    }
);

aws_names!(EncryptionAlgorithm, "encryption algorithm" {
    SymmetricDefault = "SYMMETRIC_DEFAULT",
    RsaesOaepSha1 = "RSAES_OAEP_SHA_1",
    RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
});

aws_names!(SigningAlgorithm, "signing algorithm" {
    RsassaPssSha256 = "RSASSA_PSS_SHA_256",
    RsassaPssSha384 = "RSASSA_PSS_SHA_384",
    RsassaPssSha512 = "RSASSA_PSS_SHA_512",
    RsassaPkcs1V15Sha256 = "RSASSA_PKCS1_V1_5_SHA_256",
    RsassaPkcs1V15Sha384 = "RSASSA_PKCS1_V1_5_SHA_384",
    RsassaPkcs1V15Sha512 = "RSASSA_PKCS1_V1_5_SHA_512",
    EcdsaSha256 = "ECDSA_SHA_256",
    EcdsaSha384 = "ECDSA_SHA_384",
});

aws_names!(MacAlgorithm, "MAC algorithm" {
    HmacSha224 = "HMAC_SHA_224",
    HmacSha256 = "HMAC_SHA_256",
    HmacSha384 = "HMAC_SHA_384",
    HmacSha512 = "HMAC_SHA_512",
});

aws_names!(
    /// Sign and Verify take the message itself (RAW) or its digest (DIGEST, not hashed again).
    MessageType, "message type" {
        Raw = "RAW",
        Digest = "DIGEST",
    }
);

aws_names!(
    /// Key pairs GenerateDataKeyPair makes.
    KeyPairSpec, "key pair spec" {
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        EccNistP256 = "ECC_NIST_P256",
        EccNistP384 = "ECC_NIST_P384",
    }
);

/// The most bytes a RAW message to Sign or Verify may have (AWS's limit).
pub const MAX_SIGN_MESSAGE: usize = 4096;
/// The most bytes GenerateMac and VerifyMac take.
pub const MAX_MAC_MESSAGE: usize = 4096;

/// The hash a signing or OAEP algorithm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
}

impl KeySpec {
    pub fn is_rsa(self) -> bool {
        matches!(self, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
    }

    pub fn is_ecc(self) -> bool {
        matches!(self, KeySpec::EccNistP256 | KeySpec::EccNistP384)
    }

    pub fn is_hmac(self) -> bool {
        self.hmac_len().is_some()
    }

    /// Asymmetric keys have a public half that GetPublicKey returns.
    pub fn is_asymmetric(self) -> bool {
        self.is_rsa() || self.is_ecc()
    }

    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeySpec::Rsa2048 => Some(2048),
            KeySpec::Rsa3072 => Some(3072),
            KeySpec::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// Bytes of HMAC key material (the hash's output size, as AWS).
    pub fn hmac_len(self) -> Option<usize> {
        match self {
            KeySpec::Hmac224 => Some(28),
            KeySpec::Hmac256 => Some(32),
            KeySpec::Hmac384 => Some(48),
            KeySpec::Hmac512 => Some(64),
            _ => None,
        }
    }

    pub fn usages(self) -> &'static [KeyUsage] {
        if self.is_rsa() {
            &[KeyUsage::EncryptDecrypt, KeyUsage::SignVerify]
        } else if self.is_ecc() {
            &[KeyUsage::SignVerify]
        } else if self.is_hmac() {
            &[KeyUsage::GenerateVerifyMac]
        } else {
            &[KeyUsage::EncryptDecrypt]
        }
    }

    /// The usage a key of this spec gets when none is named: the only one, or ENCRYPT_DECRYPT.
    pub fn default_usage(self) -> KeyUsage {
        self.usages()[0]
    }

    /// Checks that `usage` is one this spec supports.
    pub fn check_usage(self, usage: KeyUsage) -> Result<()> {
        if self.usages().contains(&usage) {
            return Ok(());
        }
        let ok: Vec<&str> = self.usages().iter().map(|u| u.as_str()).collect();
        Err(KmsError::validation(format!(
            "key spec {} does not support key usage {}: use {}",
            self.as_str(),
            usage.as_str(),
            ok.join(" or ")
        )))
    }

    /// Only symmetric keys rotate (AWS: UnsupportedOperation for the others).
    pub fn rotates(self) -> bool {
        self == KeySpec::SymmetricDefault
    }
}

impl From<KeyPairSpec> for KeySpec {
    fn from(s: KeyPairSpec) -> KeySpec {
        match s {
            KeyPairSpec::Rsa2048 => KeySpec::Rsa2048,
            KeyPairSpec::Rsa3072 => KeySpec::Rsa3072,
            KeyPairSpec::Rsa4096 => KeySpec::Rsa4096,
            KeyPairSpec::EccNistP256 => KeySpec::EccNistP256,
            KeyPairSpec::EccNistP384 => KeySpec::EccNistP384,
        }
    }
}

/// The encryption algorithms a key serves (empty unless its usage is ENCRYPT_DECRYPT).
pub fn encryption_algorithms(spec: KeySpec, usage: KeyUsage) -> Vec<EncryptionAlgorithm> {
    match (usage, spec.is_rsa()) {
        (KeyUsage::EncryptDecrypt, true) => vec![
            EncryptionAlgorithm::RsaesOaepSha1,
            EncryptionAlgorithm::RsaesOaepSha256,
        ],
        (KeyUsage::EncryptDecrypt, false) => vec![EncryptionAlgorithm::SymmetricDefault],
        _ => Vec::new(),
    }
}

pub fn signing_algorithms(spec: KeySpec, usage: KeyUsage) -> Vec<SigningAlgorithm> {
    use SigningAlgorithm::*;
    if usage != KeyUsage::SignVerify {
        return Vec::new();
    }
    match spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => vec![
            RsassaPssSha256,
            RsassaPssSha384,
            RsassaPssSha512,
            RsassaPkcs1V15Sha256,
            RsassaPkcs1V15Sha384,
            RsassaPkcs1V15Sha512,
        ],
        KeySpec::EccNistP256 => vec![EcdsaSha256],
        KeySpec::EccNistP384 => vec![EcdsaSha384],
        _ => Vec::new(),
    }
}

pub fn mac_algorithms(spec: KeySpec) -> Vec<MacAlgorithm> {
    match spec {
        KeySpec::Hmac224 => vec![MacAlgorithm::HmacSha224],
        KeySpec::Hmac256 => vec![MacAlgorithm::HmacSha256],
        KeySpec::Hmac384 => vec![MacAlgorithm::HmacSha384],
        KeySpec::Hmac512 => vec![MacAlgorithm::HmacSha512],
        _ => Vec::new(),
    }
}

fn usage_error(what: &str, alg: &str, spec: KeySpec, usage: KeyUsage) -> KmsError {
    KmsError::new(
        ErrorKind::InvalidKeyUsage,
        format!(
            "{what} {alg} is not valid for a {} key with usage {}",
            spec.as_str(),
            usage.as_str()
        ),
    )
}

/// Checks a requested encryption algorithm against the key; None means SYMMETRIC_DEFAULT.
pub fn check_encryption(
    spec: KeySpec,
    usage: KeyUsage,
    alg: Option<EncryptionAlgorithm>,
) -> Result<EncryptionAlgorithm> {
    let alg = alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault);
    if encryption_algorithms(spec, usage).contains(&alg) {
        return Ok(alg);
    }
    Err(usage_error(
        "encryption algorithm",
        alg.as_str(),
        spec,
        usage,
    ))
}

pub fn check_signing(spec: KeySpec, usage: KeyUsage, alg: SigningAlgorithm) -> Result<()> {
    if signing_algorithms(spec, usage).contains(&alg) {
        return Ok(());
    }
    Err(usage_error("signing algorithm", alg.as_str(), spec, usage))
}

pub fn check_mac(spec: KeySpec, usage: KeyUsage, alg: MacAlgorithm) -> Result<()> {
    if usage == KeyUsage::GenerateVerifyMac && mac_algorithms(spec).contains(&alg) {
        return Ok(());
    }
    Err(usage_error("MAC algorithm", alg.as_str(), spec, usage))
}

impl SigningAlgorithm {
    pub fn hash(self) -> Hash {
        use SigningAlgorithm::*;
        match self {
            RsassaPssSha256 | RsassaPkcs1V15Sha256 | EcdsaSha256 => Hash::Sha256,
            RsassaPssSha384 | RsassaPkcs1V15Sha384 | EcdsaSha384 => Hash::Sha384,
            RsassaPssSha512 | RsassaPkcs1V15Sha512 => Hash::Sha512,
        }
    }

    pub fn is_pss(self) -> bool {
        use SigningAlgorithm::*;
        matches!(self, RsassaPssSha256 | RsassaPssSha384 | RsassaPssSha512)
    }
}

impl EncryptionAlgorithm {
    /// The OAEP hash (also MGF1's), for the RSA algorithms.
    pub fn oaep_hash(self) -> Option<Hash> {
        match self {
            EncryptionAlgorithm::RsaesOaepSha1 => Some(Hash::Sha1),
            EncryptionAlgorithm::RsaesOaepSha256 => Some(Hash::Sha256),
            EncryptionAlgorithm::SymmetricDefault => None,
        }
    }
}

/// The most plaintext one Encrypt takes: 4096 for symmetric keys, and for RSA OAEP the modulus
/// bytes less twice the hash and 2 (RFC 8017; RSA_2048 with SHA-256: 190).
pub fn max_plaintext(spec: KeySpec, alg: EncryptionAlgorithm) -> usize {
    match (spec.rsa_bits(), alg.oaep_hash()) {
        (Some(bits), Some(h)) => bits / 8 - 2 * h.output_len() - 2,
        _ => crate::kms::service::MAX_PLAINTEXT,
    }
}

/// Checks a message for Sign/Verify: RAW at most 4096 bytes, DIGEST exactly the hash's length.
pub fn check_message(alg: SigningAlgorithm, kind: MessageType, message: &[u8]) -> Result<()> {
    match kind {
        MessageType::Raw if message.is_empty() || message.len() > MAX_SIGN_MESSAGE => {
            Err(KmsError::validation(format!(
                "a RAW message is 1 to {MAX_SIGN_MESSAGE} bytes; this one is {} \
                 (sign its digest with --message-type DIGEST)",
                message.len()
            )))
        }
        MessageType::Digest if message.len() != alg.hash().output_len() => {
            Err(KmsError::validation(format!(
                "a DIGEST message for {} is {} bytes; this one is {}",
                alg.as_str(),
                alg.hash().output_len(),
                message.len()
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_parse_loosely() {
        for s in KeySpec::ALL {
            assert_eq!(KeySpec::parse(s.as_str()).unwrap(), *s);
        }
        assert_eq!(KeySpec::parse("rsa-2048").unwrap(), KeySpec::Rsa2048);
        assert_eq!(
            SigningAlgorithm::parse("ecdsa_sha_256").unwrap(),
            SigningAlgorithm::EcdsaSha256
        );
        let e = KeySpec::parse("RSA_1024").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Validation);
        assert!(e.message.contains("RSA_2048"), "{}", e.message);
        let j = serde_json::to_string(&KeySpec::EccNistP384).unwrap();
        assert_eq!(j, "\"ECC_NIST_P384\"");
    }

    #[test]
    fn usages_follow_aws() {
        assert!(KeySpec::Rsa3072.check_usage(KeyUsage::SignVerify).is_ok());
        assert!(
            KeySpec::Rsa3072
                .check_usage(KeyUsage::EncryptDecrypt)
                .is_ok()
        );
        assert!(
            KeySpec::EccNistP256
                .check_usage(KeyUsage::EncryptDecrypt)
                .is_err()
        );
        assert!(KeySpec::Hmac256.check_usage(KeyUsage::SignVerify).is_err());
        assert!(
            KeySpec::SymmetricDefault
                .check_usage(KeyUsage::GenerateVerifyMac)
                .is_err()
        );
        assert_eq!(
            KeySpec::Hmac384.default_usage(),
            KeyUsage::GenerateVerifyMac
        );
        assert_eq!(KeySpec::EccNistP384.default_usage(), KeyUsage::SignVerify);
        assert!(KeySpec::SymmetricDefault.rotates());
        assert!(!KeySpec::Rsa2048.rotates() && !KeySpec::Hmac256.rotates());
    }

    #[test]
    fn algorithms_per_key() {
        use SigningAlgorithm::*;
        assert_eq!(
            signing_algorithms(KeySpec::EccNistP256, KeyUsage::SignVerify),
            vec![EcdsaSha256]
        );
        assert!(check_signing(KeySpec::EccNistP256, KeyUsage::SignVerify, EcdsaSha384).is_err());
        assert!(
            check_signing(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, RsassaPssSha256).is_err()
        );
        assert!(
            check_signing(KeySpec::Rsa4096, KeyUsage::SignVerify, RsassaPkcs1V15Sha512).is_ok()
        );
        let e = check_signing(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac, EcdsaSha256);
        assert_eq!(e.unwrap_err().kind, ErrorKind::InvalidKeyUsage);
        assert!(
            check_mac(
                KeySpec::Hmac256,
                KeyUsage::GenerateVerifyMac,
                MacAlgorithm::HmacSha256
            )
            .is_ok()
        );
        assert!(
            check_mac(
                KeySpec::Hmac256,
                KeyUsage::GenerateVerifyMac,
                MacAlgorithm::HmacSha512
            )
            .is_err()
        );
    }

    #[test]
    fn encryption_checks() {
        let e = check_encryption(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt, None);
        assert_eq!(e.unwrap(), EncryptionAlgorithm::SymmetricDefault);
        let e = check_encryption(
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            Some(EncryptionAlgorithm::RsaesOaepSha256),
        );
        assert_eq!(e.unwrap_err().kind, ErrorKind::InvalidKeyUsage);
        let e = check_encryption(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, None);
        assert_eq!(e.unwrap_err().kind, ErrorKind::InvalidKeyUsage);
        let e = check_encryption(KeySpec::Rsa2048, KeyUsage::SignVerify, None);
        assert_eq!(e.unwrap_err().kind, ErrorKind::InvalidKeyUsage);
    }

    #[test]
    fn oaep_limits_match_aws() {
        use EncryptionAlgorithm::*;
        assert_eq!(max_plaintext(KeySpec::Rsa2048, RsaesOaepSha1), 214);
        assert_eq!(max_plaintext(KeySpec::Rsa2048, RsaesOaepSha256), 190);
        assert_eq!(max_plaintext(KeySpec::Rsa3072, RsaesOaepSha1), 342);
        assert_eq!(max_plaintext(KeySpec::Rsa3072, RsaesOaepSha256), 318);
        assert_eq!(max_plaintext(KeySpec::Rsa4096, RsaesOaepSha1), 470);
        assert_eq!(max_plaintext(KeySpec::Rsa4096, RsaesOaepSha256), 446);
        assert_eq!(
            max_plaintext(KeySpec::SymmetricDefault, SymmetricDefault),
            4096
        );
    }

    #[test]
    fn message_checks() {
        use SigningAlgorithm::*;
        assert!(check_message(EcdsaSha384, MessageType::Digest, &[0; 48]).is_ok());
        assert!(check_message(EcdsaSha384, MessageType::Digest, &[0; 32]).is_err());
        assert!(check_message(RsassaPssSha512, MessageType::Raw, &[0; 4096]).is_ok());
        assert!(check_message(RsassaPssSha512, MessageType::Raw, &[0; 4097]).is_err());
        assert!(check_message(RsassaPssSha512, MessageType::Raw, &[]).is_err());
    }
}
