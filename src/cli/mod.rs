//! The `kmsfs` command line.

pub mod args;
pub mod commands;
pub mod lifecycle;
pub mod mountcmd;
pub mod output;
pub mod progress;
pub mod unlock;
