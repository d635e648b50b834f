//! `fpt loadtest`: N prediction requests across M fine-tuned models against a running server on
//! loopback, first one at a time, then from C concurrent clients, and (with `--batch-lines`) the
//! same kind of lines as one batch (`/v1/batches`); prints throughput and latency percentiles and
//! the ratios to one request at a time. Bounded in count and time.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
pub struct LoadtestArgs {
    /// The server, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Comma-separated fine-tuned model ids; requests go round-robin across them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// One sample (JSON), sent as `inputs: [sample]` to every model.
    #[arg(long)]
    pub sample: String,
    /// Prediction requests of each phase.
    #[arg(long, default_value_t = 400)]
    pub requests: usize,
    /// Clients sending at once in the concurrent phase.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Stop each phase after this long.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// The server's API key, when it has keys.
    #[arg(long, env = "FPT_API_KEY")]
    pub api_key: Option<String>,
    /// Also send this many lines (the same sample, round-robin across the models) as one batch,
    /// timed from its upload to its output; 0: no batch.
    #[arg(long, default_value_t = 0)]
    pub batch_lines: usize,
}

/// A batch's run: its lines per second from upload to output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchPhase {
    pub lines: usize,
    pub failed: u64,
    pub seconds: f64,
    pub throughput: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

pub fn run(a: LoadtestArgs) -> Result<()> {
    let host = a.url.trim_start_matches("http://").split([':', '/']).next().unwrap_or("");
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        bail!("--url must be a loopback address (127.0.0.1, localhost, [::1])");
    }
    let sample: Value = serde_json::from_str(&a.sample).context("--sample is not JSON")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (seq, conc, batch) = rt.block_on(async {
        let seq = phase(&a, &sample, 1).await?;
        let conc = phase(&a, &sample, a.concurrency).await?;
        let batch = if a.batch_lines > 0 { Some(batch_phase(&a, &sample).await?) } else { None };
        anyhow::Ok((seq, conc, batch))
    })?;
    println!("{:>12} {:>9} {:>7} {:>12} {:>9} {:>9} {:>9}", "clients", "requests", "errors", "requests/s", "p50 ms", "p95 ms", "p99 ms");
    for p in [&seq, &conc] {
        println!(
            "{:>12} {:>9} {:>7} {:>12.1} {:>9.2} {:>9.2} {:>9.2}",
            p.concurrency, p.requests, p.errors, p.throughput, p.p50_ms, p.p95_ms, p.p99_ms
        );
    }
    if let Some(b) = &batch {
        println!("{:>12} {:>9} {:>7} {:>12.1} {:>9.1} s in all", "batch", b.lines, b.failed, b.throughput, b.seconds);
    }
    let ratio = |t: f64| t / seq.throughput.max(1e-9);
    println!(
        "{}",
        json!({"sequential": seq, "concurrent": conc, "speedup": ratio(conc.throughput), "models": a.models.len(),
               "batch": batch, "batch_speedup": batch.as_ref().map(|b| ratio(b.throughput))})
    );
    Ok(())
}

/// Uploads `batch_lines` prediction lines as a batch input file, runs it, and times it to its end.
async fn batch_phase(a: &LoadtestArgs, sample: &Value) -> Result<BatchPhase> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
    let auth = |r: reqwest::RequestBuilder| match &a.api_key {
        Some(k) => r.bearer_auth(k),
        None => r,
    };
    let mut input = String::new();
    for i in 0..a.batch_lines {
        let body = json!({"model": a.models[i % a.models.len()], "inputs": [sample]});
        input.push_str(&json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/predictions", "body": body}).to_string());
        input.push('\n');
    }
    let start = Instant::now();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part("file", reqwest::multipart::Part::bytes(input.into_bytes()).file_name("loadtest.jsonl"));
    let file: Value = auth(client.post(format!("{}/v1/files", a.url)).multipart(form)).send().await?.error_for_status()?.json().await?;
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/predictions", "completion_window": "24h"});
    let batch: Value = auth(client.post(format!("{}/v1/batches", a.url)).json(&create)).send().await?.error_for_status()?.json().await?;
    let url = format!("{}/v1/batches/{}", a.url, batch["id"].as_str().context("no batch id")?);
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    loop {
        let b: Value = auth(client.get(&url)).send().await?.error_for_status()?.json().await?;
        match b["status"].as_str() {
            Some("completed") => {
                let seconds = start.elapsed().as_secs_f64();
                let failed = b["request_counts"]["failed"].as_u64().unwrap_or(0);
                return Ok(BatchPhase { lines: a.batch_lines, failed, seconds, throughput: a.batch_lines as f64 / seconds });
            }
            Some("failed" | "cancelled" | "expired") => bail!("the batch ended {}: {b}", b["status"]),
            _ if Instant::now() > deadline => bail!("the batch was not done within --max-seconds: {b}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn phase(a: &LoadtestArgs, sample: &Value, clients: usize) -> Result<Phase> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next) = (client.clone(), next.clone());
        let (url, models, key, n) = (format!("{}/v1/predictions", a.url), a.models.clone(), a.api_key.clone(), a.requests);
        let body = sample.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n || Instant::now() > deadline {
                    break;
                }
                let mut req = client.post(&url).json(&json!({"model": models[i % models.len()], "inputs": [body]}));
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let t = Instant::now();
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() as f64 - 1.0) * p).round() as usize] };
    Ok(Phase {
        concurrency: clients,
        requests: lat.len(),
        errors,
        seconds,
        throughput: lat.len() as f64 / seconds,
        p50_ms: pct(0.5),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
    })
}
