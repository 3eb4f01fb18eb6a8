//! Which key provider serves a cipher directory: the remote service its kmsfs.conf names, or
//! this host's key store.

use crate::aws::remote::{RemoteConfig, RemoteProvider};
use crate::cli::args::Global;
use crate::cli::commands::open_kms;
use crate::config::Config;
use crate::error::Result;
use crate::fs::cipherdir;
use crate::provider::{KeyProvider, LocalProvider};
use std::path::Path;
use std::sync::Arc;

/// A remote provider with credentials from the AWS environment or shared credentials file.
pub fn remote(r: &RemoteConfig) -> Result<Arc<dyn KeyProvider>> {
    let creds = crate::aws::credentials::from_environment()?;
    Ok(Arc::new(RemoteProvider::new(r, creds)?))
}

/// The provider of an existing cipher directory. The key store is opened only for local ones.
pub fn for_cipherdir(g: &Global, cfg: &Config, dir: &Path) -> Result<Arc<dyn KeyProvider>> {
    match cipherdir::read_config(dir)?.provider {
        Some(r) => remote(&r),
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
