//! SFTok Studio: the `sftok` command line ([`cli`]) and the desktop app ([`gui`]).

pub mod assets;
pub mod cli;
pub mod gui;
pub mod words;

#[cfg(test)]
mod front_ends_agree;
