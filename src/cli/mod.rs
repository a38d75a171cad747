//! The o2fs program's subcommands beyond `mount` (command lines only: the work is in the library).

pub mod cluster;
pub mod daemon;
pub mod mirror;
