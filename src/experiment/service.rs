//! Runs an experiment's grid through a running fpt service instead of in this process: each run's
//! data files are uploaded once, the run is submitted as a fine-tuning job, waited on, and its
//! learning curve read back from the job's metrics events. Jobs are created with an idempotency key
//! named after the spec, the run and its request, so a restarted experiment picks up its jobs where
//! they are instead of submitting them again; uploads are keyed by their content's hash, so a
//! restart does not store the same data twice either.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::blocking::{multipart, Client, RequestBuilder, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::Finished;
use crate::flags::{LearningRate, ModelArgs};
use crate::job::JobStatus;
use crate::tasks::files::labels_beside;

pub struct Service {
    base: String,
    api_key: Option<String>,
    http: Client,
    /// Uploaded data files by local path: each is sent once per experiment.
    files: HashMap<PathBuf, Value>,
}

impl Service {
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self> {
        let http = Client::builder().connect_timeout(Duration::from_secs(10)).timeout(Duration::from_secs(600)).build()?;
        let s = Self { base: base.trim_end_matches('/').to_string(), api_key, http, files: HashMap::new() };
        s.send(s.http.get(format!("{}/ready", s.base))).with_context(|| format!("the fpt service at {} is not ready", s.base))?;
        Ok(s)
    }

    /// Submits one run as a job (or finds the job an earlier attempt submitted) and waits for it.
    pub fn run(&mut self, experiment: &str, name: &str, m: &ModelArgs, lr: LearningRate, seed: u64) -> Result<Finished> {
        if m.test.is_some() {
            bail!("run {name}: --test is not supported through the service (jobs take a training and a validation file)");
        }
        let training = m.train.as_deref().map(|p| self.upload(p)).transpose()?;
        let validation = m.valid.as_deref().map(|p| self.upload(p)).transpose()?;
        let spec = m.spec(lr.value(), seed)?;
        let mut hyperparameters = serde_json::to_value(&spec.hyperparameters)?;
        for field in m.auto_fields(lr) {
            hyperparameters[field.name()] = json!("auto");
        }
        let body = json!({
            "model": spec.model,
            "task": spec.task,
            "training_file": training.as_ref().map(|f| &f["id"]),
            "validation_file": validation.as_ref().map(|f| &f["id"]),
            "hyperparameters": hyperparameters,
            "method": spec.method(),
            "seed": spec.seed,
            "metadata": {"experiment": experiment, "run": name},
        });
        // The key names the run and what it asks for: a restart finds its job, a changed spec makes a new one.
        let digest = hex::encode(&Sha256::digest(body.to_string().as_bytes())[..8]);
        let key = format!("fpt-experiment/{experiment}/{name}/{digest}");
        let job = self.json(self.http.post(format!("{}/v1/fine_tuning/jobs", self.base)).header("Idempotency-Key", key).json(&body))?;
        let id = job["id"].as_str().context("the service answered a job without an id")?.to_string();
        eprintln!("  job {id}");
        let job = self.wait(&id)?;
        if job["error"]["code"] == "diverged" {
            return Ok(Finished::diverged(job["error"]["message"].as_str().unwrap_or("diverged")));
        }
        if status_of(&job)? != JobStatus::Succeeded {
            bail!("run {name}: job {id} ended {}: {}", job["status"], job["error"]["message"].as_str().unwrap_or("no error message"));
        }
        self.finished(&id, job)
    }

    fn upload(&mut self, path: &Path) -> Result<Value> {
        if let Some(f) = self.files.get(path) {
            return Ok(f.clone());
        }
        let (filename, bytes) = upload_bytes(path)?;
        let key = format!("fpt-experiment/file/{}", hex::encode(Sha256::digest(&bytes)));
        let form = multipart::Form::new().text("purpose", "fine-tune").part("file", multipart::Part::bytes(bytes).file_name(filename));
        let req = self.http.post(format!("{}/v1/files", self.base)).header("Idempotency-Key", key).multipart(form);
        let file = self.json(req).with_context(|| format!("uploading {}", path.display()))?;
        eprintln!("  uploaded {} as {} ({} samples)", path.display(), file["id"], file["samples"]);
        self.files.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }

    /// Polls the job until it has ended, printing its progress as it changes.
    fn wait(&self, id: &str) -> Result<Value> {
        let mut last = String::new();
        loop {
            let job = self.json(self.http.get(format!("{}/v1/fine_tuning/jobs/{id}", self.base)))?;
            let status = status_of(&job)?;
            let line = format!("{status}, step {}", job["trained_steps"].as_u64().unwrap_or(0));
            if line != last {
                eprintln!("  {line}");
                last = line;
            }
            if status.is_terminal() {
                return Ok(job);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// The run's summary (the job's result metrics) and its curve (the metrics events).
    fn finished(&self, id: &str, job: Value) -> Result<Finished> {
        let mut curve = Vec::new();
        let valid = format!("valid_{}", job["result"]["primary_metric"].as_str().unwrap_or("accuracy"));
        // A searched job's curve is its winning trial's, continued by the run (as a run's here);
        // an ensemble's is its first member's.
        let search = &job["result"]["learning_rate_search"];
        let winner = search["trials"].as_array().and_then(|t| t.iter().position(|t| t["learning_rate"] == search["chosen"]));
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/fine_tuning/jobs/{id}/events?limit=1000", self.base);
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page = self.json(self.http.get(url))?;
            for e in page["data"].as_array().into_iter().flatten() {
                let d = &e["data"];
                let trial = d["trial"].as_u64().map(|t| t as usize);
                if e["type"] == "metrics" && d["member"].is_null() && (trial.is_none() || trial == winner) {
                    if let (Some(step), Some(loss)) = (d["step"].as_u64(), d["train_loss"].as_f64()) {
                        curve.push((step, loss, d[&valid].as_f64()));
                    }
                }
            }
            if page["has_more"] != true {
                break;
            }
            after = page["last_id"].as_str().map(str::to_string);
        }
        // The list runs newest first, as OpenAI's does.
        curve.reverse();
        let mut summary = job["result"].clone();
        summary["job"] = job["id"].clone();
        summary["fine_tuned_model"] = job["fine_tuned_model"].clone();
        Ok(Finished { summary, curve })
    }

    fn json(&self, req: RequestBuilder) -> Result<Value> {
        Ok(self.send(req)?.json()?)
    }

    /// Sends with the API key, turning the service's error body into the error's message.
    fn send(&self, req: RequestBuilder) -> Result<Response> {
        let req = match &self.api_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        let resp = req.send().with_context(|| format!("no answer from the fpt service at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        let e = &body["error"];
        match e["param"].as_str() {
            Some(p) => bail!("the service answered {status}: {} (field `{p}`)", e["message"].as_str().unwrap_or("")),
            None => bail!("the service answered {status}: {}", e["message"].as_str().unwrap_or("no error message")),
        }
    }
}

/// The status of a job object the service answered.
fn status_of(job: &Value) -> Result<JobStatus> {
    Ok(JobStatus::parse(job["status"].as_str().unwrap_or_default())?)
}

/// A data file as the service takes it: an MNIST IDX images file travels in a tar with the labels
/// file beside it (the service refuses half a pair); everything else as it is.
fn upload_bytes(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path.file_name().and_then(|n| n.to_str()).with_context(|| format!("{} has no file name", path.display()))?.to_string();
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !matches!(crate::data::detect_format(&name, &bytes), Ok(crate::data::Format::IdxImages)) {
        return Ok((name, bytes));
    }
    let labels = labels_beside(path).with_context(|| format!("{}: no IDX labels file beside it", path.display()))?;
    let label_bytes = std::fs::read(&labels).with_context(|| format!("reading {}", labels.display()))?;
    let mut tar = tar::Builder::new(Vec::new());
    for (p, b) in [(path, &bytes), (labels.as_path(), &label_bytes)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(b.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, p.file_name().unwrap(), b.as_slice())?;
    }
    Ok((format!("{name}.tar"), tar.into_inner()?))
}
