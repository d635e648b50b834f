//! Which rows run next. Requests take turns, a batch's worth of rows at a time: a request of
//! thousands of rows runs as many batches, and one that arrives meanwhile joins the next batch
//! instead of waiting for all of them.
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::batch::{Part, Worker};
use super::{PredictError, PredictJob, PredictOutput, ServeStats};
use crate::tasks::Prediction;

/// A request with rows still to run.
struct Pending {
    job: PredictJob,
    done: Vec<Prediction>,
    first_run: Option<Instant>,
    inference: Duration,
}

impl Pending {
    fn left(&self) -> usize {
        self.job.samples.len() - self.done.len()
    }

    fn part(&self, rows: usize) -> Part<'_> {
        let offset = self.done.len();
        Part {
            request_id: &self.job.request_id,
            model_id: &self.job.model_id,
            adapter: &self.job.adapter,
            samples: &self.job.samples[offset..offset + rows],
            offset,
        }
    }

    fn answer(self, result: Result<(), PredictError>, stats: &ServeStats) {
        let queue_time = self.first_run.unwrap_or_else(Instant::now).saturating_duration_since(self.job.enqueued);
        stats.queue_wait_us.fetch_add(queue_time.as_micros() as u64, Ordering::Relaxed);
        stats.inference_us.fetch_add(self.inference.as_micros() as u64, Ordering::Relaxed);
        let out = result.map(|()| PredictOutput { predictions: self.done, queue_time, inference_time: self.inference });
        let _ = self.job.reply.send(out);
    }
}

/// The requests waiting for their next turn, in turn order.
#[derive(Default)]
pub(crate) struct Turns {
    queue: VecDeque<Pending>,
}

impl Turns {
    pub fn push(&mut self, job: PredictJob) {
        self.queue.push_back(Pending { job, done: Vec::new(), first_run: None, inference: Duration::ZERO });
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Rows still to run, over every request.
    pub fn rows(&self) -> usize {
        self.queue.iter().map(Pending::left).sum()
    }

    /// Runs one batch of at most `max_rows` rows, taken from the requests in turn order; a request
    /// with rows left goes to the back of the line.
    pub fn run_next(&mut self, w: &mut Worker, max_rows: usize, stats: &ServeStats) {
        self.drop_abandoned(stats);
        let mut taken = Vec::new();
        let mut rows = 0;
        while rows < max_rows {
            let Some(p) = self.queue.pop_front() else { break };
            let n = p.left().min(max_rows - rows);
            rows += n;
            taken.push((p, n));
        }
        if taken.is_empty() {
            return;
        }
        let started = Instant::now();
        let results = {
            let parts: Vec<Part> = taken.iter().map(|(p, n)| p.part(*n)).collect();
            // The adapters of requests with rows still to come stay loaded for their next turn.
            let waiting: HashSet<&str> = self
                .queue
                .iter()
                .map(|p| p.job.model_id.as_str())
                .chain(taken.iter().filter(|(p, n)| p.left() > *n).map(|(p, _)| p.job.model_id.as_str()))
                .collect();
            w.predict(&parts, &waiting)
        };
        let spent = started.elapsed();
        for ((mut p, _), result) in taken.into_iter().zip(results) {
            p.first_run.get_or_insert(started);
            p.inference += spent;
            match result {
                Ok(predictions) => {
                    p.done.extend(predictions);
                    if p.left() == 0 {
                        p.answer(Ok(()), stats);
                    } else {
                        self.queue.push_back(p);
                    }
                }
                Err(e) => p.answer(Err(e), stats),
            }
        }
    }

    /// Requests past their deadline are answered without running the rest; those whose client has
    /// gone (its handler timed out or the connection closed) are dropped.
    fn drop_abandoned(&mut self, stats: &ServeStats) {
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for p in self.queue.drain(..) {
            if p.job.reply.is_closed() {
                continue;
            }
            if p.job.deadline <= now {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                let _ = p.job.reply.send(Err(PredictError::Timeout));
                continue;
            }
            kept.push_back(p);
        }
        self.queue = kept;
    }
}
