//! The `kmsfs` command line.

pub mod args;
pub mod commands;
pub mod mountcmd;
pub mod output;
pub mod unlock;
