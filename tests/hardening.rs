//! A service that one request cannot take down: each test here is a reproduction from the
//! hardening issue, run against the real `fpt serve` on loopback, with what it must answer now.
mod common;

use std::io::Write;
use std::time::Duration;

use common::server::{sign_dataset, Server, SIGN_TASK};
use reqwest::blocking::multipart;
use serde_json::{json, Value};

fn error_of(r: reqwest::blocking::Response, status: u16) -> Value {
    let code = r.status().as_u16();
    let v: Value = r.json().unwrap();
    assert_eq!(code, status, "{v}");
    v["error"].clone()
}

/// `n` zero bytes written through `w` in chunks, never held whole.
fn write_zeros(w: &mut impl Write, n: u64) {
    let chunk = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..k]).unwrap();
        left -= k as u64;
    }
}

/// A .tar.gz of about 1 MB holding one 1 GiB member of zeros.
fn tar_gz_bomb() -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let size = 1u64 << 30;
    let mut header = tar::Header::new_gnu();
    header.set_path("data_batch_1.bin").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    gz.write_all(header.as_bytes()).unwrap();
    write_zeros(&mut gz, size);
    gz.finish().unwrap()
}

/// An .npz of about 1 MB whose `inputs.npy` inflates to 1 GiB.
fn npz_bomb() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(true);
    zip.start_file("inputs.npy", opts).unwrap();
    let header = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (268435456,), }";
    let mut h = header.to_vec();
    h.resize(10 + 0x76 - 1, b' ');
    h.push(b'\n');
    zip.write_all(&h).unwrap();
    write_zeros(&mut zip, 1 << 30);
    zip.start_file("labels.npy", opts).unwrap();
    zip.finish().unwrap().into_inner()
}

/// A 1 MB upload grew the server by gigabytes; the multipart `purpose` took 400 MiB and came back in
/// the error. Now the decompressed bytes of a file are bounded (`--max-inflated-mb`), so is every
/// text field, and the server's memory stays small.
#[test]
fn decompression_bombs_and_huge_fields_are_refused_in_bounded_memory() {
    let s = Server::start(&["--max-inflated-mb", "64"]);
    for (name, bytes) in [("cifar.tar.gz", tar_gz_bomb()), ("arrays.npz", npz_bomb())] {
        assert!(bytes.len() < 4 << 20, "{name}: {} bytes", bytes.len());
        let e = error_of(s.upload(name, bytes), 422);
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("decompresses to more than 67108864 bytes"), "{name}: {e}");
    }
    // Small enough that the client has sent it all before the answer comes.
    let purpose = "x".repeat(64 << 10);
    let form =
        multipart::Form::new().text("purpose", purpose).part("file", multipart::Part::bytes(sign_dataset(4, 1)).file_name("a.jsonl"));
    let r = s.client.post(format!("{}/v1/files", s.url)).multipart(form).send().unwrap();
    let e = error_of(r, 413);
    assert_eq!(e["param"], "purpose");
    assert!(e["message"].as_str().unwrap().len() < 200, "the field is not echoed: {e}");
    assert_eq!(s.get("/health").status(), 200);
    let rss = common::peak_rss_mib(s.child.id());
    assert!(rss < 600.0, "peak RSS {rss:.0} MiB: a bomb was inflated");
}

/// `--cors-origin '*'` panicked at start; a malformed origin was dropped without a word.
#[test]
fn cors_origins_are_checked_at_start_and_star_allows_any() {
    let s = Server::start(&["--cors-origin", "*"]);
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/models", s.url))
        .header("origin", "https://example.org")
        .header("access-control-request-method", "GET")
        .send()
        .unwrap();
    assert_eq!(r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some("*"));
    let out = std::process::Command::new(common::fpt_bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--cors-origin", "example.org/path", "--data-dir"])
        .arg(common::tempdir().path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--cors-origin `example.org/path` is not an origin"), "{err}");
}

fn trained_model(s: &Server) -> (String, String) {
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 1));
    (s.train_quick(serde_json::from_str(SIGN_TASK).unwrap(), Some(&train), 1), train)
}

/// Values beyond f32 answered 200 with null probabilities; nothing bounded the rows of a request.
#[test]
fn prediction_inputs_are_finite_float32_and_their_rows_bounded() {
    let s = Server::start(&["--max-prediction-rows", "4"]);
    let (model, _) = trained_model(&s);
    let e = error_of(s.predict(&model, json!([[1.0e39, 0.5, 0.5, 0.5]])), 422);
    assert_eq!(e["param"], "inputs[0]");
    assert!(e["message"].as_str().unwrap().contains("float32"), "{e}");
    let e = error_of(s.predict(&model, json!(vec![[0.5, 0.5, 0.5, 0.5]; 5])), 413);
    assert_eq!(e["param"], "inputs");
    assert!(e["message"].as_str().unwrap().contains("limit 4 samples"), "{e}");
    let ok: Value = s.predict(&model, json!(vec![[0.5, -0.5, 0.5, -0.5]; 4])).json().unwrap();
    assert_eq!(ok["data"].as_array().unwrap().len(), 4);
}

/// A 33k-row request held a concurrent one-row request for 5 s: a request ran as one pass. Now
/// requests take turns a batch at a time: the one-row request is answered while the large one is
/// still running, the large one's answers are those of its rows alone, and a bad row deep inside it
/// is named by its index in the request.
#[test]
fn a_large_prediction_request_does_not_hold_up_a_small_one() {
    let s = Server::start(&["--max-batch-size", "1", "--max-batch-wait-ms", "0"]);
    let (model, _) = trained_model(&s);
    let row = |i: usize| {
        let v = (i % 7) as f64 / 7.0 - 0.5;
        json!([v, -v, 0.25, v * 0.5])
    };
    let big: Vec<Value> = (0..4096).map(row).collect();
    let lone: Vec<Value> =
        [0, 1, 2, 3, 4, 5, 6].iter().map(|&i| s.predict(&model, json!([row(i)])).json::<Value>().unwrap()["data"][0].clone()).collect();
    let big_done = std::sync::atomic::AtomicBool::new(false);
    let batches_before = s.metric("fpt_predictions_batches_total");
    let (big_answer, small_while_big_ran) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let r: Value = s.predict(&model, json!(big)).json().unwrap();
            big_done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        });
        // Once the large request is running, a one-row request comes in.
        let t0 = std::time::Instant::now();
        while s.metric("fpt_predictions_batches_total") < batches_before + 2.0 && !big_done.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(t0.elapsed() < std::time::Duration::from_secs(60), "the large request never started");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let small: Value = s.predict(&model, json!([row(3)])).json().unwrap();
        let still_running = !big_done.load(std::sync::atomic::Ordering::SeqCst);
        (h.join().unwrap(), (small, still_running))
    });
    let (small, still_running) = small_while_big_ran;
    assert!(still_running, "the one-row request waited for the whole large one");
    assert_eq!(small["data"][0], lone[3]);
    let data = big_answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 4096);
    for (i, p) in data.iter().enumerate() {
        let mut want = lone[i % 7].clone();
        want["index"] = json!(i);
        assert_eq!(*p, want, "row {i}");
    }
    let mut bad = big.clone();
    bad[3000] = json!([0.5, 0.5]);
    let e = error_of(s.predict(&model, json!(bad)), 422);
    assert_eq!(e["param"], "inputs[3000]", "{e}");
}

/// `/v1/models` ignored `limit`; a file could be deleted under a job that still needed it;
/// `DELETE /v1/models` left the adapter on disk.
#[test]
fn model_lists_page_files_in_use_stay_and_deleted_models_leave_nothing() {
    let s = Server::start(&[]);
    let (model, train) = trained_model(&s);
    let first = s.get_json("/v1/models?limit=1");
    assert_eq!((first["data"].as_array().unwrap().len(), first["has_more"].as_bool()), (1, Some(true)));
    let mut seen = vec![first["data"][0]["id"].as_str().unwrap().to_string()];
    let mut after = first["last_id"].as_str().unwrap().to_string();
    loop {
        let page = s.get_json(&format!("/v1/models?limit=1&after={after}"));
        seen.extend(page["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()));
        if page["has_more"] != true {
            break;
        }
        after = page["last_id"].as_str().unwrap().to_string();
    }
    let all: Vec<String> =
        s.get_json("/v1/models?limit=100")["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen, all, "paging one at a time sees every model once, in order");
    assert!(all.contains(&model));

    // A queued job holds its training file.
    let body = json!({"model": "tiny-gpt2", "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap(), "training_file": train,
        "hyperparameters": {"n_steps": 100000, "checkpoint_every": 0}});
    let id = s.create_job(body);
    let e = error_of(s.delete(&format!("/v1/files/{train}")), 409);
    assert!(e["message"].as_str().unwrap().contains(&id), "{e}");
    s.post_ok(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}));
    s.wait_for(&id, Duration::from_secs(30), |st| st == "cancelled");
    assert_eq!(s.delete(&format!("/v1/files/{train}")).status(), 200);

    let adapter = walk(&s.data_dir).into_iter().find(|p| p.ends_with("final.adapter.safetensors")).expect("the adapter on disk");
    assert_eq!(s.delete(&format!("/v1/models/{model}")).status(), 200);
    assert!(!adapter.exists(), "{} is still there", adapter.display());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Six concurrent requests for six models with room for two in the cache made a batch evict an
/// adapter it still needed ("no entry found for key"), and that panic killed the inference thread:
/// every later prediction answered 503 while /ready said ready. Now a batch keeps what it needs,
/// a failing batch answers its requests with a 500 naming the error, and the rest go on.
#[test]
fn the_batcher_survives_a_failing_batch_and_never_evicts_what_a_batch_needs() {
    let s = Server::start(&["--adapter-cache", "2", "--max-batch-wait-ms", "2000", "--max-batch-size", "12"]);
    let models: Vec<String> = (0..6).map(|seed| s.train_quick(json!({"type": "bit_xor", "n_bits": 3}), None, seed)).collect();
    let x = json!([[1, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]]);
    let alone: Vec<Value> = models.iter().map(|m| s.predict(m, x.clone()).json::<Value>().unwrap()["data"].clone()).collect();
    let together: Vec<(u16, Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = models
            .iter()
            .map(|m| {
                sc.spawn(|| {
                    let r = s.predict(m, x.clone());
                    (r.status().as_u16(), r.json::<Value>().unwrap())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((status, body), want) in together.iter().zip(&alone) {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["data"], *want);
    }

    // A broken adapter (its input bias one value too long) makes libtorch throw inside the batch.
    let job = s.get_json(&format!("/v1/models/{}", models[0]))["job_id"].as_str().unwrap().to_string();
    let path = s.data_dir.join("jobs").join(&job).join("final.adapter.safetensors");
    let (mut tensors, meta) = fpt::model::weights::read_safetensors(&path, tch::Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name == "input.bias" {
            *t = tch::Tensor::zeros([t.size()[0] + 1], (tch::Kind::Float, tch::Device::Cpu));
        }
    }
    fpt::model::weights::write_safetensors(&path, &tensors, meta).unwrap();
    s.post_ok(&format!("/v1/models/{}/unload", models[0]), &json!({}));
    let e = error_of(s.predict(&models[0], x.clone()), 500);
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("the prediction failed on the server") && msg.contains("expanded size"), "{e}");
    assert!(!msg.contains("Exception raised from") && !msg.contains(".so"), "libtorch's frames and paths stay in the log: {e}");
    assert!(s.metric("fpt_prediction_failures_total") >= 1.0);
    // In a batch with a request for another backbone, only the broken group fails.
    let bert = {
        let id = s.create_job(json!({"model": "tiny-bert", "task": {"type": "bit_xor", "n_bits": 3}, "hyperparameters": {"n_steps": 4, "eval_every": 4, "batch_size": 4}}));
        let j = s.wait_finished(&id);
        j["fine_tuned_model"].as_str().unwrap().to_string()
    };
    let bert_alone = s.predict(&bert, x.clone()).json::<Value>().unwrap()["data"].clone();
    let (broken, fine) = std::thread::scope(|sc| {
        let a = sc.spawn(|| s.predict(&models[0], x.clone()).status().as_u16());
        let b = sc.spawn(|| {
            let r = s.predict(&bert, x.clone());
            (r.status().as_u16(), r.json::<Value>().unwrap()["data"].clone())
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(broken, 500);
    assert_eq!(fine, (200, bert_alone), "the other backbone's group went on");
    // Everything else is served as before, from a clean cache, and the server says it is ready.
    for (m, want) in models.iter().zip(&alone).skip(1) {
        let r = s.predict(m, x.clone());
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().unwrap()["data"], *want);
    }
    assert_eq!(s.get("/ready").status(), 200);
}

/// `model` reached any folder of the server (`../../…`, absolute paths) and told existing folders
/// from missing ones; a GPT-2-family name started a hub download inside the request.
#[test]
fn jobs_name_base_models_of_the_models_folder_only() {
    let s = Server::start(&[]);
    let existing = common::tiny_models().join("tiny-gpt2").display().to_string();
    let mut messages = Vec::new();
    for model in [existing.as_str(), "../../tmp", "/nonexistent/folder", "no-such-model"] {
        let e = error_of(s.post("/v1/fine_tuning/jobs", &json!({"model": model, "task": {"type": "bit_xor"}})), 422);
        assert_eq!(e["param"], "model", "{model}: {e}");
        let msg = e["message"].as_str().unwrap().to_string();
        assert!(msg.contains("is not one of this server's base models"), "{model}: {msg}");
        messages.push(msg.replace(model, "<model>"));
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "an existing folder reads like a missing one: {messages:?}");
    let t = std::time::Instant::now();
    let e = error_of(s.post("/v1/fine_tuning/jobs", &json!({"model": "gpt2-xl", "task": {"type": "bit_xor"}})), 422);
    assert!(e["message"].as_str().unwrap().contains("hub downloads are off"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "no download was tried");
    // The models folder's own names still work.
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"n_steps": 2}}));
    assert_eq!(s.wait_finished(&id)["status"], "succeeded");
}

/// A Hugging Face hub on loopback, as much of its protocol as a download uses: `HEAD` names a
/// file's sha256 in `x-linked-etag` (as the hub does for LFS files), `GET` sends it. `lie` makes the
/// named sha256 wrong; `declare` overrides the Content-Length of the weights' answer.
fn loopback_hub(files: std::path::PathBuf, lie: bool, declare: Option<u64>) -> String {
    use sha2::Digest;
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // The rest of the head: read to the blank line.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let name = path.rsplit('/').next().unwrap_or("");
            let Ok(mut body) = std::fs::read(files.join(name)) else {
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                continue;
            };
            let mut sha = hex::encode(sha2::Sha256::digest(&body));
            if lie {
                sha = sha.chars().rev().collect();
            }
            let len = match (name, declare) {
                ("model.safetensors", Some(n)) => n,
                _ => body.len() as u64,
            };
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nx-linked-etag: \"{sha}\"\r\nconnection: close\r\n\r\n");
            let _ = conn.write_all(head.as_bytes());
            if method == "GET" {
                body.truncate(len as usize);
                let _ = conn.write_all(&body);
            }
            let _ = reader.read(&mut [0u8; 1]);
        }
    });
    url
}

/// A GPT-2-family name started a hub download inside the request with no size cap and no checksum.
/// Downloads are now off unless the operator allows them, and then checked against the hub's
/// sha256 and capped in size; a refused download leaves no file behind.
#[test]
fn hub_downloads_are_off_by_default_checked_and_capped() {
    let files = common::tiny_models().join("tiny-gpt2");
    let tmp = common::tempdir();
    let body = json!({"model": "distilgpt2", "task": {"type": "bit_xor", "n_bits": 3}});
    let start = |name: &str, url: &str, allow: bool| {
        let cache = tmp.path().join(name);
        let cache_env = cache.display().to_string();
        let mut flags = vec!["--no-workers"];
        if allow {
            flags.push("--allow-downloads");
        }
        let s =
            Server::start_with_env(&tmp.path().join(format!("data-{name}")), &flags, &[("HF_ENDPOINT", url), ("HF_HUB_CACHE", &cache_env)]);
        (s, cache)
    };
    let good = loopback_hub(files.clone(), false, None);
    let (off, _) = start("off", &good, false);
    let e = error_of(off.post("/v1/fine_tuning/jobs", &body), 422);
    assert_eq!(e["param"], "model", "{e}");
    let (lying, cache) = start("lying", &loopback_hub(files.clone(), true, None), true);
    let e = error_of(lying.post("/v1/fine_tuning/jobs", &body), 422);
    assert!(e["message"].as_str().unwrap().contains("the hub says"), "a wrong sha256 is refused: {e}");
    assert!(
        walk(&cache).iter().all(|p| !p.ends_with("model.safetensors") && !p.to_string_lossy().ends_with(".part")),
        "{:?}",
        walk(&cache)
    );
    let (huge, _) = start("huge", &loopback_hub(files.clone(), false, Some(17 << 30)), true);
    let e = error_of(huge.post("/v1/fine_tuning/jobs", &body), 422);
    assert!(e["message"].as_str().unwrap().contains("more than the"), "an oversized download is refused: {e}");
    let (fine, cache) = start("fine", &good, true);
    let job = fine.post_ok("/v1/fine_tuning/jobs", &body);
    assert_eq!(job["model"], "distilgpt2");
    assert!(walk(&cache).iter().any(|p| p.ends_with("model.safetensors")), "downloaded into the hub cache");
}

fn long_job(s: &Server, train: &str, steps: u64) -> String {
    s.create_job(json!({"model": "tiny-gpt2", "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap(), "training_file": train,
        "hyperparameters": {"n_steps": steps, "eval_every": 50, "checkpoint_every": 100, "batch_size": 4, "log_every": 10}}))
}

fn wait_running(s: &Server, id: &str) {
    s.wait_for(id, Duration::from_secs(60), |st| st == "running");
}

/// A job whose final adapter could not be stored stayed `running` forever, reclaimed every lease
/// period; a checkpoint that could not be stored was only logged. Both now fail the job with the
/// cause.
#[test]
fn a_job_whose_outcome_or_checkpoint_cannot_be_stored_fails_with_the_cause() {
    let s = Server::start(&[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 2));
    // The final adapter's place is taken by a folder; its checkpoints' place by a file.
    let outcome = long_job(&s, &train, 300);
    std::fs::create_dir_all(s.data_dir.join("jobs").join(&outcome).join("final.adapter.safetensors").join("in-the-way")).unwrap();
    let j = s.wait_for(&outcome, Duration::from_secs(120), |st| st != "queued" && st != "running");
    assert_eq!((j["status"].as_str(), j["error"]["code"].as_str()), (Some("failed"), Some("storage_failed")), "{j}");
    assert!(j["error"]["message"].as_str().unwrap().contains("recording the job's outcome"), "{j}");
    let ckpt = long_job(&s, &train, 300);
    std::fs::create_dir_all(s.data_dir.join("jobs").join(&ckpt).join("checkpoints/step-00000100.adapter.safetensors/in-the-way")).unwrap();
    let j = s.wait_for(&ckpt, Duration::from_secs(120), |st| st != "queued" && st != "running");
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["error"]["message"].as_str().unwrap().contains("storing the checkpoint of step 100"), "{j}");
    assert!(j["trained_steps"].as_i64().unwrap() < 300, "it stopped at the failed checkpoint: {j}");
    let tmp = s.data_dir.canonicalize().unwrap().display().to_string();
    assert!(!j["error"]["message"].as_str().unwrap().contains(&tmp), "the server's folders stay out of the error: {j}");
}

/// A job that takes its worker down every time it runs ends `failed` with `max_attempts`.
#[test]
fn a_job_whose_worker_keeps_dying_fails_with_max_attempts() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start_on(&data, &["--max-attempts", "1"]);
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 3));
    let id = long_job(&s, &train, 100_000);
    wait_running(&s, &id);
    s.kill();
    // The restarted server requeues what its dead predecessor ran; the second claim is one too many.
    let s = Server::start_on(&data, &["--max-attempts", "1"]);
    let j = s.wait_for(&id, Duration::from_secs(60), |st| st == "failed");
    assert_eq!(j["error"]["code"], "max_attempts", "{j}");
}

/// A cancel racing a pause was lost in 2 of 12 rounds (the job ended paused); cancelling a job
/// that had not started wrote no event.
#[test]
fn cancel_wins_over_pause_and_every_cancel_leaves_its_event() {
    let s = Server::start(&[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 4));
    // A pause the worker carries out at once is answered as done, not as a conflict.
    let id = long_job(&s, &train, 100_000);
    wait_running(&s, &id);
    assert_eq!(s.post(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({})).status(), 200);
    s.wait_for(&id, Duration::from_secs(30), |st| st == "paused");
    assert_eq!(s.post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({})).status(), 200);
    assert_eq!(s.job(&id)["status"], "cancelled");
    for round in 0..6 {
        let id = long_job(&s, &train, 100_000);
        wait_running(&s, &id);
        std::thread::scope(|sc| {
            let pause = sc.spawn(|| s.post(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({})).status().as_u16());
            if round % 2 == 1 {
                std::thread::sleep(Duration::from_millis(5 * round));
            }
            let cancel = sc.spawn(|| s.post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({})).status().as_u16());
            let (p, c) = (pause.join().unwrap(), cancel.join().unwrap());
            assert!(p == 200 || p == 409, "pause: {p}");
            assert_eq!(c, 200, "cancel");
        });
        let j = s.wait_for(&id, Duration::from_secs(60), |st| st == "cancelled" || st == "paused" || st == "succeeded");
        assert_eq!(j["status"], "cancelled", "round {round}: {j}");
    }
    let s = Server::start(&["--no-workers"]);
    let train = s.upload_ok("train.jsonl", sign_dataset(8, 5));
    let id = long_job(&s, &train, 10);
    s.post_ok(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}));
    assert!(s.events(&id).iter().any(|e| e["message"] == "Job cancelled"), "{:?}", s.events(&id));
}

/// A second `fpt serve` on the same data folder requeued the running jobs of the first at start
/// and left duplicate, out-of-order metric steps. A job a live process holds is left alone now.
#[test]
fn a_second_server_on_the_same_database_steals_nothing() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let first = Server::start_on(&data, &[]);
    let train = first.upload_ok("train.jsonl", sign_dataset(64, 6));
    let id = long_job(&first, &train, 600);
    wait_running(&first, &id);
    let second = Server::start_on(&data, &[]);
    assert_eq!(second.job(&id)["status"], "running");
    let j = first.wait_finished(&id);
    assert_eq!(j["status"], "succeeded", "{j}");
    let steps = first.metric_steps(&id);
    assert_eq!(steps, (1..=60).map(|i| i * 10).collect::<Vec<_>>(), "one history, each step once");
    let starts = first.events(&id).iter().filter(|e| e["message"].as_str().unwrap().starts_with("Job started")).count();
    assert_eq!(starts, 1, "nobody took the job over");
    drop(second);
}

/// 16 concurrent creations with one `Idempotency-Key` made 16 jobs, and a key was not tied to
/// its request (another body with the same key got the first job back).
#[test]
fn an_idempotency_key_is_reserved_atomically_and_bound_to_its_request() {
    let s = Server::start(&["--no-workers"]);
    let body = json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "suffix": "once"});
    let send =
        |body: &Value| s.client.post(format!("{}/v1/fine_tuning/jobs", s.url)).header("Idempotency-Key", "k-16").json(body).send().unwrap();
    let answers: Vec<(u16, Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                sc.spawn(|| {
                    let r = send(&body);
                    (r.status().as_u16(), r.json::<Value>().unwrap())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    assert!(answers.windows(2).all(|w| w[0].1["id"] == w[1].1["id"]), "one job for one key: {answers:?}");
    assert_eq!(s.get_json("/v1/fine_tuning/jobs")["data"].as_array().unwrap().len(), 1);
    let other = json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 4}});
    let e = error_of(send(&other), 422);
    assert_eq!(e["param"], "Idempotency-Key", "{e}");
    // A request that failed frees its key: the corrected request may reuse it.
    let bad = json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 0}});
    let post =
        |b: &Value| s.client.post(format!("{}/v1/fine_tuning/jobs", s.url)).header("Idempotency-Key", "k-retry").json(b).send().unwrap();
    assert_eq!(error_of(post(&bad), 422)["param"], "task.n_bits");
    assert_eq!(post(&other).status(), 200);
    assert_eq!(error_of(post(&bad), 422)["param"], "Idempotency-Key", "the key is the corrected request's now");
}

/// SIGTERM hung while any event stream was attached (the dashboard keeps one open): the job
/// trained on and new connections were refused. Streams end at SIGTERM now, and the job is
/// checkpointed and queued again.
#[test]
fn sigterm_ends_live_streams_and_stops_promptly() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start_on(&data, &[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 7));
    let id = long_job(&s, &train, 1_000_000);
    wait_running(&s, &id);
    let url = format!("{}/v1/fine_tuning/jobs/{id}/events?stream=true", s.url);
    let watcher = std::thread::spawn(move || {
        use std::io::Read;
        let mut r = reqwest::blocking::Client::new().get(url).send().unwrap();
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    s.terminate();
    assert!(t.elapsed() < Duration::from_secs(20), "stopped in {:?}", t.elapsed());
    assert!(watcher.join().unwrap() > 0, "the stream carried events, then ended");
    let s = Server::start_on(&data, &["--no-workers"]);
    assert_eq!(s.job(&id)["status"], "queued", "handed back to the queue at SIGTERM");
}

/// Eight clients trickling an upload at 1 byte/s held every request slot (429 for everyone else)
/// for as long as they liked; job creation had no minimum rate either. Every request body must now
/// keep a minimum rate after its first seconds.
#[test]
fn trickling_bodies_are_cut_off_and_the_slots_come_back() {
    use std::io::{Read, Write};
    let s = Server::start(&["--max-concurrency", "6", "--min-upload-kbps", "16"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let upload = |part: &str| {
        format!(
            "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; {part}\r\n\r\n"
        )
    };
    let create = "POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"model\": \"tiny-gpt2\", \"metadata\": \"".to_string();
    // Uploads trickle into each kind of part (the file, the purpose, a field nobody asked for); two
    // job creations trickle their JSON.
    let heads = [
        upload("name=\"file\"; filename=\"a.jsonl\""),
        upload("name=\"purpose\""),
        upload("name=\"other\""),
        upload("name=\"file\"; filename=\"b.jsonl\""),
        create.clone(),
        create,
    ];
    let mut slow: Vec<std::net::TcpStream> = heads
        .iter()
        .map(|head| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(head.as_bytes()).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.get("/v1/files").status(), 429, "the trickling bodies hold every slot");
    let t = std::time::Instant::now();
    let mut answers = Vec::new();
    while answers.len() < slow.len() && t.elapsed() < Duration::from_secs(30) {
        for c in slow.iter_mut() {
            let _ = c.write_all(b"x");
        }
        std::thread::sleep(Duration::from_secs(1));
        if t.elapsed() > Duration::from_secs(11) {
            for c in slow.iter_mut() {
                c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                let mut buf = [0u8; 512];
                if let Ok(n) = c.read(&mut buf) {
                    answers.push(String::from_utf8_lossy(&buf[..n]).to_string());
                }
            }
        }
    }
    assert_eq!(answers.len(), 6, "every trickling body was answered: {answers:?}");
    assert!(answers.iter().all(|a| a.starts_with("HTTP/1.1 408") && a.contains("too_slow")), "{answers:?}");
    assert_eq!(s.get("/v1/files").status(), 200, "the slots are free again");
}

/// One client could hold every live event stream (64 by default), leaving none for the others.
/// Each client (an API key here) now has its share.
#[test]
fn one_client_cannot_take_every_event_stream() {
    let s = Server::start(&["--api-key", "key-a", "--api-key", "key-b", "--max-streams-per-client", "2", "--no-workers"]);
    let train = s.upload_ok("train.jsonl", sign_dataset(16, 1));
    let id = s.create_job(json!({"model": "tiny-gpt2", "training_file": train, "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap()}));
    let url = format!("{}/v1/fine_tuning/jobs/{id}/events?stream=true", s.url);
    let open = |key: &str| reqwest::blocking::Client::new().get(&url).bearer_auth(key).send().unwrap();
    let held: Vec<_> = (0..2).map(|_| open("key-a")).collect();
    assert!(held.iter().all(|r| r.status() == 200));
    let third = open("key-a");
    assert_eq!(third.status(), 429, "a third stream for one key");
    assert!(third.headers().contains_key("retry-after"));
    let other = open("key-b");
    assert_eq!(other.status(), 200, "another key still gets its streams");
    drop(held);
    let t = std::time::Instant::now();
    while open("key-a").status() != 200 {
        assert!(t.elapsed() < Duration::from_secs(20), "a closed stream gives its slot back (at the latest at its next keep-alive)");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILL mid-upload left partial files nobody cleaned up. A server starting on a folder removes
/// the store's staging files and uploaded bytes the database has no row for.
#[test]
fn what_interrupted_uploads_left_is_removed_at_start() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start_on(&data, &["--no-workers"]);
    let kept = s.upload_ok("train.jsonl", sign_dataset(8, 1));
    s.kill();
    let files = data.join("files");
    let hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for (name, bytes) in [("file-0123#7", &b"half an upload"[..]), ("file-orphan", b"stored, but its row never written")] {
        std::fs::write(files.join(name), bytes).unwrap();
        std::fs::File::options().write(true).open(files.join(name)).unwrap().set_modified(hours_ago).unwrap();
    }
    // Another node's put in progress (young) is left alone.
    std::fs::write(files.join("file-4567#1"), b"being written right now").unwrap();
    let s = Server::start_on(&data, &["--no-workers"]);
    assert!(!files.join("file-0123#7").exists() && !files.join("file-orphan").exists());
    assert!(files.join("file-4567#1").exists());
    assert_eq!(s.get(&format!("/v1/files/{kept}/content")).bytes().unwrap().to_vec(), sign_dataset(8, 1));
}

/// The memory a run would take is estimated once its data's length is known, before its model is
/// built, and checked against the service's budget.
#[test]
fn a_run_over_the_memory_budget_is_refused_before_it_is_built() {
    let s = Server::start(&["--max-run-mb", "8", "--no-workers"]);
    let body = json!({"model": "tiny-gpt2", "task": {"type": "bit_memory"}, "hyperparameters": {"batch_size": 16}});
    let e = error_of(s.post("/v1/fine_tuning/jobs", &body), 422);
    assert_eq!(e["param"], "hyperparameters.micro_batch_size", "{e}");
    assert!(e["message"].as_str().unwrap().contains("more than the 8 MiB a run may"), "{e}");
    let small = json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"batch_size": 4, "eval_batch_size": 4}});
    assert_eq!(s.post("/v1/fine_tuning/jobs", &small).status(), 200);
}

/// Nothing was ever pruned: a job kept every checkpoint (rows, models, files). A job keeps its
/// newest `--keep-checkpoints` now, and its working folder only the latest.
#[test]
fn a_job_keeps_its_newest_checkpoints_only() {
    let s = Server::start(&["--keep-checkpoints", "3"]);
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 8));
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap(), "training_file": train,
        "hyperparameters": {"n_steps": 100, "eval_every": 10, "checkpoint_every": 10, "batch_size": 4}}));
    assert_eq!(s.wait_finished(&id)["status"], "succeeded");
    let cks = s.get_json(&format!("/v1/fine_tuning/jobs/{id}/checkpoints?limit=100"));
    let steps: Vec<i64> = cks["data"].as_array().unwrap().iter().map(|c| c["step_number"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![100, 90, 80]);
    let models: Vec<String> =
        s.get_json("/v1/models?limit=100")["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert!(models.iter().any(|m| m.ends_with("-step-80")) && !models.iter().any(|m| m.ends_with("-step-70")), "{models:?}");
    let mut files: Vec<String> = std::fs::read_dir(s.data_dir.join("jobs").join(&id).join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let want: Vec<String> = ["best.adapter.safetensors", "latest.json"]
        .into_iter()
        .map(String::from)
        .chain([80, 90, 100].iter().flat_map(|n| [format!("step-{n:08}.adapter.safetensors"), format!("step-{n:08}.state.safetensors")]))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(files, want);
}
