//! The event writer: training threads hand events over a channel and never wait on the database;
//! one task writes them in batches. A flush makes everything sent so far durable (before a checkpoint
//! is recorded, and before a job is marked finished).
use tokio::sync::{mpsc, oneshot};

use crate::store::{NewEvent, Store};

pub enum EventMsg {
    Event(NewEvent),
    Steps { job_id: String, worker: String, steps: i64 },
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct EventSink(mpsc::UnboundedSender<EventMsg>);

impl EventSink {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<EventMsg>();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(256);
            while rx.recv_many(&mut buf, 256).await > 0 {
                let mut events = Vec::new();
                let mut flushes = Vec::new();
                let mut steps = std::collections::HashMap::new();
                for m in buf.drain(..) {
                    match m {
                        EventMsg::Event(e) => events.push(e),
                        EventMsg::Steps { job_id, worker, steps: s } => {
                            steps.insert(job_id, (worker, s));
                        }
                        EventMsg::Flush(done) => flushes.push(done),
                    }
                }
                if !events.is_empty() {
                    if let Err(e) = store.insert_events(&events).await {
                        tracing::error!(error = format!("{e:#}"), "writing events");
                    }
                }
                for (job, (worker, s)) in steps {
                    if let Err(e) = store.set_progress(&job, &worker, s).await {
                        tracing::error!(error = format!("{e:#}"), "writing progress");
                    }
                }
                for f in flushes {
                    let _ = f.send(());
                }
            }
        });
        Self(tx)
    }

    pub fn send(&self, e: NewEvent) {
        let _ = self.0.send(EventMsg::Event(e));
    }

    /// The steps `worker` has trained of a job (recorded only while it holds the job).
    pub fn steps(&self, job_id: &str, worker: &str, steps: i64) {
        let _ = self.0.send(EventMsg::Steps { job_id: job_id.to_string(), worker: worker.to_string(), steps });
    }

    /// Waits (from a blocking thread) until everything sent before is written.
    pub fn flush_blocking(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(EventMsg::Flush(tx)).is_ok() {
            let _ = rx.blocking_recv();
        }
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(EventMsg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
