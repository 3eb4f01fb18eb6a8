//! The encrypted filesystem: a FUSE view of a cipher directory, with per-file data keys wrapped by
//! a CMK through the key provider.

pub mod cipherdir;
pub mod contentenc;
pub mod dekcache;
pub mod errno;
pub mod fileio;
pub mod fsck;
pub mod fuse;
pub mod header;
pub mod inodes;
pub mod keyring;
pub mod mount;
pub mod nametransform;
pub mod notify;
pub mod ops;
pub mod pagecache;
pub mod reaper;
pub mod rewrap;
pub mod sys;
pub mod undo;
pub mod uring;
