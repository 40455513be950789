//! Evaluation: image metrics, token statistics, rFID, and the `sftok eval` report.

pub mod frechet;
pub mod inception;
pub mod metrics;
pub mod paired;
pub mod plot;
pub mod references;
pub mod report;

pub use report::{EvalOptions, EvalReport, FidFeatures, evaluate};
