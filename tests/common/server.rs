//! The real `fpt serve` binary on a loopback port, with its own data folder, and a client with one
//! helper per endpoint.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{multipart, Client, Response};
use serde_json::{json, Value};

pub struct Server {
    pub url: String,
    pub child: Child,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    pub client: Client,
    pub key: Option<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on a fresh data folder with the tiny test models.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut s = Self::start_on(&data, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` (a restart keeps the folder). One libtorch thread: tests run
    /// side by side, and OpenMP teams spinning on shared cores slow every one of them down.
    pub fn start_on(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(data_dir, extra, &[("HF_HUB_OFFLINE", "1")])
    }

    /// Starts a server with these environment variables (`start_on` sets the hub offline).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let models = super::tiny_models();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--models-dir".into(),
            models.display().to_string(),
            "--precision".into(),
            "fp32".into(),
            "--threads".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(super::fpt_bin())
            .args(&args)
            .env_remove("HF_HUB_OFFLINE")
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting fpt serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("fpt listening on ").unwrap_or_else(|| panic!("unexpected first line: {line:?}")).to_string();
        let key = extra.windows(2).find(|w| w[0] == "--api-key").map(|w| w[1].to_string());
        let client = Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        Server { url, child, data_dir: data_dir.to_path_buf(), args, client, key, _tmp: None }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let r = self.client.request(method, format!("{}{}", self.url, path));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.req(reqwest::Method::GET, path).send().unwrap()
    }

    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.req(reqwest::Method::POST, path).json(body).send().unwrap()
    }

    pub fn post_ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body);
        let status = r.status();
        let v: Value = r.json().unwrap();
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    pub fn delete(&self, path: &str) -> Response {
        self.req(reqwest::Method::DELETE, path).send().unwrap()
    }

    pub fn upload(&self, name: &str, bytes: Vec<u8>) -> Response {
        self.upload_for("fine-tune", name, bytes)
    }

    /// An upload with another purpose (`batch`).
    pub fn upload_for(&self, purpose: &str, name: &str, bytes: Vec<u8>) -> Response {
        let form = multipart::Form::new()
            .text("purpose", purpose.to_string())
            .part("file", multipart::Part::bytes(bytes).file_name(name.to_string()));
        self.req(reqwest::Method::POST, "/v1/files").multipart(form).send().unwrap()
    }

    pub fn upload_ok(&self, name: &str, bytes: Vec<u8>) -> String {
        self.upload_ok_for("fine-tune", name, bytes)
    }

    pub fn upload_ok_for(&self, purpose: &str, name: &str, bytes: Vec<u8>) -> String {
        let r = self.upload_for(purpose, name, bytes);
        let status = r.status();
        let v: Value = r.json().unwrap();
        assert!(status.is_success(), "upload: {status} {v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub fn create_job(&self, body: Value) -> String {
        self.post_ok("/v1/fine_tuning/jobs", &body)["id"].as_str().unwrap().to_string()
    }

    pub fn job(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/fine_tuning/jobs/{id}"))
    }

    /// Polls until the job's status satisfies `done`, failing after `limit`.
    pub fn wait_for(&self, id: &str, limit: Duration, done: impl Fn(&str) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let j = self.job(id);
            if done(j["status"].as_str().unwrap()) {
                return j;
            }
            assert!(start.elapsed() < limit, "job {id} still {} after {limit:?}: {j}", j["status"]);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_finished(&self, id: &str) -> Value {
        self.wait_for(id, Duration::from_secs(600), |s| matches!(s, "succeeded" | "failed" | "cancelled"))
    }

    /// All events of a job, oldest first.
    pub fn events(&self, id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let q = if after.is_empty() { "limit=1000".to_string() } else { format!("limit=1000&after={after}") };
            let page = self.get_json(&format!("/v1/fine_tuning/jobs/{id}/events?{q}"));
            out.extend(page["data"].as_array().unwrap().iter().cloned());
            if !page["has_more"].as_bool().unwrap() {
                // The list runs newest first, as OpenAI's does.
                out.reverse();
                return out;
            }
            after = page["last_id"].as_str().unwrap().to_string();
        }
    }

    /// The steps of the job's metrics events, in order.
    pub fn metric_steps(&self, id: &str) -> Vec<i64> {
        self.events(id).iter().filter(|e| e["type"] == "metrics").map(|e| e["data"]["step"].as_i64().unwrap()).collect()
    }

    /// Trains a few steps of `task` (on `file`, if given) and returns the fine-tuned model id.
    pub fn train_quick(&self, task: Value, file: Option<&str>, seed: u64) -> String {
        let mut body =
            json!({"model": "tiny-gpt2", "task": task, "seed": seed, "hyperparameters": {"n_steps": 4, "eval_every": 4, "batch_size": 4}});
        if let Some(f) = file {
            body["training_file"] = json!(f);
        }
        let id = self.create_job(body);
        let j = self.wait_finished(&id);
        assert_eq!(j["status"], "succeeded", "{j}");
        j["fine_tuned_model"].as_str().unwrap().to_string()
    }

    /// A value of `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text().unwrap();
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} ")).map(|v| v.parse().unwrap())).unwrap()
    }

    pub fn predict(&self, model: &str, inputs: Value) -> Response {
        self.post("/v1/predictions", &json!({"model": model, "inputs": inputs}))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the graceful path.
    pub fn terminate(&mut self) {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }
}

/// A `fpt worker` process with one training thread on `data_dir` and the tiny test models, once it
/// says it is ready; `extra` adds flags (a database, a lease).
pub fn start_worker(data_dir: &Path, extra: &[&str]) -> Child {
    let mut child = Command::new(super::fpt_bin())
        .args(["worker", "--workers", "1", "--precision", "fp32", "--threads", "1", "--device", "cpu"])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--models-dir")
        .arg(super::tiny_models())
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting fpt worker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("fpt worker ready"), "unexpected first line: {line:?}");
    child
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// JSONL records of a small continuous classification task: the class is the sign of the first value.
pub fn sign_dataset(n: usize, seed: u64) -> Vec<u8> {
    let mut out = String::new();
    let mut uniform = super::uniform(seed);
    for _ in 0..n {
        let vals: Vec<f64> = (0..8).map(|_| uniform() * 2.0 - 1.0).collect();
        let label = (vals[0] > 0.0) as i64;
        out.push_str(&json!({"input": vals, "label": label}).to_string());
        out.push('\n');
    }
    out.into_bytes()
}

pub const SIGN_TASK: &str = r#"{"type":"sequence_classification","input_dim":4,"num_classes":2}"#;
