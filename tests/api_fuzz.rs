//! The API fuzzed from its own OpenAPI document by schemathesis (a property-based tester from
//! PyPI): every operation gets generated requests, valid and invalid, authenticated, against the
//! real server on loopback. No response may be a 5xx or break the document (its status codes,
//! content types and schemas: so every error is the JSON error object). Cases per operation are
//! bounded, and the run is killed past a time limit; a live event stream would answer until its job
//! ended, but the fuzzer's job ids are its own, so its streams are 404s.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;

/// Generated cases per operation and phase (`FPT_FUZZ_EXAMPLES` for a longer run).
fn examples() -> String {
    std::env::var("FPT_FUZZ_EXAMPLES").unwrap_or_else(|_| "20".into())
}

/// Runs schemathesis over the operations `filter` selects with `key`; the number of cases it ran.
fn fuzz(s: &Server, key: &str, filter: [&str; 2]) -> u64 {
    let st = common::python().with_file_name("st");
    assert!(st.exists(), "{} not found: run `make setup` first", st.display());
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(&st)
        .args(["run", &format!("{}/openapi.json", s.url), "--url", &s.url])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--max-examples", &examples(), "--seed", "7", "--workers", "1", "--request-timeout", "30"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(filter)
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running schemathesis");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(400) {
            let _ = child.kill();
            panic!("schemathesis ran past 400 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = std::fs::read_to_string(out.path()).unwrap();
    let tail: Vec<&str> = report.lines().rev().take(80).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(status.success(), "schemathesis found failures:\n{tail}");
    // "Test cases:" is followed by "  N generated, N passed".
    let cases = report.lines().skip_while(|l| !l.starts_with("Test cases:")).nth(1).unwrap_or("");
    let n = cases.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no case count in:\n{tail}"));
    eprintln!("schemathesis {filter:?}: {} in {:.0?}", cases.trim(), started.elapsed());
    n
}

#[test]
fn the_openapi_document_holds_under_schemathesis() {
    let (key, admin) = ("sk-test-fuzz", "sk-admin-fuzz-0123456789");
    // Jobs the fuzzer creates stay tiny: they train on the same cores as everything else.
    let s = Server::start(&["--api-key", key, "--admin-key", admin, "--max-steps", "20"]);
    let project = fuzz(&s, key, ["--exclude-path-regex", "^/v1/organization"]);
    let organization = fuzz(&s, admin, ["--include-path-regex", "^/v1/organization"]);
    assert!(project > 1000 && organization > 100, "too few cases: {project} and {organization}");
    // The server is still up and answering.
    assert_eq!(s.get("/health").status(), 200);
}
