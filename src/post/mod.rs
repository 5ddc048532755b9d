//! After the engine: nuclei from the mask, the training targets defined on them, and scores.

pub mod distance;
pub mod instances;
pub mod metrics;
pub mod star;
pub mod targets;
