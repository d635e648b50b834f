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

    // The job page: the curve gains points while the job runs.
    b.wait_for("#job-status", Duration::from_secs(60));
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let n = curve_points(&b);
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        let status = b.text("#job-status");
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
    assert_eq!(curve_points(&b), 60, "one point per report (the form asks for one every 5 steps of 300)");
    b.wait_for("#ckpts tr", Duration::from_secs(10));
    b.screenshot(&shots().join("3-finished.png"));
    let model = b.text("#job-model");
    assert!(model.starts_with("ft-"), "{model}");

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
