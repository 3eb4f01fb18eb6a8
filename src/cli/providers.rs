//! Which key provider serves a cipher directory: the remote service its kmsfs.conf names, or
//! this host's key store.
//!
//! kmsfs.conf is authenticated by a MAC under the volume key, which the provider unwraps, so a
//! remote endpoint cannot be taken from kmsfs.conf on trust: whoever can write the file could
//! name their own service, hand out a volume key of their choosing with a matching MAC, and
//! then learn every new file's data key. A remote endpoint must therefore be one this host
//! chose: given to `kmsfs init` by this user (recorded in ~/.config/kmsfs/trusted-endpoints) or
//! listed in the config file's `[remote] trusted_endpoints`.

use crate::aws::remote::{RemoteConfig, RemoteProvider};
use crate::cli::args::Global;
use crate::cli::commands::open_kms;
use crate::config::Config;
use crate::error::{KmsError, Result};
use crate::fs::cipherdir;
use crate::provider::{KeyProvider, LocalProvider};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A remote provider with credentials from the AWS environment or shared credentials file.
pub fn remote(r: &RemoteConfig) -> Result<Arc<dyn KeyProvider>> {
    let creds = crate::aws::credentials::from_environment()?;
    Ok(Arc::new(RemoteProvider::new(r, creds)?))
}

/// The user's list of endpoints they gave to `kmsfs init`.
fn trusted_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("kmsfs").join("trusted-endpoints"))
}

fn normalize(endpoint: &str) -> String {
    endpoint.trim().trim_end_matches('/').to_ascii_lowercase()
}

fn user_trusted() -> Vec<String> {
    trusted_file()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|t| t.lines().map(normalize).filter(|l| !l.is_empty()).collect())
        .unwrap_or_default()
}

/// Records an endpoint the user chose (at `kmsfs init`).
pub fn trust(endpoint: &str) -> Result<()> {
    let e = normalize(endpoint);
    if user_trusted().contains(&e) {
        return Ok(());
    }
    let file = trusted_file()
        .ok_or_else(|| KmsError::validation("no HOME to record the trusted endpoint in"))?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|err| KmsError::io(dir.display(), err))?;
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| writeln!(f, "{e}"))
        .map_err(|err| KmsError::io(file.display(), err))
}

/// Refuses an endpoint this host did not choose.
fn check_trusted(cfg: &Config, dir: &Path, r: &RemoteConfig) -> Result<()> {
    let e = normalize(&r.endpoint);
    if user_trusted().contains(&e)
        || cfg
            .remote
            .trusted_endpoints
            .iter()
            .any(|t| normalize(t) == e)
    {
        return Ok(());
    }
    Err(KmsError::validation(format!(
        "{}: its kmsfs.conf names the key service {}, which nobody on this host chose (a \
         rewritten kmsfs.conf could otherwise send this mount's keys elsewhere). If it is \
         right, add it to [remote] trusted_endpoints in the config file or to {}",
        dir.display(),
        r.endpoint,
        trusted_file().map_or_else(
            || "~/.config/kmsfs/trusted-endpoints".into(),
            |f| f.display().to_string()
        )
    )))
}

/// The provider of an existing cipher directory. The key store is opened only for local ones.
pub fn for_cipherdir(g: &Global, cfg: &Config, dir: &Path) -> Result<Arc<dyn KeyProvider>> {
    match cipherdir::read_config(dir)?.provider {
        Some(r) => {
            check_trusted(cfg, dir, &r)?;
            remote(&r)
        }
        None => {
            let kms = open_kms(g, cfg)?;
            if let Ok(c) = dir.canonicalize() {
                // Best effort: the inventory of retire-version looks here.
                if let Err(e) = kms.register_cipherdir(&c) {
                    log::warn!("could not register {} with the key store: {e}", c.display());
                }
            }
            Ok(Arc::new(LocalProvider::new(kms)))
        }
    }
}
