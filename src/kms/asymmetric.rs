//! KMS operations of asymmetric and HMAC keys, and key pairs for envelope use: Sign, Verify,
//! GetPublicKey, GenerateMac, VerifyMac, GenerateDataKeyPair. Each runs as one audited
//! transaction like the symmetric operations in service.rs; the private half never leaves.

use crate::error::{ErrorKind, KmsError, Result};
use crate::kms::caller::Caller;
use crate::kms::context::EncryptionContext;
use crate::kms::keypair;
use crate::kms::keyspec::{
    self, KeyPairSpec, KeySpec, MacAlgorithm, MessageType, SigningAlgorithm,
};
use crate::kms::service::{Draft, Kms, Txn};
use crate::kms::types::{DataKeyPair, PublicKeyInfo};
use zeroize::Zeroizing;

/// A Sign or Verify request.
pub struct SignRequest<'a> {
    pub key: &'a str,
    pub message: &'a [u8],
    pub message_type: MessageType,
    pub algorithm: SigningAlgorithm,
}

/// A signature and the key version that made it.
pub struct Signed {
    pub key_id: uuid::Uuid,
    pub signature: Vec<u8>,
}

impl Kms {
    pub fn sign(&self, caller: &Caller, r: &SignRequest) -> Result<Signed> {
        self.run(caller, "Sign", |t, d| {
            let (id, spec, material) = signing_key(t, r, "kms:Sign", d)?;
            d.message = Some(r.algorithm.as_str().to_string());
            Ok(Signed {
                key_id: id,
                signature: keypair::sign(spec, &material, r.algorithm, r.message_type, r.message)?,
            })
        })
    }

    /// Ok(key id) when the signature is valid; KMSInvalidSignatureException when it is not.
    pub fn verify(&self, caller: &Caller, r: &SignRequest, signature: &[u8]) -> Result<uuid::Uuid> {
        self.run(caller, "Verify", |t, d| {
            let (id, spec, material) = signing_key(t, r, "kms:Verify", d)?;
            let public = keypair::public_key_der(spec, &material)?;
            let ok = keypair::verify(
                spec,
                &public,
                r.algorithm,
                r.message_type,
                r.message,
                signature,
            )?;
            if !ok {
                return Err(KmsError::new(
                    ErrorKind::InvalidSignature,
                    format!(
                        "the signature does not verify with key {id} and {}",
                        r.algorithm.as_str()
                    ),
                ));
            }
            Ok(id)
        })
    }

    pub fn get_public_key(&self, caller: &Caller, key: &str) -> Result<PublicKeyInfo> {
        self.run(caller, "GetPublicKey", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:GetPublicKey", &EncryptionContext::default())?;
            let k = t.key(id)?;
            if !k.key_spec.is_asymmetric() {
                return Err(KmsError::new(
                    ErrorKind::UnsupportedOperation,
                    format!(
                        "key {id} is {}: only RSA and ECC keys have a public key",
                        k.key_spec.as_str()
                    ),
                ));
            }
            let (spec, usage) = (k.key_spec, k.key_usage);
            let (_, material) = t.usable_secret(id, d)?;
            Ok(PublicKeyInfo {
                key_id: id,
                public_key: keypair::public_key_der(spec, &material)?,
                key_spec: spec,
                key_usage: usage,
            })
        })
    }

    pub fn generate_mac(
        &self,
        caller: &Caller,
        key: &str,
        alg: MacAlgorithm,
        message: &[u8],
    ) -> Result<(uuid::Uuid, Vec<u8>)> {
        self.run(caller, "GenerateMac", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:GenerateMac", &EncryptionContext::default())?;
            let material = mac_key(t, id, alg, message, d)?;
            Ok((id, keypair::generate_mac(&material, alg, message)?))
        })
    }

    /// Ok(key id) when the MAC matches; KMSInvalidMacException when it does not.
    pub fn verify_mac(
        &self,
        caller: &Caller,
        key: &str,
        alg: MacAlgorithm,
        message: &[u8],
        mac: &[u8],
    ) -> Result<uuid::Uuid> {
        self.run(caller, "VerifyMac", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:VerifyMac", &EncryptionContext::default())?;
            let material = mac_key(t, id, alg, message, d)?;
            if !keypair::verify_mac(&material, alg, message, mac)? {
                return Err(KmsError::new(
                    ErrorKind::InvalidMac,
                    format!("the MAC does not verify with key {id} and {}", alg.as_str()),
                ));
            }
            Ok(id)
        })
    }

    /// A fresh key pair whose private half comes back encrypted under the symmetric `key` (and
    /// in plaintext unless `with_plaintext` is false), as AWS's GenerateDataKeyPair.
    pub fn generate_data_key_pair(
        &self,
        caller: &Caller,
        key: &str,
        spec: KeyPairSpec,
        ctx: &EncryptionContext,
        with_plaintext: bool,
    ) -> Result<DataKeyPair> {
        let op = if with_plaintext {
            "GenerateDataKeyPair"
        } else {
            "GenerateDataKeyPairWithoutPlaintext"
        };
        // Generate outside the store lock (an RSA_4096 pair can take a second), and only for a
        // caller the policy allows.
        self.precheck(caller, key, &format!("kms:{op}"), ctx, |t, id| {
            t.check_symmetric(id, op)?;
            t.key(id)?.check_usable()
        })?;
        let private = keypair::generate(KeySpec::from(spec))?;
        let public_key = keypair::public_key_der(KeySpec::from(spec), &private)?;
        self.run(caller, op, |t, d| {
            d.context = ctx.clone();
            let id = t.resolve(key, d)?;
            ctx.validate()?;
            t.authorize(id, &format!("kms:{op}"), ctx)?;
            t.check_symmetric(id, op)?;
            let wrapped = t.seal_blob(id, &private, ctx, d)?;
            d.message = Some(spec.as_str().to_string());
            Ok(DataKeyPair {
                private_plaintext: with_plaintext.then(|| private.clone()),
                private_wrapped: wrapped,
                public_key: public_key.clone(),
                spec,
            })
        })
    }
}

/// Resolves and checks a Sign or Verify request (`action` in the key policy, the algorithm
/// against the key, the message's length, the key's state); returns the key's id, spec and
/// private material.
fn signing_key(
    t: &mut Txn,
    r: &SignRequest,
    action: &str,
    d: &mut Draft,
) -> Result<(uuid::Uuid, KeySpec, Zeroizing<Vec<u8>>)> {
    let id = t.resolve(r.key, d)?;
    t.authorize(id, action, &EncryptionContext::default())?;
    let k = t.key(id)?;
    keyspec::check_signing(k.key_spec, k.key_usage, r.algorithm)?;
    keyspec::check_message(r.algorithm, r.message_type, r.message)?;
    let spec = k.key_spec;
    let (_, material) = t.usable_secret(id, d)?;
    Ok((id, spec, material))
}

/// Checks a MAC request against the key and returns the key's material.
fn mac_key(
    t: &Txn,
    id: uuid::Uuid,
    alg: MacAlgorithm,
    message: &[u8],
    d: &mut Draft,
) -> Result<Zeroizing<Vec<u8>>> {
    let k = t.key(id)?;
    keyspec::check_mac(k.key_spec, k.key_usage, alg)?;
    if message.is_empty() || message.len() > keyspec::MAX_MAC_MESSAGE {
        return Err(KmsError::validation(format!(
            "a MAC message is 1 to {} bytes; this one is {}",
            keyspec::MAX_MAC_MESSAGE,
            message.len()
        )));
    }
    Ok(t.usable_secret(id, d)?.1)
}
