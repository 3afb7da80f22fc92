//! `make chaos`: schemathesis drives the real `herald serve` through its own OpenAPI
//! document (tests/fuzz/schemathesis.toml says how). Every check schemathesis has must
//! pass: no 5xx, every answer as documented, schema-valid requests accepted and invalid ones
//! refused. Then everything the run wrote (Herald's log, the live feed, every error answer)
//! is searched for secrets.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Receiver, SseClient, TOKEN, fresh_database};
use crate::process::Process;

#[tokio::test]
#[ignore = "long: make chaos"]
async fn schemathesis_finds_nothing_and_no_secret_leaks() {
    let db_url = fresh_database().await;
    // Everything Herald logs, down to its own trace events.
    // Its auth checks send wrong tokens on purpose, from the same address as the rest of
    // the run: throttling (tested in `auth`) would answer everything after them with 429.
    let herald = Process::start(
        &db_url,
        &[
            ("RUST_LOG", "info,herald=trace"),
            ("HERALD_AUTH_FAILURE_LIMIT", "0"),
        ],
    )
    .await;
    let receiver = Receiver::start().await;

    // The feed, from before the first request to after the last.
    let feed = Arc::new(Mutex::new(String::new()));
    let mut stream = SseClient::connect_to(herald.addr, "", None).await;
    let reader = {
        let feed = feed.clone();
        tokio::spawn(async move {
            while let Some(frame) = stream.next_frame(Duration::from_secs(600)).await {
                let mut feed = feed.lock().unwrap();
                feed.push_str(&frame.data);
                feed.push('\n');
            }
        })
    };

    let (app, ep, _) = herald.app_with_endpoint(&receiver.url()).await;
    let msg = herald.send(&app, "invoice.paid", json!({"n": 1})).await;
    let doomed_app = herald
        .api(reqwest::Method::POST, "/apps", json!({"name": "doomed"}))
        .await;
    let doomed_app = doomed_app["id"].as_str().unwrap();
    let doomed_ep = herald.add_endpoint(doomed_app, &receiver.url()).await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reports = root.join("target/tmp/fuzz");
    std::fs::create_dir_all(&reports).unwrap();
    let mut responses = Vec::new();
    // DELETE last: it removes the objects the first pass works on.
    for (pass, filter) in [("main", "--exclude-method"), ("delete", "--include-method")] {
        let har = reports.join(format!("{pass}.har"));
        let output = Command::new(root.join("scripts/schemathesis.sh"))
            .current_dir(root)
            .args(["--config-file", "tests/fuzz/schemathesis.toml", "run"])
            .arg(format!("http://{}/api/v1/openapi.json", herald.addr))
            .args([filter, "DELETE", "--max-examples", "100"])
            .args(["--report", "har", "--report-har-path"])
            .arg(&har)
            .env("HERALD_FUZZ_URL", format!("http://{}", herald.addr))
            .env("HERALD_FUZZ_TOKEN", TOKEN)
            .env("HERALD_FUZZ_APP", &app)
            .env("HERALD_FUZZ_EP", &ep)
            .env("HERALD_FUZZ_MSG", msg["id"].as_str().unwrap())
            .env("HERALD_FUZZ_DOOMED_APP", doomed_app)
            .env("HERALD_FUZZ_DOOMED_EP", doomed_ep["id"].as_str().unwrap())
            .output()
            .expect("scripts/schemathesis.sh runs");
        let out = String::from_utf8_lossy(&output.stdout);
        let summary: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("generated") || l.starts_with("====="))
            .collect();
        eprintln!("schemathesis ({pass} pass): {}", summary.join(" | "));
        assert!(
            output.status.success(),
            "schemathesis found problems:\n{out}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        responses.extend(exchanges(&std::fs::read_to_string(&har).unwrap()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    reader.abort();
    let feed = feed.lock().unwrap().clone();
    let log = herald.logs();

    // Every secret there was: those Herald holds now, and every one a request carried.
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let mut secrets: Vec<String> = sqlx::query_scalar("select secret from herald.endpoint_secret")
        .fetch_all(&pool)
        .await
        .unwrap();
    for (request, _, _) in &responses {
        secrets.extend(whsec_strings(request));
    }
    secrets.retain(|s| s.len() > "whsec_".len() + 8);
    secrets.sort();
    secrets.dedup();
    secrets.push(TOKEN.to_owned());
    eprintln!(
        "searched {} secrets in {} KB of log, {} KB of feed and {} answers",
        secrets.len(),
        log.len() / 1024,
        feed.len() / 1024,
        responses.len()
    );
    assert!(secrets.len() > 10, "the fuzzer should have sent secrets");
    assert!(
        log.len() > 10_000 && feed.len() > 1_000,
        "nothing was written"
    );

    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret is in the log");
        assert!(!feed.contains(secret.as_str()), "a secret is in the feed");
    }
    assert!(!log.contains("whsec_"), "the log mentions a secret");
    for (request, status, body) in &responses {
        // Only these answers carry a secret, and only to an admin who asked for it.
        let shows_secret = *status < 300
            && (request.contains("/secret")
                || request.starts_with("POST") && request.contains("/endpoints "));
        if shows_secret {
            continue;
        }
        for secret in &secrets {
            assert!(
                !body.contains(secret.as_str()),
                "{request} answered {status} with a secret in it: {body}"
            );
        }
    }
}

/// (method, url and request body; status; response body) of every exchange in a HAR file.
fn exchanges(har: &str) -> Vec<(String, u16, String)> {
    let har: Value = serde_json::from_str(har).unwrap();
    har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let request = format!(
                "{} {} {}",
                e["request"]["method"].as_str().unwrap_or(""),
                e["request"]["url"].as_str().unwrap_or(""),
                e["request"]["postData"]["text"].as_str().unwrap_or("")
            );
            let status = e["response"]["status"].as_u64().unwrap_or(0) as u16;
            let body = e["response"]["content"]["text"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (request, status, body)
        })
        .collect()
}

/// Every `whsec_…` run of base64 characters in `text`.
fn whsec_strings(text: &str) -> Vec<String> {
    text.match_indices("whsec_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '/' | '='))
                .collect()
        })
        .collect()
}
