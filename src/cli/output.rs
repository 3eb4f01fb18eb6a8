//! Writing results: JSON with AWS field names, or short human-readable text.

use crate::error::{KmsError, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

pub fn json<T: Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| KmsError::internal(format!("encoding output: {e}")))?;
    println!("{s}");
    Ok(())
}

/// JSON that carries plaintext or key material: encoded into a buffer that is wiped after it
/// is written to `to` (or standard output).
pub fn secret_json(v: &serde_json::Value, to: Option<&Path>) -> Result<()> {
    let mut s = zeroize::Zeroizing::new(
        serde_json::to_string_pretty(v)
            .map_err(|e| KmsError::internal(format!("encoding output: {e}")))?,
    );
    s.push('\n');
    bytes(s.as_bytes(), to)
}

/// Writes bytes to a file (0600: it may be plaintext) or to standard output.
pub fn bytes(data: &[u8], to: Option<&Path>) -> Result<()> {
    match to {
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .map_err(|e| KmsError::validation(format!("{}: {e}", p.display())))?;
            f.write_all(data)
                .map_err(|e| KmsError::validation(format!("{}: {e}", p.display())))
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(data)
                .and_then(|_| out.flush())
                .map_err(|e| KmsError::internal(format!("writing output: {e}")))
        }
    }
}

/// Prints `label: value` rows with the values aligned.
pub fn rows(rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<w$}  {v}");
    }
}
