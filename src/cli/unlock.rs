//! Finding the key store and the secret that unlocks it, from flags, environment, config or a prompt.

use crate::cli::args::Global;
use crate::config::{Config, default_keystore_dir};
use crate::error::{KmsError, Result};
use crate::keystore::rootkey::{RootKind, RootSecret};
use std::io::IsTerminal;
use std::path::PathBuf;

pub const PASSPHRASE_ENV: &str = "KMSFS_PASSPHRASE";

pub fn keystore_dir(g: &Global, cfg: &Config) -> PathBuf {
    g.keystore
        .clone()
        .or_else(|| cfg.keystore.path.clone())
        .unwrap_or_else(default_keystore_dir)
}

/// The secret from flags, environment or config, in that order; None if none is given.
fn configured_secret(g: &Global, cfg: &Config) -> Result<Option<RootSecret>> {
    if let Some(f) = &g.root_key_file {
        return RootSecret::key_from_file(f).map(Some);
    }
    if let Some(f) = &g.passphrase_file {
        return RootSecret::passphrase_from_file(f).map(Some);
    }
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return RootSecret::passphrase(p.into_bytes()).map(Some);
    }
    if let Some(f) = &cfg.keystore.root_key_file {
        return RootSecret::key_from_file(f).map(Some);
    }
    if let Some(f) = &cfg.keystore.passphrase_file {
        return RootSecret::passphrase_from_file(f).map(Some);
    }
    Ok(None)
}

/// Whether flags, environment or config give the secret (so nothing needs to be typed).
pub fn has_configured_secret(g: &Global, cfg: &Config) -> bool {
    g.root_key_file.is_some()
        || g.passphrase_file.is_some()
        || std::env::var_os(PASSPHRASE_ENV).is_some()
        || cfg.keystore.root_key_file.is_some()
        || cfg.keystore.passphrase_file.is_some()
}

fn prompt(text: &str) -> Result<RootSecret> {
    let p = rpassword::prompt_password(text)
        .map_err(|e| KmsError::validation(format!("reading the passphrase: {e}")))?;
    RootSecret::passphrase(p.into_bytes())
}

fn no_secret() -> KmsError {
    KmsError::validation(
        "the key store needs its passphrase or root key: give --passphrase-file FILE, \
         $KMSFS_PASSPHRASE or --root-key-file FILE (no terminal to ask on)",
    )
}

/// The secret for opening an existing store of `kind`, prompting on a terminal if none is given.
pub fn secret_for_open(g: &Global, cfg: &Config, kind: RootKind) -> Result<RootSecret> {
    if let Some(s) = configured_secret(g, cfg)? {
        return Ok(s);
    }
    if kind == RootKind::Passphrase && std::io::stdin().is_terminal() {
        return prompt("kmsfs key store passphrase: ");
    }
    Err(no_secret())
}

/// The secret for a new store; a typed passphrase is asked twice.
pub fn secret_for_init(g: &Global, cfg: &Config) -> Result<RootSecret> {
    if let Some(s) = configured_secret(g, cfg)? {
        return Ok(s);
    }
    if !std::io::stdin().is_terminal() {
        return Err(no_secret());
    }
    let a = prompt("new key store passphrase: ")?;
    let b = prompt("repeat the passphrase: ")?;
    match (&a, &b) {
        (RootSecret::Passphrase(x), RootSecret::Passphrase(y)) if x == y => Ok(a),
        _ => Err(KmsError::validation("the passphrases differ")),
    }
}
