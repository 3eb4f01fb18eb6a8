//! Encryption context: string pairs bound to a ciphertext as authenticated data.
//! The canonical encoding is length-prefixed, so {"ab":"c"} and {"a":"bc"} never collide.

use crate::error::{KmsError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upper bound on the encoded context, as AWS's 8 KiB limit.
pub const MAX_CONTEXT_BYTES: usize = 8192;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(pub BTreeMap<String, String>);

impl EncryptionContext {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a context from `key=value` arguments; the value may contain `=`.
    pub fn from_pairs<S: AsRef<str>>(pairs: &[S]) -> Result<Self> {
        let mut map = BTreeMap::new();
        for p in pairs {
            let p = p.as_ref();
            let (k, v) = p.split_once('=').ok_or_else(|| {
                KmsError::validation(format!("encryption context {p:?} is not key=value"))
            })?;
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(KmsError::validation(format!(
                    "encryption context key {k:?} given twice"
                )));
            }
        }
        let ctx = EncryptionContext(map);
        ctx.validate()?;
        Ok(ctx)
    }

    pub fn validate(&self) -> Result<()> {
        if self.0.keys().any(|k| k.is_empty()) {
            return Err(KmsError::validation(
                "encryption context keys must not be empty",
            ));
        }
        let n = self.canonical().len();
        if n > MAX_CONTEXT_BYTES {
            return Err(KmsError::validation(format!(
                "encryption context is {n} bytes encoded; the limit is {MAX_CONTEXT_BYTES}"
            )));
        }
        Ok(())
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// u32 count, then per pair (sorted by key): u32 key length, key, u32 value length, value.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            for s in [k, v] {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn encoding_is_unambiguous() {
        assert_ne!(
            ctx(&[("ab", "c")]).canonical(),
            ctx(&[("a", "bc")]).canonical()
        );
        assert_ne!(ctx(&[]).canonical(), ctx(&[("", "")]).canonical());
        assert_eq!(ctx(&[]).canonical(), vec![0, 0, 0, 0]);
    }

    #[test]
    fn parses_pairs() {
        let c = EncryptionContext::from_pairs(&["a=b=c", "d="]).unwrap();
        assert_eq!(c.get("a"), Some("b=c"));
        assert_eq!(c.get("d"), Some(""));
        assert!(EncryptionContext::from_pairs(&["novalue"]).is_err());
        assert!(EncryptionContext::from_pairs(&["=v"]).is_err());
        assert!(EncryptionContext::from_pairs(&["a=1", "a=2"]).is_err());
        let big = format!("k={}", "x".repeat(MAX_CONTEXT_BYTES));
        assert!(EncryptionContext::from_pairs(&[big]).is_err());
    }

    proptest! {
        #[test]
        fn distinct_contexts_encode_distinctly(
            a in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
            b in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
        ) {
            let (ca, cb) = (EncryptionContext(a.clone()), EncryptionContext(b.clone()));
            prop_assert_eq!(a == b, ca.canonical() == cb.canonical());
        }
    }
}
