//! The training stages, one file each: what each trains, its loss, and what it reports. The loop
//! that runs them is [`super::trainer`]; what a stage must provide is [`super::stage::Stage`].

pub mod pixel;
pub mod teacher;
pub mod tokens;
