//! Projects and scoped keys, on the real server over loopback: two projects see nothing of each
//! other, keys are managed with the admin key and revoked at once on every node, and quotas and
//! request rates hold.
mod common;

use std::time::{Duration, Instant};

use common::server::{sign_dataset, Server, SIGN_TASK};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-0123456789";

/// The server's admin key, then a project key: `key` is what the next requests send.
fn as_key(s: &mut Server, key: &str) {
    s.key = Some(key.to_string());
}

/// A new project (with `quotas`) and a key of it, made with the admin key.
fn project_with_key(s: &mut Server, name: &str, quotas: Value) -> (String, String) {
    as_key(s, ADMIN);
    let p = s.post_ok("/v1/organization/projects", &json!({"name": name, "quotas": quotas}));
    let id = p["id"].as_str().unwrap().to_string();
    assert_eq!(p["object"], "organization.project");
    let k = s.post_ok(&format!("/v1/organization/projects/{id}/api_keys"), &json!({"name": format!("{name} key")}));
    let secret = k["value"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-proj-") && secret.len() > 40, "{k}");
    assert!(!k["redacted_value"].as_str().unwrap().contains(&secret[12..30]), "the redacted value hides the secret");
    (id, secret)
}

fn status_of(r: reqwest::blocking::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
}

/// Every key was equal: a second key read, downloaded, predicted with, cancelled and deleted what
/// the first made, and an Idempotency-Key replayed the other key's answer. Now everything belongs to
/// a project; another project's ids answer 404 on every route and change nothing.
#[test]
fn two_projects_see_nothing_of_each_other() {
    let mut s = Server::start(&["--admin-key", ADMIN, "--workers", "1"]);
    let (pa, ka) = project_with_key(&mut s, "team a", json!({}));
    let (pb, kb) = project_with_key(&mut s, "team b", json!({}));

    // Project A trains a model (with checkpoints) and keeps a queued job and a file.
    as_key(&mut s, &ka);
    let train = s.upload_ok("train.jsonl", sign_dataset(32, 1));
    let body = json!({"model": "tiny-gpt2", "training_file": train, "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap(),
                      "hyperparameters": {"n_steps": 4, "eval_every": 2, "checkpoint_every": 2, "batch_size": 4}});
    let done = s.create_job(body.clone());
    let job = s.wait_finished(&done);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!((job["project_id"].as_str().unwrap(), job["organization_id"].as_str().unwrap()), (pa.as_str(), "org-fpt"));
    let model = job["fine_tuned_model"].as_str().unwrap().to_string();
    let checkpoint = s.get_json(&format!("/v1/fine_tuning/jobs/{done}/checkpoints"))["data"][0]["fine_tuned_model_checkpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let x = json!([[0.5, -0.5, 0.5, -0.5]]);
    let answer = s.predict(&model, x.clone()).json::<Value>().unwrap()["data"].clone();
    assert_eq!(s.get_json("/v1/me")["project"]["id"], pa);
    let line = json!({"custom_id": "a", "method": "POST", "url": "/v1/predictions", "body": {"model": model, "inputs": x}});
    let input = s.upload_ok_for("batch", "batch.jsonl", format!("{line}\n").into_bytes());
    let batch = s.post_ok("/v1/batches", &json!({"input_file_id": input, "endpoint": "/v1/predictions", "completion_window": "24h"}));
    let batch = batch["id"].as_str().unwrap().to_string();

    // Project B, with A's ids, on every route that takes an id.
    as_key(&mut s, &kb);
    let job_routes = ["", "/cancel", "/pause", "/resume", "/events", "/events?stream=true", "/checkpoints"];
    let mut tried: Vec<(&str, String)> = vec![
        ("GET", format!("/v1/files/{train}")),
        ("GET", format!("/v1/files/{train}/content")),
        ("DELETE", format!("/v1/files/{train}")),
    ];
    for r in job_routes {
        let method = if ["/cancel", "/pause", "/resume"].contains(&r) { "POST" } else { "GET" };
        tried.push((method, format!("/v1/fine_tuning/jobs/{done}{r}")));
    }
    tried.push(("GET", format!("/v1/batches/{batch}")));
    tried.push(("POST", format!("/v1/batches/{batch}/cancel")));
    for m in [&model, &checkpoint] {
        tried.push(("GET", format!("/v1/models/{m}")));
        tried.push(("GET", format!("/v1/models/{m}/adapter")));
        tried.push(("POST", format!("/v1/models/{m}/load")));
        tried.push(("POST", format!("/v1/models/{m}/unload")));
        tried.push(("DELETE", format!("/v1/models/{m}")));
    }
    for (method, path) in &tried {
        let r = match *method {
            "GET" => s.get(path),
            "POST" => s.post(path, &json!({})),
            _ => s.delete(path),
        };
        let (status, body) = status_of(r);
        assert_eq!(status, 404, "{method} {path} with another project's key: {body}");
    }
    // Every route with an id is among those tried (a new route must be added here).
    for route in fpt::api::routes() {
        if route.path.contains("{") && !route.path.starts_with("/v1/organization/") {
            let prefix = route.path.split('{').next().unwrap();
            for method in route.methods {
                let suffix = route.path.split('}').nth(1).unwrap_or("");
                let covered =
                    tried.iter().any(|(m, p)| m == method && p.starts_with(prefix) && p.split('?').next().unwrap().ends_with(suffix));
                assert!(covered, "{method} {} is not tried with another project's id", route.path);
            }
        }
    }
    let (status, e) = status_of(s.predict(&model, x.clone()));
    assert_eq!(status, 404, "{e}");
    // Naming A's file in a job is the same error as naming a file that does not exist.
    let theirs = status_of(s.post("/v1/fine_tuning/jobs", &body));
    let mut missing = body.clone();
    missing["training_file"] = json!("file-doesnotexist");
    let none = status_of(s.post("/v1/fine_tuning/jobs", &missing));
    assert_eq!((theirs.0, none.0), (422, 422), "{} {}", theirs.1, none.1);
    assert_eq!(theirs.1["error"]["message"], format!("file `{train}` not found"));
    assert_eq!(none.1["error"]["message"], "file `file-doesnotexist` not found");
    // So is naming A's input file in a batch.
    let theirs =
        status_of(s.post("/v1/batches", &json!({"input_file_id": input, "endpoint": "/v1/predictions", "completion_window": "24h"})));
    assert_eq!(theirs.0, 422, "{}", theirs.1);
    assert_eq!(theirs.1["error"]["message"], format!("file `{input}` not found"));
    // Lists show B's own only.
    for list in ["/v1/files", "/v1/fine_tuning/jobs", "/v1/models?limit=1000", "/v1/batches"] {
        let page = s.get_json(list);
        let seen = ids(&page);
        for theirs in [&train, &done, &model, &checkpoint, &input, &batch] {
            assert!(!seen.contains(theirs), "{list} shows another project's {theirs}");
        }
    }
    assert!(ids(&s.get_json("/v1/models?limit=1000")).contains(&"tiny-gpt2".to_string()), "base models are shared");
    // Another project's id as a paging cursor tells nothing: the page is as for an unknown id.
    for (list, theirs) in
        [("/v1/files", &train), ("/v1/fine_tuning/jobs", &done), (&format!("/v1/fine_tuning/jobs/{done}/checkpoints"), &checkpoint)]
    {
        let r = s.get(&format!("{list}?after={theirs}"));
        if r.status() == 200 {
            assert_eq!(r.json::<Value>().unwrap()["data"], json!([]), "{list} after another project's id");
        } else {
            assert_eq!(r.status(), 404, "{list}");
        }
    }
    assert_eq!(s.get_json("/v1/me")["project"]["id"], pb);

    // Idempotency keys are per project: the same key and body in B makes B's own job.
    let held = json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 3}, "hyperparameters": {"n_steps": 2}});
    let send = |s: &Server| {
        s.client
            .post(format!("{}/v1/fine_tuning/jobs", s.url))
            .bearer_auth(s.key.as_deref().unwrap())
            .header("Idempotency-Key", "same-key")
            .json(&held)
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    };
    let in_b = send(&s);
    as_key(&mut s, &ka);
    let in_a = send(&s);
    assert_ne!(in_a["id"], in_b["id"], "one project's Idempotency-Key replayed another's answer");
    assert_eq!((in_a["project_id"].as_str().unwrap(), in_b["project_id"].as_str().unwrap()), (pa.as_str(), pb.as_str()));
    assert_eq!(send(&s)["id"], in_a["id"], "within a project the key still replays");

    // Nothing of A's changed.
    assert_eq!(s.job(&done)["status"], "succeeded");
    assert_eq!(s.get(&format!("/v1/files/{train}/content")).bytes().unwrap().to_vec(), sign_dataset(32, 1));
    assert_eq!(s.predict(&model, x).json::<Value>().unwrap()["data"], answer);
    assert_eq!(s.get(&format!("/v1/models/{checkpoint}")).status(), 200);

    // Keys of the wrong kind: the admin key manages projects only, a project key cannot manage them.
    let (status, e) = status_of(s.get("/v1/organization/projects"));
    assert_eq!(status, 401, "{e}");
    as_key(&mut s, ADMIN);
    let (status, e) = status_of(s.get("/v1/files"));
    assert_eq!((status, e["error"]["code"].as_str().unwrap()), (403, "wrong_key_kind"));
    let listed = ids(&s.get_json("/v1/organization/projects"));
    assert!(listed.contains(&pa) && listed.contains(&pb) && listed.contains(&"proj_default".to_string()), "{listed:?}");
}

/// A revoked key is refused from its next request on, by every API node: each request looks the key
/// up in the shared database.
#[test]
fn a_revoked_key_is_refused_at_once_by_a_second_api_node() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("fpt_tenancy");
    let tmp = common::tempdir();
    let artifacts = tmp.path().join("artifacts").display().to_string();
    let flags = ["--database-url", url.as_str(), "--artifacts", artifacts.as_str(), "--admin-key", ADMIN, "--no-workers"];
    let mut one = Server::start_on(&tmp.path().join("one"), &flags);
    let mut two = Server::start_on(&tmp.path().join("two"), &flags);
    let (project, key) = project_with_key(&mut one, "team", json!({}));
    as_key(&mut two, &key);
    let file = two.upload_ok("train.jsonl", sign_dataset(8, 1));
    // A stream opened with the key, on the second node, before it is revoked.
    let job = two.create_job(json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 3}}));
    let stream_url = format!("{}/v1/fine_tuning/jobs/{job}/events?stream=true", two.url);
    let watcher = {
        let key = key.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut r = reqwest::blocking::Client::new().get(stream_url).bearer_auth(key).send().unwrap();
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            Instant::now()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    as_key(&mut one, ADMIN);
    let keys = one.get_json(&format!("/v1/organization/projects/{project}/api_keys"));
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    assert!(keys["data"][0].get("value").is_none(), "a secret is shown once, at creation");
    let gone = one.delete(&format!("/v1/organization/projects/{project}/api_keys/{key_id}"));
    assert_eq!(gone.status(), 200);
    let (status, e) = status_of(two.get(&format!("/v1/files/{file}")));
    assert_eq!((status, e["error"]["code"].as_str().unwrap()), (401, "invalid_api_key"), "the second node refuses the revoked key");
    let revoked_at = Instant::now();
    let ended = watcher.join().unwrap();
    assert!(ended.duration_since(revoked_at) < Duration::from_secs(15), "the revoked key's live stream ended");
    // A new key of the project sees the project's file on either node.
    let fresh = one.post_ok(&format!("/v1/organization/projects/{project}/api_keys"), &json!({"name": "again"}));
    as_key(&mut two, fresh["value"].as_str().unwrap());
    assert_eq!(two.get(&format!("/v1/files/{file}")).status(), 200);
    // Archiving the project stops its keys, everywhere, at once.
    one.post_ok(&format!("/v1/organization/projects/{project}/archive"), &json!({}));
    assert_eq!(two.get(&format!("/v1/files/{file}")).status(), 401);
}

fn long_job(s: &Server, train: &str) -> String {
    s.create_job(json!({"model": "tiny-gpt2", "training_file": train, "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap(),
                        "hyperparameters": {"n_steps": 1_000_000, "eval_every": 1_000_000, "batch_size": 4}}))
}

/// A project limited to two running jobs has its third wait in the queue while a worker is free;
/// queued jobs and stored bytes are capped with 429 `quota_exceeded`; /metrics shows the use.
#[test]
fn a_projects_quotas_hold() {
    let mut s = Server::start(&["--admin-key", ADMIN, "--workers", "3"]);
    let (pa, ka) = project_with_key(&mut s, "two at once", json!({"max_running_jobs": 2, "max_queued_jobs": 1, "max_storage_bytes": 4000}));
    let (_, kb) = project_with_key(&mut s, "other", json!({}));
    as_key(&mut s, &ka);
    let train = s.upload_ok("train.jsonl", sign_dataset(16, 1));
    let jobs: Vec<String> = (0..3)
        .map(|_| {
            let id = long_job(&s, &train);
            // One queued at a time: the next is created once this one runs (or waits for a slot).
            let t = Instant::now();
            while s.get_json("/v1/me")["usage"]["queued_jobs"].as_i64().unwrap() > 0 && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            id
        })
        .collect();
    for id in &jobs[..2] {
        s.wait_for(id, Duration::from_secs(60), |st| st == "running");
    }
    // The third waits although a worker is free; another project's job runs on it meanwhile.
    as_key(&mut s, &kb);
    let theirs = long_job(&s, &s.upload_ok("b.jsonl", sign_dataset(16, 2)));
    s.wait_for(&theirs, Duration::from_secs(60), |st| st == "running");
    as_key(&mut s, &ka);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.job(&jobs[2])["status"], "queued", "the project's third job waits for one of its two to end");
    assert!(!s.get("/metrics").text().unwrap().contains("fpt_project_jobs_running{"), "projects' use is the admin key's to see");
    as_key(&mut s, ADMIN);
    let text = s.get("/metrics").text().unwrap();
    as_key(&mut s, &ka);
    assert!(text.contains(&format!("fpt_project_jobs_running{{project=\"{pa}\"}} 2")), "{text}");
    assert!(text.contains(&format!("fpt_project_jobs_queued{{project=\"{pa}\"}} 1")), "{text}");
    // A fourth would be the second queued one: refused, not to be retried.
    let r = s.post(
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny-gpt2", "training_file": train, "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap()}),
    );
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let e: Value = r.json().unwrap();
    assert_eq!((e["error"]["code"].as_str().unwrap(), e["error"]["param"].as_str().unwrap()), ("quota_exceeded", "max_queued_jobs"));
    // Pausing the queued job is no way past the quota: a paused job still waits.
    s.post_ok(&format!("/v1/fine_tuning/jobs/{}/pause", jobs[2]), &json!({}));
    let again = s.post(
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny-gpt2", "training_file": train, "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap()}),
    );
    assert_eq!(again.status(), 429, "a paused job counts as queued");
    s.post_ok(&format!("/v1/fine_tuning/jobs/{}/resume", jobs[2]), &json!({}));
    // Stored bytes: the second upload would pass the project's 4,000 bytes.
    let r = s.upload("more.jsonl", sign_dataset(16, 3));
    assert_eq!(r.status(), 429);
    assert_eq!(r.json::<Value>().unwrap()["error"]["param"], "max_storage_bytes");
    // One of the two ends: the third starts.
    s.post_ok(&format!("/v1/fine_tuning/jobs/{}/cancel", jobs[0]), &json!({}));
    s.wait_for(&jobs[2], Duration::from_secs(60), |st| st == "running");
    for id in &jobs[1..] {
        s.post_ok(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}));
    }
    as_key(&mut s, &kb);
    s.post_ok(&format!("/v1/fine_tuning/jobs/{theirs}/cancel"), &json!({}));
}

/// A project over its request rate gets 429 with `retry-after`, and is served again after it;
/// another project is not held back meanwhile.
#[test]
fn a_projects_request_rate_is_limited_and_recovers() {
    let mut s = Server::start(&["--admin-key", ADMIN, "--no-workers"]);
    let (pa, ka) = project_with_key(&mut s, "slow", json!({"requests_per_second": 2}));
    let (_, kb) = project_with_key(&mut s, "fast", json!({}));
    as_key(&mut s, &ka);
    let answers: Vec<reqwest::blocking::Response> = (0..6).map(|_| s.get("/v1/files")).collect();
    let limited: Vec<&reqwest::blocking::Response> = answers.iter().filter(|r| r.status() == 429).collect();
    assert!(limited.len() >= 3, "a burst of 6 at 2 per second: {:?}", answers.iter().map(|r| r.status()).collect::<Vec<_>>());
    let wait: u64 = limited[0].headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "retry-after {wait}");
    as_key(&mut s, &kb);
    assert_eq!(s.get("/v1/files").status(), 200, "another project is not held back");
    as_key(&mut s, &ka);
    let e: Value = s.get("/v1/files").json().unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(s.get("/v1/files").status(), 200, "served again after retry-after");
    as_key(&mut s, ADMIN);
    let text = s.get("/metrics").text().unwrap();
    assert!(text.lines().any(|l| l.starts_with(&format!("fpt_project_rate_limited_total{{project=\"{pa}\"}}"))), "{text}");
}

/// A key may have quotas of its own, below its project's: its second queued job is refused while
/// another key of the project still creates jobs, and its request rate is its own.
#[test]
fn a_keys_own_quotas_hold_within_its_project() {
    let mut s = Server::start(&["--admin-key", ADMIN, "--no-workers"]);
    let (project, free) = project_with_key(&mut s, "shared", json!({}));
    let tight = s.post_ok(
        &format!("/v1/organization/projects/{project}/api_keys"),
        &json!({"name": "tight", "quotas": {"max_queued_jobs": 1, "requests_per_second": 1}}),
    );
    assert_eq!(tight["quotas"]["max_queued_jobs"], 1);
    let tight = tight["value"].as_str().unwrap().to_string();
    let body = json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 3}});
    as_key(&mut s, &tight);
    s.create_job(body.clone());
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.post("/v1/fine_tuning/jobs", &body);
    assert_eq!(r.status(), 429);
    let e: Value = r.json().unwrap();
    assert_eq!(e["error"]["param"], "max_queued_jobs");
    assert!(e["error"]["message"].as_str().unwrap().contains("API key's quota"), "{e}");
    // Its rate: a burst past one request a second is refused; the other key is not held back.
    std::thread::sleep(Duration::from_millis(1100));
    let statuses: Vec<u16> = (0..3).map(|_| s.get("/v1/files").status().as_u16()).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    as_key(&mut s, &free);
    s.create_job(body.clone());
    s.create_job(body);
    assert_eq!(s.get_json("/v1/me")["usage"]["queued_jobs"], 3);
}

/// Without any key configured, everything is the default project, on loopback, as before.
#[test]
fn without_keys_everything_is_the_default_project() {
    let s = Server::start(&["--no-workers"]);
    let file = s.upload_ok("train.jsonl", sign_dataset(8, 1));
    let id = s.create_job(json!({"model": "tiny-gpt2", "training_file": file, "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap()}));
    assert_eq!(s.job(&id)["project_id"], "proj_default");
    assert_eq!(s.get_json("/v1/me")["project"]["name"], "Default project");
    let (status, e) = status_of(s.get("/v1/organization/projects"));
    assert_eq!(status, 403, "no admin key configured: {e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("--admin-key"), "{e}");
}
