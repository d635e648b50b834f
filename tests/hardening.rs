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

/// Peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb / 1024.0
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
    let rss = peak_rss_mib(s.child.id());
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fpt"))
        .args(["serve", "--bind", "127.0.0.1:0", "--cors-origin", "example.org/path", "--data-dir"])
        .arg(common::tempdir().path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--cors-origin `example.org/path` is not an origin"), "{err}");
}

fn trained_model(s: &Server) -> (String, String) {
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 1));
    let body = json!({"model": "tiny-gpt2", "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap(), "training_file": train,
        "hyperparameters": {"n_steps": 4, "eval_every": 4, "batch_size": 4}});
    let id = s.create_job(body);
    let j = s.wait_finished(&id);
    assert_eq!(j["status"], "succeeded", "{j}");
    (j["fine_tuned_model"].as_str().unwrap().to_string(), train)
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
