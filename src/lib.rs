//! kmsfs: a local key management service with AWS KMS semantics, and (next) an encrypted FUSE
//! filesystem whose per-file data keys it wraps.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod aws;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cryptocore;
pub mod encoding;
pub mod error;
pub mod fs;
pub mod keystore;
pub mod kms;
pub mod logging;
pub mod provider;
