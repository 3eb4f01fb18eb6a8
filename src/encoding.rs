//! Base64 (standard alphabet, padded, as AWS) and hex helpers shared by formats and output.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub fn b64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decodes base64, ignoring surrounding whitespace.
pub fn b64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let cleaned: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(cleaned)
}

/// serde adapter: bytes as a base64 string.
pub mod b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::b64_encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::b64_decode(&s).map_err(serde::de::Error::custom)
    }
}
