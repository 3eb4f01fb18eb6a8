//! The asymmetric and HMAC subcommands: sign, verify, get-public-key, generate-mac,
//! verify-mac, generate-data-key-pair.

use crate::cli::args::{
    DataKeyPairArgs, IoArgs, MacArgs, PublicKeyArgs, SignArgs, VerifyArgs, VerifyMacArgs,
};
use crate::cli::commands::{Ctx, read_limited, read_raw_or_base64};
use crate::cli::output;
use crate::encoding::b64_encode;
use crate::error::{KmsError, Result};
use crate::kms::EncryptionContext;
use crate::kms::asymmetric::SignRequest;
use crate::kms::key::key_arn;
use crate::kms::keyspec::{MAX_MAC_MESSAGE, MAX_SIGN_MESSAGE};
use serde_json::json;

/// Signatures and MACs are at most 512 bytes (RSA_4096); anything bigger is not one.
const MAX_TAG_FILE: usize = 2048;

/// Writes a signature or MAC: raw, base64, or as JSON with `field`.
fn write_tag(
    json_out: bool,
    field: &str,
    key_id: &uuid::Uuid,
    tag: &[u8],
    alg: (&str, &str),
    io: &IoArgs,
) -> Result<()> {
    if json_out {
        return output::json(&json!({
            "KeyId": key_arn(key_id),
            field: b64_encode(tag),
            alg.0: alg.1,
        }));
    }
    if io.base64 {
        output::bytes(
            format!("{}\n", b64_encode(tag)).as_bytes(),
            io.output_file.as_deref(),
        )
    } else {
        output::bytes(tag, io.output_file.as_deref())
    }
}

impl Ctx<'_> {
    fn valid(&self, what: &str, field: &str, key_id: &uuid::Uuid, alg: (&str, &str)) -> Result<()> {
        if self.json {
            return output::json(&json!({ "KeyId": key_arn(key_id), field: true, alg.0: alg.1 }));
        }
        println!("{what} valid");
        Ok(())
    }

    pub(super) fn sign(&self, a: &SignArgs) -> Result<()> {
        let message = read_limited(a.io.input.as_deref(), MAX_SIGN_MESSAGE + 1)?;
        let s = self.kms.sign(
            self.caller,
            &SignRequest {
                key: &a.key,
                message: &message,
                message_type: a.message_type,
                algorithm: a.algorithm,
            },
        )?;
        let alg = ("SigningAlgorithm", a.algorithm.as_str());
        write_tag(self.json, "Signature", &s.key_id, &s.signature, alg, &a.io)
    }

    pub(super) fn verify(&self, a: &VerifyArgs) -> Result<()> {
        let message = read_limited(a.sign.io.input.as_deref(), MAX_SIGN_MESSAGE + 1)?;
        let signature = read_raw_or_base64(Some(&a.signature), MAX_TAG_FILE)?;
        let req = SignRequest {
            key: &a.sign.key,
            message: &message,
            message_type: a.sign.message_type,
            algorithm: a.sign.algorithm,
        };
        let id = self.kms.verify(self.caller, &req, &signature)?;
        let alg = ("SigningAlgorithm", a.sign.algorithm.as_str());
        self.valid("signature", "SignatureValid", &id, alg)
    }

    pub(super) fn get_public_key(&self, a: &PublicKeyArgs) -> Result<()> {
        let p = self.kms.get_public_key(self.caller, &a.key)?;
        if self.json {
            return output::json(&json!({
                "KeyId": key_arn(&p.key_id),
                "PublicKey": b64_encode(&p.public_key),
                "KeySpec": p.key_spec.as_str(),
                "KeyUsage": p.key_usage.as_str(),
            }));
        }
        if a.pem {
            let pem = pem_rfc7468::encode_string(
                "PUBLIC KEY",
                pem_rfc7468::LineEnding::LF,
                &p.public_key,
            )
            .map_err(|e| KmsError::internal(format!("PEM encoding: {e}")))?;
            return output::bytes(pem.as_bytes(), a.output_file.as_deref());
        }
        output::bytes(&p.public_key, a.output_file.as_deref())
    }

    pub(super) fn generate_mac(&self, a: &MacArgs) -> Result<()> {
        let message = read_limited(a.io.input.as_deref(), MAX_MAC_MESSAGE + 1)?;
        let (id, mac) = self
            .kms
            .generate_mac(self.caller, &a.key, a.algorithm, &message)?;
        let alg = ("MacAlgorithm", a.algorithm.as_str());
        write_tag(self.json, "Mac", &id, &mac, alg, &a.io)
    }

    pub(super) fn verify_mac(&self, a: &VerifyMacArgs) -> Result<()> {
        let m = &a.mac_args;
        let message = read_limited(m.io.input.as_deref(), MAX_MAC_MESSAGE + 1)?;
        let mac = read_raw_or_base64(Some(&a.mac), MAX_TAG_FILE)?;
        let id = self
            .kms
            .verify_mac(self.caller, &m.key, m.algorithm, &message, &mac)?;
        self.valid(
            "MAC",
            "MacValid",
            &id,
            ("MacAlgorithm", m.algorithm.as_str()),
        )
    }

    pub(super) fn generate_data_key_pair(&self, a: &DataKeyPairArgs) -> Result<()> {
        let ctx = EncryptionContext::from_pairs(&a.context)?;
        let kp = self.kms.generate_data_key_pair(
            self.caller,
            &a.key,
            a.spec,
            &ctx,
            !a.without_plaintext,
        )?;
        let mut v = json!({
            "KeyId": key_arn(&kp.private_wrapped.key_id),
            "KeyPairSpec": kp.spec.as_str(),
            "PublicKey": b64_encode(&kp.public_key),
            "PrivateKeyCiphertextBlob": b64_encode(&kp.private_wrapped.blob),
        });
        if let (Some(p), Some(o)) = (&kp.private_plaintext, v.as_object_mut()) {
            o.insert("PrivateKeyPlaintext".into(), b64_encode(p).into());
        }
        output::secret_json(&v, None)
    }
}
