//! The AWS side of kmsfs: SigV4, the AWS KMS JSON 1.1 wire format, the `kmsfs serve` API
//! server that speaks it, and the client the remote key provider uses.

pub mod client;
pub mod credentials;
pub mod operations;
pub mod remote;
pub mod server;
pub mod sigv4;
