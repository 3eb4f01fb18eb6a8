//! The local key management service.

pub mod asymmetric;
pub mod audit;
pub mod blob;
pub mod caller;
pub mod context;
pub mod import;
pub mod key;
pub mod keypair;
pub mod keyspec;
pub mod policy;
pub mod service;
pub mod types;

pub use caller::Caller;
pub use context::EncryptionContext;
pub use service::{KeyRef, Kms};
