//! A job's life: its status, what a client last asked of it (`desired`), and every transition
//! between them, in one place. Both are stored as the same TEXT values in SQLite and PostgreSQL
//! (`as_str`/`parse` are the only encoding), so databases written before these types read unchanged.
use std::fmt;

use crate::train::{Command, Ending};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    ValidatingFiles,
    Queued,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

/// What a client last asked of a job; its worker reads it with every lease renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Desired {
    Run,
    Pause,
    Cancel,
}

/// A client's request to change a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Cancel,
    Pause,
    Resume,
}

/// How a request is carried out on a job in a given status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The store moves the job from the status it was read in to `to` (and fails, for the caller
    /// to read again, when the job moved meanwhile); `desired` is recorded first when set.
    Move { to: JobStatus, desired: Option<Desired> },
    /// The job's worker is asked through `desired`, and records the outcome itself.
    Ask(Desired),
}

/// Why a job failed: the job object's `error`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
}

/// A text that is no status (or desired state) this version knows: a corrupt row.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub struct UnknownState {
    what: &'static str,
    value: String,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::ValidatingFiles,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Paused,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownState> {
        Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownState { what: "job status", value: s.to_string() })
    }

    /// Nothing happens to a job after it reaches one of these.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }

    /// What `request` does to a job in this status, or why it cannot (a conflict).
    pub fn on(self, request: Request) -> Result<Effect, String> {
        use JobStatus::*;
        match (request, self) {
            (_, s) if s.is_terminal() => Err(format!("is already {s}")),
            (Request::Cancel, Queued | Paused | ValidatingFiles) => Ok(Effect::Move { to: Cancelled, desired: None }),
            (Request::Cancel, Running) => Ok(Effect::Ask(Desired::Cancel)),
            (Request::Pause, Queued) => Ok(Effect::Move { to: Paused, desired: None }),
            (Request::Pause, Running) => Ok(Effect::Ask(Desired::Pause)),
            (Request::Pause, s) => Err(format!("is {s}; only a queued or running job can be paused")),
            (Request::Resume, Paused) => Ok(Effect::Move { to: Queued, desired: Some(Desired::Run) }),
            (Request::Resume, s) => Err(format!("is {s}; only a paused job can be resumed")),
            (Request::Cancel, _) => unreachable!("every non-terminal status is matched above"),
        }
    }

    /// Where a running job goes when its training loop ends this way.
    pub fn after(ending: Ending) -> JobStatus {
        match ending {
            Ending::Finished | Ending::EarlyStopped => JobStatus::Succeeded,
            Ending::Cancelled => JobStatus::Cancelled,
            Ending::Paused => JobStatus::Paused,
            Ending::Interrupted | Ending::Suspended => JobStatus::Queued,
        }
    }
}

impl Desired {
    pub const ALL: [Desired; 3] = [Desired::Run, Desired::Pause, Desired::Cancel];

    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Run => "run",
            Desired::Pause => "pause",
            Desired::Cancel => "cancel",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownState> {
        Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownState { what: "desired state", value: s.to_string() })
    }

    /// The command a running training loop gets for it.
    pub fn command(self) -> Command {
        match self {
            Desired::Run => Command::Run,
            Desired::Pause => Command::Pause,
            Desired::Cancel => Command::Cancel,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for JobStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_written_and_nothing_else_reads() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()).unwrap(), s);
        }
        for d in Desired::ALL {
            assert_eq!(Desired::parse(d.as_str()).unwrap(), d);
        }
        assert!(JobStatus::parse("Running").is_err());
        assert!(Desired::parse("").is_err());
    }

    #[test]
    fn terminal_jobs_refuse_every_request() {
        for s in [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled] {
            for r in [Request::Cancel, Request::Pause, Request::Resume] {
                assert_eq!(s.on(r), Err(format!("is already {s}")));
            }
        }
    }

    #[test]
    fn cancel_moves_a_waiting_job_and_asks_a_running_one() {
        use JobStatus::*;
        for s in [Queued, Paused, ValidatingFiles] {
            assert_eq!(s.on(Request::Cancel), Ok(Effect::Move { to: Cancelled, desired: None }));
        }
        assert_eq!(Running.on(Request::Cancel), Ok(Effect::Ask(Desired::Cancel)));
    }

    #[test]
    fn pause_and_resume_follow_the_documented_states() {
        use JobStatus::*;
        assert_eq!(Queued.on(Request::Pause), Ok(Effect::Move { to: Paused, desired: None }));
        assert_eq!(Running.on(Request::Pause), Ok(Effect::Ask(Desired::Pause)));
        assert!(Paused.on(Request::Pause).unwrap_err().contains("only a queued or running job"));
        assert!(ValidatingFiles.on(Request::Pause).is_err());
        assert_eq!(Paused.on(Request::Resume), Ok(Effect::Move { to: Queued, desired: Some(Desired::Run) }));
        for s in [Queued, Running, ValidatingFiles] {
            assert!(s.on(Request::Resume).unwrap_err().contains("only a paused job"));
        }
    }

    #[test]
    fn a_training_loop_ending_maps_to_one_status() {
        assert_eq!(JobStatus::after(Ending::Finished), JobStatus::Succeeded);
        assert_eq!(JobStatus::after(Ending::EarlyStopped), JobStatus::Succeeded);
        assert_eq!(JobStatus::after(Ending::Cancelled), JobStatus::Cancelled);
        assert_eq!(JobStatus::after(Ending::Paused), JobStatus::Paused);
        assert_eq!(JobStatus::after(Ending::Interrupted), JobStatus::Queued);
        assert_eq!(Desired::Cancel.command(), Command::Cancel);
        assert_eq!(Desired::Pause.command(), Command::Pause);
        assert_eq!(Desired::Run.command(), Command::Run);
    }
}
