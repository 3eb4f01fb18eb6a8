//! The TOML configuration file (config/kmsfs.toml documents every key).

use crate::error::{KmsError, Result};
use crate::keystore::rootkey::KdfParams;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const CONFIG_ENV: &str = "KMSFS_CONFIG";
pub const SYSTEM_CONFIG: &str = "/etc/kmsfs/kmsfs.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub keystore: KeystoreConfig,
    #[serde(default)]
    pub mount: MountConfig,
    #[serde(default)]
    pub remote: RemoteSection,
}

/// Remote key services.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSection {
    /// Key service endpoints that cipher directories may name (besides the ones this user
    /// trusted by running `kmsfs init --provider aws-kms` with them).
    #[serde(default)]
    pub trusted_endpoints: Vec<String>,
}

/// Defaults for `kmsfs mount`; flags override them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    pub allow_other: Option<bool>,
    pub read_only: Option<bool>,
    /// FUSE worker threads.
    pub threads: Option<usize>,
    /// Kernel readahead for the mount in KiB (0: the kernel's default).
    pub readahead_kib: Option<u32>,
    /// "auto", "on" or "off": FUSE over io_uring (see `kmsfs mount --help`).
    pub io_uring: Option<crate::fs::mount::IoUringMode>,
    /// "batched" or "each": when audit records are synced (see `kmsfs mount --help`).
    pub audit_sync: Option<crate::fs::mount::AuditSync>,
    /// Data keys kept for reopening files without a KMS Decrypt (0: none).
    pub data_key_cache: Option<usize>,
    /// Files opened for writing bypass the page cache (see `kmsfs mount --help`).
    pub direct_writes: Option<bool>,
    /// Cached pages survive reopening an unchanged file (see `kmsfs mount --help`).
    pub keep_cache: Option<bool>,
    /// How long the kernel may cache attributes and names, in milliseconds.
    pub attr_ttl_ms: Option<u64>,
    pub log_file: Option<PathBuf>,
    /// Unmount after this long without access (humantime: "15m", "1h").
    pub idle: Option<String>,
    pub noexec: Option<bool>,
    /// Kernel permission checks on root mounts without allow_other too.
    pub default_permissions: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoreConfig {
    /// Key store directory.
    pub path: Option<PathBuf>,
    /// File whose first line is the passphrase.
    pub passphrase_file: Option<PathBuf>,
    /// File holding the 32-byte root key (instead of a passphrase).
    pub root_key_file: Option<PathBuf>,
    /// Argon2id costs for `keystore init`.
    pub kdf: Option<KdfParams>,
}

impl Config {
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| KmsError::validation(format!("{}: {e}", origin.display())))?;
        if let Some(k) = &cfg.keystore.kdf {
            k.validate()?;
        }
        Ok(cfg)
    }

    /// Loads `explicit`, else `$KMSFS_CONFIG`, else /etc/kmsfs/kmsfs.toml if present, else defaults.
    /// A file named explicitly must exist.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let (path, required) = match (explicit, env) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (p, true),
            (None, None) => (PathBuf::from(SYSTEM_CONFIG), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(e) => Err(KmsError::validation(format!("{}: {e}", path.display()))),
        }
    }
}

/// The per-user default key store: `$XDG_DATA_HOME/kmsfs/keystore`, else `~/.local/share/kmsfs/keystore`.
pub fn default_keystore_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("kmsfs/keystore");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/kmsfs/keystore")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../config/kmsfs.toml");
        let c = Config::parse(text, Path::new("kmsfs.toml")).unwrap();
        assert!(c.keystore.path.is_some());
        assert!(c.keystore.kdf.is_some());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::parse("[keystore]\npaht = \"/x\"\n", Path::new("c")).is_err());
        assert!(Config::parse("nonsense", Path::new("c")).is_err());
        assert!(Config::parse("", Path::new("c")).is_ok());
    }
}
