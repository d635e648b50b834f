//! The dashboard end to end in headless Chromium: start a job from the form, watch the curve gain
//! points while it runs, see it finish, draw a digit in the playground and get probabilities, with no
//! console errors; screenshots go to target/screenshots/.
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::server::Server;
use common::webdriver::Browser;
use serde_json::Value;

/// The real MNIST test digits as one upload: a tar holding the IDX images and labels.
fn mnist_tar(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("mnist-test.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for name in ["test-images-idx3-ubyte", "test-labels-idx1-ubyte"] {
        let src = common::root().join("datasets/mnist").join(name);
        assert!(src.exists(), "{} missing: run `make setup`", src.display());
        b.append_path_with_name(&src, name).unwrap();
    }
    b.finish().unwrap();
    path
}

fn shots() -> PathBuf {
    common::root().join("target/screenshots")
}

fn curve_points(b: &Browser) -> usize {
    b.script(
        "const p = document.querySelector('#chart-loss polyline.train'); return p ? p.getAttribute('points').trim().split(' ').length : 0;",
        vec![],
    )
    .as_u64()
    .unwrap_or(0) as usize
}

#[test]
fn dashboard_trains_watches_and_predicts_in_a_real_browser() {
    let s = Server::start(&[]);
    let tmp = common::tempdir();
    let upload = mnist_tar(tmp.path());
    let b = Browser::start(1280, 800);
    b.goto(&format!("{}/", s.url));
    b.wait_for("#job-form", Duration::from_secs(20));
    b.script("document.querySelector('#f-task').value = 'mnist'; document.querySelector('#f-model').value = 'tiny-gpt2';", vec![]);
    b.type_into("#f-file", upload.to_str().unwrap());
    b.script(
        "for (const [id, v] of [['#f-steps', '300'], ['#f-eval', '50'], ['#f-batch', '16']]) document.querySelector(id).value = v;",
        vec![],
    );
    b.screenshot(&shots().join("1-new-job.png"));
    b.click("#f-submit");

    // The job page: status, progress and the curve follow the job live, with no reload (a reload
    // would drop the marker set on the page).
    b.wait_for("#job-status", Duration::from_secs(60));
    b.script("window.__same_page = true;", vec![]);
    let start = Instant::now();
    let (mut seen, mut statuses, mut progress) = (Vec::new(), Vec::<String>::new(), Vec::new());
    loop {
        let n = curve_points(&b);
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        // Status, buttons and progress in one script: read apart, the job could end between them.
        let state = b.script(
            "return ['cancel', 'pause', 'resume'].map(a => document.querySelector(`button[data-act=${a}]`).disabled).concat([+document.querySelector('#job-progress').value, document.querySelector('#job-status').textContent]);",
            vec![],
        );
        let status = state[4].as_str().unwrap().trim().to_string();
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        if status == "running" {
            assert_eq!(state.as_array().unwrap()[..3], [false, false, true].map(Value::from), "running: cancel and pause, not resume");
            progress.push(state[3].as_u64().unwrap());
        }
        if status == "succeeded" {
            break;
        }
        assert!(!matches!(status.as_str(), "failed" | "cancelled"), "job {status}");
        assert!(start.elapsed() < Duration::from_secs(180), "the job did not finish: {status}");
        if seen.len() == 3 {
            b.screenshot(&shots().join("2-training.png"));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(seen.iter().filter(|&&n| n > 0).count() >= 2, "the curve grew while training: {seen:?}");
    assert!(statuses.contains(&"running".to_string()) && statuses.last().unwrap() == "succeeded", "statuses seen: {statuses:?}");
    assert!(progress.windows(2).any(|w| w[1] > w[0]), "the progress bar moved while running: {progress:?}");
    assert_eq!(b.script("return window.__same_page === true;", vec![]), Value::from(true), "the page was not reloaded");
    assert_eq!(curve_points(&b), 60, "one point per report (the form asks for one every 5 steps of 300)");
    let buttons = b.script("return Array.from(document.querySelectorAll('button[data-act]')).map(b => b.disabled);", vec![]);
    assert_eq!(buttons, Value::from(vec![true, true, true]), "an ended job can be neither cancelled, paused nor resumed");
    b.wait_for("#ckpts tr", Duration::from_secs(10));
    // The confusion matrix of the kept checkpoint: ten classes, every validation digit counted once.
    b.wait_for("#confusion-matrix", Duration::from_secs(10));
    let counted = b.script(
        "return Array.from(document.querySelectorAll('#confusion-matrix tbody tr')).map(r => Array.from(r.querySelectorAll('td:not(.muted)')).reduce((a, c) => a + (+c.textContent), 0));",
        vec![],
    );
    let rows: Vec<u64> = serde_json::from_value(counted).unwrap();
    let id = b.script("return location.hash.split('/')[2];", vec![]);
    let job = s.job(id.as_str().unwrap());
    let digits = s.get_json(&format!("/v1/files/{}", job["training_file"].as_str().unwrap()))["samples"].as_f64().unwrap();
    let held_out = (digits * job["hyperparameters"]["validation_fraction"].as_f64().unwrap()).round() as u64;
    assert_eq!((rows.len(), rows.iter().sum::<u64>()), (10, held_out), "ten true classes, every held-out digit once");
    assert!(b.text("#job-hyper").contains("learning_rate") && b.text("#job-task").contains("mnist"), "the job's settings are shown");
    b.screenshot(&shots().join("3-finished.png"));
    b.script("document.querySelector('#result').scrollIntoView();", vec![]);
    b.screenshot(&shots().join("3-confusion.png"));
    let model = b.text("#job-model");
    assert!(model.starts_with("ft-"), "{model}");
    let job_a = id.as_str().unwrap().to_string();

    // Another run on the same file at another learning rate; the jobs list follows it to its end
    // by itself, then the two are compared.
    let file = s.job(&job_a)["training_file"].as_str().unwrap().to_string();
    let job_b = s.create_job(serde_json::json!({"model": "tiny-gpt2", "task": {"type": "mnist"}, "training_file": file,
        "hyperparameters": {"n_steps": 150, "eval_every": 50, "batch_size": 16, "learning_rate": 0.003, "log_every": 10}}));
    b.goto(&format!("{}/#/jobs", s.url));
    b.wait_for(&format!("input.pick[value='{job_b}']"), Duration::from_secs(20));
    b.script("window.__same_page = true;", vec![]);
    let row_status = |id: &str| {
        b.script(&format!("const r = document.querySelector(\"input.pick[value='{id}']\"); return r ? r.closest('tr').querySelector('.status').textContent : '';"), vec![])
    };
    let start = Instant::now();
    while row_status(&job_b) != "succeeded" {
        assert!(start.elapsed() < Duration::from_secs(120), "the list shows {:?}", row_status(&job_b));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(b.script("return window.__same_page === true;", vec![]), Value::from(true), "the list refreshed without a reload");
    b.click(&format!("input.pick[value='{job_a}']"));
    b.click(&format!("input.pick[value='{job_b}']"));
    b.click("#compare");
    b.wait_for("#compare-table tbody tr", Duration::from_secs(20));
    let lines = b.script("return document.querySelectorAll('#compare-metric polyline').length;", vec![]);
    assert_eq!(lines, Value::from(2), "one validation curve per job");
    let table = b.text("#compare-table");
    assert!(table.contains(&job_a) && table.contains(&job_b) && table.contains("0.003"), "{table}");
    b.screenshot(&shots().join("7-compare.png"));

    // The files page: upload a dataset, see it listed with its sample count, delete it.
    let small = tmp.path().join("validation-signs.jsonl");
    std::fs::write(&small, common::server::sign_dataset(12, 9)).unwrap();
    b.goto(&format!("{}/#/files", s.url));
    b.wait_for("#upload-form", Duration::from_secs(20));
    b.type_into("#u-file", small.to_str().unwrap());
    b.click("#u-submit");
    let listed = "Array.from(document.querySelectorAll('#files tbody tr')).filter(r => r.textContent.includes('validation-signs.jsonl'))";
    let start = Instant::now();
    while b.script(&format!("return {listed}.length;"), vec![]) != Value::from(1) {
        assert!(start.elapsed() < Duration::from_secs(20), "the upload is not listed: {}", b.text("#files"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(b.script(&format!("return {listed}[0].textContent;"), vec![]).as_str().unwrap().contains("12"), "its 12 samples");
    b.script(&format!("{listed}[0].querySelector('[data-delete]').click();"), vec![]);
    let start = Instant::now();
    while b.script(&format!("return {listed}.length;"), vec![]) != Value::from(0) {
        assert!(start.elapsed() < Duration::from_secs(20), "the file was not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Playground: draw a digit, get ten probabilities.
    b.goto(&format!("{}/#/playground/{model}", s.url));
    b.wait_for("#pad", Duration::from_secs(20));
    b.draw("#pad", &[(-40, -90), (30, -90), (30, -20), (0, 40), (-20, 100)]);
    let lit = b.script("const d = document.querySelector('#pad').getContext('2d').getImageData(0, 0, 28, 28).data; let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 0) n++; return n;", vec![]);
    assert!(lit.as_u64().unwrap() > 10, "the stroke drew pixels: {lit}");
    b.click("#pg-predict");
    b.wait_for("#pg-bars .bar", Duration::from_secs(20));
    let sum = b.script(
        "return Array.from(document.querySelectorAll('#pg-bars .prob')).map(e => parseFloat(e.textContent)).reduce((a, b) => a + b, 0);",
        vec![],
    );
    assert!((sum.as_f64().unwrap() - 100.0).abs() < 1.0, "probabilities sum to 100%: {sum}");
    assert_eq!(b.script("return document.querySelectorAll('#pg-bars .bar').length;", vec![]), Value::from(10));
    b.screenshot(&shots().join("4-playground.png"));

    // A model that takes JSON samples: a bad one is said once, next to the input; a good one
    // clears it; the next bad one clears the stale answer.
    let signs = s.upload_ok("signs.jsonl", common::server::sign_dataset(40, 3));
    let tuned = s.train_quick(serde_json::from_str(common::server::SIGN_TASK).unwrap(), Some(&signs), 1);
    b.goto(&format!("{}/#/playground/{tuned}", s.url));
    b.wait_for("#pg-json", Duration::from_secs(20));
    b.type_into("#pg-json", "[1, 2, 3]");
    b.click("#pg-predict");
    let error = |b: &Browser| {
        let t = Instant::now();
        loop {
            let e = b.text("#pg-error");
            if !e.is_empty() || t.elapsed() > Duration::from_secs(20) {
                return e;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let shown = error(&b);
    assert!(shown.starts_with("inputs[0]") && shown.matches("inputs[0]").count() == 1, "said once, naming the sample: {shown:?}");
    assert!(!b.text("#status").contains("inputs[0]"), "not said again in the footer");
    b.screenshot(&shots().join("8-playground-error.png"));
    b.script("document.querySelector('#pg-json').value = '';", vec![]);
    b.type_into("#pg-json", "[0.5, 0.1, -0.2, 0.3, 0.0, 0.1, 0.2, 0.3]");
    b.click("#pg-predict");
    b.wait_for("#pg-out:not(:empty)", Duration::from_secs(20));
    assert_eq!(b.text("#pg-error"), "", "the error went with the good answer");
    b.script("document.querySelector('#pg-json').value = '';", vec![]);
    b.type_into("#pg-json", "[1]");
    b.click("#pg-predict");
    assert!(!error(&b).is_empty());
    assert_eq!(b.text("#pg-out"), "", "the stale answer is cleared");

    // Models page, then a phone width without horizontal scrolling.
    b.goto(&format!("{}/#/models", s.url));
    b.wait_for("td", Duration::from_secs(10));
    b.set_window(390, 844);
    b.goto(&format!("{}/#/jobs", s.url));
    b.wait_for("#jobs", Duration::from_secs(10));
    let overflow = b.script("return document.documentElement.scrollWidth - window.innerWidth;", vec![]);
    assert!(overflow.as_i64().unwrap() <= 0, "page wider than a phone: {overflow}");
    b.screenshot(&shots().join("5-phone.png"));

    let errors = b.script("return window.__errors;", vec![]);
    assert_eq!(errors, Value::Array(vec![]), "console errors: {errors}");
}

/// The dashboard works per key: it shows the key's project, and only that project's jobs.
#[test]
fn the_dashboard_shows_the_keys_project_and_only_its_jobs() {
    const ADMIN: &str = "admin-secret-0123456789";
    let mut s = Server::start(&["--admin-key", ADMIN, "--no-workers"]);
    let mut key_of = |name: &str| {
        s.key = Some(ADMIN.into());
        let p = s.post_ok("/v1/organization/projects", &serde_json::json!({"name": name}));
        let k = s.post_ok(&format!("/v1/organization/projects/{}/api_keys", p["id"].as_str().unwrap()), &serde_json::json!({"name": "ui"}));
        k["value"].as_str().unwrap().to_string()
    };
    let (ka, kb) = (key_of("team a"), key_of("team b"));
    s.key = Some(ka.clone());
    let job = s.create_job(serde_json::json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 3}}));
    let b = Browser::start(1280, 800);
    let use_key = |key: &str, project: &str| {
        b.script("document.querySelector('#api-key').value = arguments[0];", vec![Value::from(key)]);
        b.click("#key-form button");
        let t = Instant::now();
        while b.text("#project") != format!("Project: {project}") {
            assert!(t.elapsed() < Duration::from_secs(20), "the header shows {:?}", b.text("#project"));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The jobs table, once it shows what `done` expects (it is drawn again for the new key).
    let table_when = |done: &dyn Fn(&str) -> bool| {
        let t = Instant::now();
        loop {
            b.wait_for("#jobs", Duration::from_secs(20));
            let text = b.text("#jobs");
            if done(&text) {
                return text;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "the jobs table shows {text:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    b.goto(&format!("{}/", s.url));
    use_key(&ka, "team a");
    table_when(&|t| t.contains(&job));
    use_key(&kb, "team b");
    let theirs = table_when(&|t| t.contains("No jobs yet"));
    assert!(!theirs.contains(&job), "team b does not see team a's job");
    // A job no worker has taken (this server has none) waits, and its page says so.
    use_key(&ka, "team a");
    b.goto(&format!("{}/#/jobs/{job}", s.url));
    b.wait_for("#chart-loss text.empty", Duration::from_secs(20));
    assert_eq!(b.text("#job-status"), "queued");
    assert!(b.text("#chart-loss").contains("Waiting for the first report"), "{}", b.text("#chart-loss"));
    let buttons = b.script("return Array.from(document.querySelectorAll('button[data-act]')).map(b => b.disabled);", vec![]);
    assert_eq!(buttons, Value::from(vec![false, false, true]), "a queued job can be cancelled or paused, not resumed");
    let errors = b.script("return window.__errors;", vec![]);
    assert_eq!(errors, Value::Array(vec![]), "console errors: {errors}");
}

/// The playground of a forecasting adapter draws the context and the forecast after it.
#[test]
fn the_playground_draws_a_forecast_beside_its_context() {
    let s = Server::start(&[]);
    let csv: String = std::iter::once("date,load\n".to_string())
        .chain((0..200).map(|t| format!("2020-01-{:02},{:.3}\n", 1 + t % 28, 100.0 + 10.0 * (t as f64 / 4.0).sin())))
        .collect();
    let file = s.upload_ok("load.csv", csv.into_bytes());
    let id = s.create_job(serde_json::json!({"model": "tiny-gpt2", "training_file": file,
        "task": {"type": "forecasting", "context_length": 24, "horizon": 6}, "hyperparameters": {"n_steps": 10, "batch_size": 8, "eval_every": 10}}));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["fine_tuned_model"].as_str().unwrap();
    let b = Browser::start(1280, 800);
    // Its one evaluation (step 10 of 10) is drawn: a dot, though a line needs two points.
    b.goto(&format!("{}/#/jobs/{id}", s.url));
    b.wait_for("#chart-acc circle.valid", Duration::from_secs(20));
    assert_eq!(b.script("return document.querySelectorAll('#chart-loss circle.valid').length;", vec![]), Value::from(1));
    assert!(b.text("#chart-acc").contains("mae"), "the primary metric titles its axis: {}", b.text("#chart-acc"));
    b.goto(&format!("{}/#/playground/{model}", s.url));
    b.wait_for("#pg-json", Duration::from_secs(20));
    let context: Vec<f64> = (0..30).map(|t| 100.0 + 10.0 * (t as f64 / 4.0).sin()).collect();
    b.type_into("#pg-json", &serde_json::to_string(&context).unwrap());
    b.click("#pg-predict");
    b.wait_for("#pg-forecast polyline.forecast", Duration::from_secs(20));
    let points = |class: &str| {
        b.script(
            &format!("return document.querySelector('#pg-forecast polyline.{class}').getAttribute('points').split(' ').length;"),
            vec![],
        )
    };
    assert_eq!(points("context"), Value::from(24), "the last context's worth of steps");
    assert_eq!(points("forecast"), Value::from(7), "the horizon, joined to the context's last step");
    assert!(b.text("#pg-out").contains("forecast"));
    b.screenshot(&shots().join("6-forecast.png"));
    let errors = b.script("return window.__errors;", vec![]);
    assert_eq!(errors, Value::Array(vec![]), "console errors: {errors}");
}

/// A job searching its learning rate shows one validation curve per trial, labelled by its rate,
/// the chosen one marked, and says what it chose.
#[test]
fn a_learning_rate_search_draws_a_curve_per_trial() {
    let s = Server::start(&[]);
    let id = s.create_job(serde_json::json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 3, "n_valid": 32},
        "hyperparameters": {"learning_rate": "auto", "n_steps": 100, "eval_every": 5}}));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let chosen = job["result"]["learning_rate_search"]["chosen"].as_f64().unwrap();
    let b = Browser::start(1280, 900);
    b.goto(&format!("{}/#/jobs/{id}", s.url));
    b.wait_for("#chart-trials polyline.chosen", Duration::from_secs(20));
    assert_eq!(b.script("return document.querySelectorAll('#chart-trials polyline').length;", vec![]), Value::from(5));
    assert_eq!(b.script("return document.querySelectorAll('#chart-trials polyline.chosen').length;", vec![]), Value::from(1));
    let legend = b.text("#trials-legend");
    assert!(legend.contains("lr 0.0001") && legend.contains("(chosen)"), "{legend}");
    assert!(b.text("#job-chosen-lr").contains(&chosen.to_string()), "{}", b.text("#job-chosen-lr"));
    // The run's own curves go on from the chosen trial.
    let points = curve_points(&b);
    assert!(points >= 2, "the run's loss curve");
    b.screenshot(&shots().join("7-learning-rate-search.png"));
    let errors = b.script("return window.__errors;", vec![]);
    assert_eq!(errors, Value::Array(vec![]), "console errors: {errors}");

    // An ensemble of two such runs: its first member is the job above, and its page draws that
    // member's trials and curve, not the second's.
    let ensemble = s.create_job(serde_json::json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 3, "n_valid": 32},
        "hyperparameters": {"learning_rate": "auto", "n_steps": 100, "eval_every": 5, "ensemble": 2}}));
    let job = s.wait_finished(&ensemble);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(s.events(&ensemble).iter().any(|e| e["data"]["member"] == 1), "the second member reported");
    b.goto(&format!("{}/#/jobs/{ensemble}", s.url));
    b.wait_for("#chart-trials polyline.chosen", Duration::from_secs(20));
    assert_eq!(b.script("return document.querySelectorAll('#chart-trials polyline').length;", vec![]), Value::from(5));
    assert_eq!(curve_points(&b), points, "the first member's curve");
    let errors = b.script("return window.__errors;", vec![]);
    assert_eq!(errors, Value::Array(vec![]), "console errors: {errors}");
}
