//! A fine-tuning run, whoever asks for it. The API's request body, the command line's flags and an
//! experiment's grid cell each become a [`RawSpec`] and go through the one parse,
//! [`TrainSpec::parse`], which checks every value and bounds every size; the queue, the store, the
//! workers and the runner accept only the parsed [`TrainSpec`]. [`run`] builds a run from it and
//! sums it up; [`status`] holds a job's states and every transition between them.
pub mod auto;
pub mod fingerprint;
pub mod request;
pub mod results;
pub mod run;
pub mod spec;
pub mod status;

pub use auto::Inferred;
pub use request::{AutoField, Requested};
pub use run::{budget, prepare, prepare_data, train_to_file, LocalRun, PrepareError, Prepared, Run, RunSummary};
pub use spec::{check_metadata, check_suffix, DataFiles, DeviceKind, Limits, Method, RawSpec, TrainSpec};
pub use status::{Desired, Effect, JobStatus, Request};
