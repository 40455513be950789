//! The app's views: each draws part of the app's state and turns what the user does into
//! commands for the workers or the controllers. They hold no model code.

pub mod compare;
pub mod generate;
pub mod reconstruct;
pub mod train;
