//! The CRD crate's integration tests, in one test binary, a module per
//! concern.

mod admission_rules;
mod crd;
mod samples;
mod validation;
